"""bench/gpu/run_gpu_session.sh without a GPU (its dry run): it must exit 0, name every step it skips and why,
and leave at most 8 files, none in sub-folders, under $OUT (what the device tool brings back). With a GPU the
script's steps run instead; that is not this test's business."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import ghost_testing as gt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "gpu", "run_gpu_session.sh")
STEPS = ("build", "smoke", "cuda_check", "bn_train", "triton_check", "timings", "e2e", "memcheck", "racecheck")


@pytest.mark.skipif(gt.has_cuda_device(), reason="a GPU is present: the script would run for real")
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_dry_run_skips_every_step_and_exits_0(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), SESSION_BUDGET_S="60")
    r = subprocess.run(["bash", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for step in STEPS:
        assert f"[SKIP] {step}: no CUDA device" in r.stdout, f"step {step} not reported as skipped:\n{r.stdout}"
    entries = list(out.iterdir())
    assert all(e.is_file() for e in entries), [e.name for e in entries]
    assert len(entries) <= 8, [e.name for e in entries]
    summary = (out / "summary.txt").read_text()
    assert "== done in" in summary and summary.count("[SKIP]") == len(STEPS)
