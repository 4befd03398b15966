"""The harness's own arithmetic and bookkeeping (no timing): shape extraction, ideal bytes, speedups, per-model
geometric means, merging runs, option parsing. Plain tests: they run with --benchmark-disable (CI) and are skipped
by --benchmark-only."""

from __future__ import annotations

import math

import pytest
import torch

from ghostkernels.bench import results, table
from ghostkernels.bench.__main__ import build_parser, options_from_args
from ghostkernels.bench.cases import GhostShape, collect_cases, model_shapes, parse_dtype_config, select_cases
from ghostkernels.bench.microbench import ideal_bytes


def test_every_ghostnet_has_32_ghost_modules_read_off_the_model():
    shapes = model_shapes("ghostnet_100")
    assert len(shapes) == 32
    # The first bottleneck's ghost1 (16->16, ReLU) and ghost2 (16->16, no activation) at 112x112, then ghost1 of
    # the stride-2 block (16->48 at 112) and its ghost2 after the stride-2 depthwise conv (48->24 at 56).
    assert [(s.in_channels, s.out_channels, s.relu, s.height) for s in shapes[:4]] == [
        (16, 16, True, 112), (16, 16, False, 112), (16, 48, True, 112), (48, 24, False, 56)]
    assert shapes[-1] == GhostShape(960, 160, 2, 3, False, 7, 7)


def test_identical_shapes_are_merged_with_counts():
    cases = collect_cases(["ghostnet_100"])
    assert sum(c.counts["ghostnet_100"] for c in cases) == 32
    assert len(cases) == len({c.shape for c in cases}) < 32
    by_shape = {c.shape: c.counts["ghostnet_100"] for c in cases}
    assert by_shape[GhostShape(960, 160, 2, 3, False, 7, 7)] == 4


def test_smoke_scope_is_small_and_covers_relu_identity_and_an_odd_init():
    cases = select_cases("smoke")
    assert all(c.shape.height <= 12 and c.shape.width <= 12 for c in cases)
    assert {c.shape.relu for c in cases} == {True, False}
    assert any(c.shape.init_channels % 8 for c in cases)


def test_ideal_bytes():
    s = GhostShape(in_channels=16, out_channels=48, ratio=2, dw_size=3, relu=True, height=10, width=10)
    x, out = 2 * 16 * 100, 2 * 48 * 100
    w = 24 * 16 + 24 + 24 * 9 + 24
    assert ideal_bytes(s, 2, 4, "forward") == 4 * (x + out + w)
    assert ideal_bytes(s, 2, 2, "train") == 2 * ((x + out + w) + out + 2 * x + 2 * w)


def _rec(label, provider, ms, counts, batch=8):
    return {"label": label, "shape": {"label": label}, "model_counts": counts, "mode": "forward", "batch": batch,
            "dtype": "float32", "memory_format": "nchw", "provider": provider, "median_ms": ms}


def test_speedups_and_count_weighted_geometric_mean():
    recs = [_rec("a", p, ms, {"m": 1}) for p, ms in (("eager", 4.0), ("compile", 2.0), ("fused-cpu", 1.0))]
    recs += [_rec("b", p, ms, {"m": 3}) for p, ms in (("eager", 1.0), ("compile", 1.0), ("fused-cpu", 2.0))]
    results.add_speedups(recs)
    assert recs[2]["speedup_vs_eager"] == 4.0 and recs[2]["speedup_vs_compile"] == 2.0
    assert recs[5]["speedup_vs_eager"] == 0.5
    fused = next(s for s in results.summarize(recs) if s["provider"] == "fused-cpu")
    assert fused["modules"] == 4 and fused["shapes"] == 2
    assert math.isclose(fused["geomean_speedup_vs_eager"], (4.0 * 0.5 ** 3) ** 0.25)
    assert fused["slower_than_eager"] == ["b"]


