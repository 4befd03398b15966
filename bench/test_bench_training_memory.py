"""Training (forward+backward, frozen BN) of a whole GhostNet, eager against fused: memory and time.

Each test records the peak memory and the bytes saved for backward (see ghostkernels.bench.memory) in
extra_info and benchmarks one training step. A fused test also measures eager on the same case and asserts that the
fused Ghost modules keep less memory for backward than the eager ones: the fused op saves only its input, eager
keeps both convolutions' outputs, the BN outputs and x1.
"""

from __future__ import annotations

import functools

import torch

from ghostkernels.bench import memory
from ghostkernels.bench.cases import build_model
from ghostkernels.bench.timing import rotating_call


@functools.lru_cache(maxsize=None)
def _model(name: str) -> torch.nn.Module:
    return build_model(name)


@functools.lru_cache(maxsize=8)
def _saved(device: torch.device, memory_case, provider: str) -> memory.SavedTensors:
    model_name, cfg, batch, resolution = memory_case
    step = memory.TrainingStep.build(_model(model_name), provider, device, cfg, batch, resolution)
    return memory.saved_tensor_bytes(step.model, step.x, step.grad_out)


def test_training_step(benchmark, device, memory_case, provider):
    model_name, cfg, batch, resolution = memory_case
    step = memory.TrainingStep.build(_model(model_name), provider, device, cfg, batch, resolution)
    saved = _saved(device, memory_case, provider)
    grads = step()
    assert all(torch.isfinite(g).all() for g in grads)
    benchmark.group = f"{device.type} training {model_name} {cfg.label} b{batch} @{resolution}"
    benchmark.extra_info.update(peak_bytes=memory.peak_bytes(step, device), saved_bytes=saved.total_bytes,
                                saved_bytes_ghost=saved.ghost_bytes)
    if provider != "eager":
        eager = _saved(device, memory_case, "eager")
        benchmark.extra_info["saved_bytes_ghost_eager"] = eager.ghost_bytes
        assert saved.ghost_bytes < eager.ghost_bytes, (
            f"{provider}: the fused Ghost modules keep {saved.ghost_bytes} bytes for backward, eager "
            f"{eager.ghost_bytes}: fusing should save memory")
    benchmark(rotating_call(lambda: step(), [()], device))


def test_training_step_with_batch_statistics(device):
    """The harness's whole-model training step (training_step.py) at smoke size: every provider but compile checked
    against float64 eager and timed once, the fused Ghost modules keeping less activation memory than eager's."""
    from ghostkernels.bench.cases import DEFAULT_CONFIGS
    from ghostkernels.bench.providers import fused_backends
    from ghostkernels.bench.timing import Rounds, TimingBudget
    from ghostkernels.bench.training_step import TrainStepCase, run_train_step_case, train_step_providers

    case = TrainStepCase("ghostnet_050", 2, DEFAULT_CONFIGS[device.type][0], resolution=64)
    providers = train_step_providers(fused_backends(device)[0], with_compile=False)
    records = run_train_step_case(case, _model("ghostnet_050"), providers, device, strict=True,
                                  budget=TimingBudget(warmup_s=0.0, min_time_s=0.0, min_reps=1, max_reps=1),
                                  turns=Rounds(rounds=1, dropped=0, pause_s=0.0))
    by = {r["provider"]: r for r in records}
    assert set(by) == set(providers) and all("median_ms" in r for r in records), records
    for p in providers[1:]:
        assert by[p]["saved_bytes_ghost"] < by["eager"]["saved_bytes_ghost"], (p, by[p], by["eager"])
