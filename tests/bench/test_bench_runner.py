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