def test_a_peer_reporting_its_precision_still_gets_a_speedup():
    # OpenVINO's records carry the precision it ran at; that describes its run, not the case, so they are still
    # compared with eager's record of the same case.
    case = {"model": "ghostnet_100", "batch": 1, "dtype": "bfloat16"}
    recs = [{**case, "provider": "eager", "median_ms": 12.0},
            {**case, "provider": "openvino", "median_ms": 3.0, "inference_precision": "bf16"}]
    results.add_speedups(recs)
    assert recs[1]["speedup_vs_eager"] == 4.0


def _results(device_slug, date, recs):
    env = {"device_slug": device_slug, "date": date}
    res = results.new_results(env, {"scope": "full"})
    results.add_records(res, "module_cases", recs)
    return results.finalize(res)


def test_merge_replaces_the_same_case_and_keeps_others():
    old = _results("cpu-x-2c", "d1", [_rec("a", "eager", 4.0, {"m": 1}), _rec("a", "fused-cpu", 2.0, {"m": 1}),
                                      _rec("a", "eager", 9.0, {"m": 1}, batch=1)])
    new = _results("cpu-x-2c", "d2", [_rec("a", "fused-cpu", 1.0, {"m": 1})])
    merged = results.merge(old, new)
    assert len(merged["module_cases"]) == 3 and set(merged["runs"]) == {"d1", "d2"}
    fused = next(r for r in merged["module_cases"] if r["provider"] == "fused-cpu")
    assert fused["median_ms"] == 1.0 and fused["speedup_vs_eager"] == 4.0 and fused["run_id"] == "d2"
    with pytest.raises(ValueError, match="cannot merge"):
        results.merge(old, _results("cuda-h100", "d3", []))


def test_render_drops_empty_columns_and_aligns_numbers():
    text = table.render(["shape", "ms", "vs compile"], [["a b", "1.5", "-"], ["c", "10.25", "-"]], markdown=True)
    assert text.splitlines()[:2] == ["| shape | ms |", "|:---|---:|"]


def test_dtype_configs_and_cli_options():
    assert parse_dtype_config("bfloat16", "cuda").channels_last
    assert not parse_dtype_config("bfloat16", "cpu").channels_last
    assert parse_dtype_config("float32:cl", "cpu").channels_last
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype_config("float64", "cpu")
    opts = options_from_args(build_parser().parse_args(["--device", "cpu", "--batch", "1,4", "--dtype", "bfloat16",
                                                        "--threads", "1", "--no-compile"]))
    assert opts.batches == [1, 4] and opts.configs[0].dtype == torch.bfloat16 and opts.threads == 1
    assert opts.scope == "quick" and not any("compile" in p for p in opts.providers)
    with pytest.raises(SystemExit, match="invalid values"):
        options_from_args(build_parser().parse_args(["--device", "cpu", "--modes", "backward"]))


def test_gpu_inputs_are_rotated_past_twice_the_l2_cache(monkeypatch):
    from ghostkernels.bench import timing

    monkeypatch.setattr(timing, "l2_cache_bytes", lambda device: 50 << 20)
    cuda = torch.device("cuda")
    assert timing.rotation_copies(40 << 20, cuda) * (40 << 20) > 2 * (50 << 20)
    assert timing.rotation_copies(1 << 30, cuda) == 2  # never fewer than 2, never more than MAX_ROTATION_BYTES
    assert timing.rotation_copies(8, cuda) == timing.MAX_ROTATION_COPIES
    assert timing.rotation_copies(40 << 20, torch.device("cpu")) == 1


def _fake_steps(log, failing=None):
    """Steps that record who ran (no timing claims)."""
    def make(name):
        def step(x):
            if name == failing:
                raise RuntimeError(f"{name} broke")
            log.append(name)
        return step
    return {name: make(name) for name in ("a", "b", "c")}


