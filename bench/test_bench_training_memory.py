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
