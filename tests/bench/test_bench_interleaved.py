"""`ghostkernels.bench.interleaved`: two providers in alternating bursts in one process. Plain tests (no timing
claims): the bookkeeping on a tiny network, the CLI, and bad arguments. They run with --benchmark-disable (CI)."""

from __future__ import annotations

import pytest

from ghostkernels.bench import interleaved, onnx_peer

TINY = dict(model="ghostnet_050", resolution=64, bursts=2, calls=3, dropped=1, pause_s=0.0)


def test_compare_pairs_every_burst_of_two_fused_providers():
    r = interleaved.compare(["fused-cpu-frozen", "fused-cpu"], **TINY)
    assert r["providers"] == ["fused-cpu-frozen", "fused-cpu"]
    for p in r["providers"]:
        assert len(r["burst_medians_ms"][p]) == 2 and all(t > 0 for t in r["burst_medians_ms"][p])
        assert r["median_ms"][p] > 0
    assert 0 <= r["first_faster_bursts"] <= 2
    assert r["ratio"] == pytest.approx(r["median_ms"]["fused-cpu-frozen"] / r["median_ms"]["fused-cpu"])


def test_two_compiled_providers_stay_compiled_while_they_take_turns():
    """Both compiled once after one dynamo reset; timing them raises on any recompilation (a reset between the two
    compiles would make the first one compile again, outside inductor's freezing, while being timed)."""
    r = interleaved.compare(["compile", "fused-cpu+compile"], **TINY)
    assert all(len(r["burst_medians_ms"][p]) == 2 for p in r["providers"])


@pytest.mark.skipif(onnx_peer.unavailable_reason() is not None, reason=str(onnx_peer.unavailable_reason()))
def test_cli_against_onnx_runtime(capsys):
    assert interleaved.main(["--model", "ghostnet_050", "--resolution", "64", "--bursts", "1", "--calls", "3",
                             "--pause-ms", "0"]) == 0
    out = capsys.readouterr().out
    assert "fused-cpu-frozen / onnxruntime:" in out and "faster in" in out


@pytest.mark.parametrize("kwargs,match", [
    (dict(providers=["fused-cpu"]), "two different providers"),
    (dict(providers=["fused-cpu", "fused-cpu"]), "two different providers"),
    (dict(model="ghostnet_200"), "unknown model"),
    (dict(calls=2, dropped=2), "calls must be an int >= 3"),
    (dict(bursts=0), "bursts must be an int >= 1"),
    (dict(pause_s=-1.0), "pause must be >= 0"),
    (dict(threads=0), "threads must be an int >= 1"),
])
def test_compare_rejects_bad_arguments(kwargs, match):
    args = dict(providers=["fused-cpu-frozen", "fused-cpu"], **TINY)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        interleaved.compare(**args)


def test_unknown_provider_is_named():
    with pytest.raises(ValueError, match="unknown end-to-end provider 'fused-cpu-chilled'; expected one of eager, compile, fused-cpu,"):
        interleaved.compare(["fused-cpu-frozen", "fused-cpu-chilled"], **TINY)