def test_time_in_rounds_takes_turns_in_reversing_order_and_splits_the_budget():
    from ghostkernels.bench import timing

    log = []
    budget = timing.TimingBudget(warmup_s=0.0, min_time_s=0.0, min_reps=7, max_reps=7)
    out = timing.time_in_rounds(_fake_steps(log), [(None,)], torch.device("cpu"), budget,
                                timing.Rounds(rounds=3, dropped=1, pause_s=0.0))
    # 2 warm-up calls each, then per round and provider 1 dropped + ceil(7 / 3) = 3 timed calls.
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]
    turns = [log[6 + 4 * k] for k in range(9)]
    assert turns == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert all(log[6 + 4 * k: 10 + 4 * k] == [t] * 4 for k, t in enumerate(turns))
    assert {name: [len(turn) for turn in per_round] for name, per_round in out.items()} == {
        n: [3, 3, 3] for n in "abc"}
    assert all(t >= 0 for per_round in out.values() for turn in per_round for t in turn)


def test_time_in_rounds_records_a_failing_provider_or_raises_when_strict():
    from ghostkernels.bench import timing

    budget = timing.TimingBudget(warmup_s=0.0, min_time_s=0.0, min_reps=2, max_reps=2)
    turns = timing.Rounds(rounds=2, dropped=0, pause_s=0.0)
    log = []
    out = timing.time_in_rounds(_fake_steps(log, failing="b"), [(None,)], torch.device("cpu"), budget, turns,
                                strict=False)
    assert isinstance(out["b"], RuntimeError) and "b broke" in str(out["b"])
    assert [len(t) for t in out["a"]] == [1, 1] and [len(t) for t in out["c"]] == [1, 1] and "b" not in log
    with pytest.raises(RuntimeError, match="b broke"):
        timing.time_in_rounds(_fake_steps([], failing="b"), [(None,)], torch.device("cpu"), budget, turns)
    for bad, match in ((dict(rounds=0), "rounds must be an int >= 1"), (dict(dropped=-1), "dropped must be"),
                       (dict(pause_s=-0.1), "pause must be >= 0")):
        with pytest.raises(ValueError, match=match):
            timing.time_in_rounds(_fake_steps([]), [(None,)], torch.device("cpu"), budget, timing.Rounds(**bad))
    with pytest.raises(ValueError, match="at least one input set"):
        timing.time_in_rounds(_fake_steps([]), [], torch.device("cpu"), budget, turns)


def test_compiled_steps_coexist_only_without_a_reset_between_them():
    """The end-to-end runner keeps all of a case's compiled providers alive while they take turns. A dynamo reset
    between two compiles would make the first one compile again (outside the freezing patch) when timed; without
    one they coexist, and the recompile guard the runner times under would catch a reset."""
    from ghostkernels.bench.providers import compile_module

    def tiny():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()

    x = torch.randn(1, 3, 8, 8)
    first = compile_module(tiny(), "forward", (x, None))
    second = compile_module(tiny(), "forward", (x, None), reset=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        first(x)
        second(x)
    compile_module(tiny(), "forward", (x, None))  # resets
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(torch._dynamo.exc.RecompileError):
        first(x)


def test_training_step_gradient_limit_follows_eager_in_16_bit_types():
    from ghostkernels.bench.checks import GRAD_TOLERANCE
    from ghostkernels.bench.training_step import EAGER_GRAD_SLACK, grad_limit

    tol = GRAD_TOLERANCE[torch.bfloat16]
    # A fused step may be as inexact as eager (GhostNetV2 bfloat16: eager 0.32), not more.
    assert grad_limit(torch.bfloat16, 0.32, "fused-cpu") == pytest.approx(EAGER_GRAD_SLACK * 0.32)
    assert grad_limit(torch.bfloat16, 0.01, "fused-cpu") == tol  # the dtype's tolerance is the floor
    assert grad_limit(torch.bfloat16, None, "fused-cpu") == tol  # no baseline: the tolerance alone
    assert grad_limit(torch.float32, 1e-7, "fused-cpu") == GRAD_TOLERANCE[torch.float32]
    assert grad_limit(torch.float32, None, "eager") == GRAD_TOLERANCE[torch.float32]  # float32 eager is judged
    assert grad_limit(torch.bfloat16, None, "eager") == float("inf")  # 16-bit eager is the baseline
