"""The end-to-end runner of `python -m ghostkernels.bench` (ghostkernels.bench.end_to_end.EndToEndRunner): its
bookkeeping on a tiny network, no timing claims."""

from __future__ import annotations

import pytest
import torch

from ghostkernels.bench.end_to_end import EndToEndCase, EndToEndRunner
from ghostkernels.bench.timing import TimingBudget


def test_runner_times_a_cases_providers_in_rounds_and_records_a_broken_one(monkeypatch):
    """EndToEndRunner.run: providers checked first, then timed in turns (rounds recorded); a provider that fails
    its check is recorded with its error (non-strict) while the others are still timed. No timing claims."""
    from ghostkernels.bench.cases import DTypeConfig
    from ghostkernels.bench.timing import Rounds

    runner = EndToEndRunner(torch.device("cpu"), torch.get_num_threads(),
                            TimingBudget(warmup_s=0.0, min_time_s=0.0, min_reps=4, max_reps=4), strict=False,
                            turns=Rounds(rounds=2, dropped=1, pause_s=0.0))
    case = EndToEndCase("ghostnet_050", 1, DTypeConfig(torch.float32, False), 32)
    real_step = runner.step

    def step(provider, *args, **kwargs):
        if provider == "fused-cpu-modules":
            raise RuntimeError("deliberately broken provider")
        return real_step(provider, *args, **kwargs)

    monkeypatch.setattr(runner, "step", step)
    seen = []
    try:
        records = runner.run(case, ["eager", "fused-cpu-modules", "fused-cpu-frozen"], on_result=seen.append)
    finally:
        runner.close()
    assert [r["provider"] for r in records] == [r["provider"] for r in seen] == [
        "eager", "fused-cpu-modules", "fused-cpu-frozen"]
    broken = records[1]
    assert "deliberately broken provider" in broken["error"] and "median_ms" not in broken
    for rec in (records[0], records[2]):
        assert "error" not in rec and rec["rounds"] == 2 and rec["reps"] == 4 and rec["median_ms"] > 0
        assert rec["images_per_s"] == pytest.approx(1 / (rec["median_ms"] * 1e-3))


def test_runner_closes_a_cases_openvino_model_once_the_case_is_timed(monkeypatch):
    """An OpenVINO model is compiled per (model, resolution, batch, dtype), so no later case reuses it: run() closes
    it after timing its case instead of keeping every case's model (and its executor) alive to the end of the run.
    A stand-in replaces openvino_peer.OpenVinoModel (OpenVINO is an optional extra); it runs the float32 model."""
    from ghostkernels.bench import end_to_end, openvino_peer
    from ghostkernels.bench.cases import DTypeConfig
    from ghostkernels.bench.timing import Rounds

    made = []

    class StandIn:
        def __init__(self, model, example, threads, dtype):
            self.model, self.precision, self.closed = model.float().eval(), "f32", False
            made.append(self)

        def __call__(self, x):
            return self.model(x.float())

        def close(self):
            self.closed = True

    monkeypatch.setattr(openvino_peer, "OpenVinoModel", StandIn)
    assert end_to_end.openvino_peer is openvino_peer
    runner = EndToEndRunner(torch.device("cpu"), torch.get_num_threads(),
                            TimingBudget(warmup_s=0.0, min_time_s=0.0, min_reps=2, max_reps=2), strict=True,
                            turns=Rounds(rounds=1, dropped=0, pause_s=0.0))
    try:
        for batch in (1, 2):
            runner.run(EndToEndCase("ghostnet_050", batch, DTypeConfig(torch.float32, False), 32), ["openvino"])
            assert len(made) == batch and made[-1].closed and not runner._openvino
    finally:
        runner.close()
