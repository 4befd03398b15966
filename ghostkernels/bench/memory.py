"""Training memory: one forward+backward of a whole GhostNet (frozen BN), eager against fused.

Two numbers per provider:
  saved_bytes     the activation memory autograd keeps for backward, found with
                  torch.autograd.graph.saved_tensors_hooks: the pack hook sees every tensor saved for backward; the
                  bytes of their unique storages are summed (a storage saved twice, e.g. by an in-place ReLU and the
                  conv before it, counts once), leaving out parameters and buffers (they exist anyway). It is also
                  split into the part saved inside Ghost modules, which is where eager and fused differ: eager keeps
                  the conv and BN outputs of both convolutions and x1, the fused op only its input x.
  peak_bytes      the peak of memory allocated during the step above what was allocated before it (parameters and
                  the input are already there). GPU: torch.cuda.max_memory_allocated. CPU: PyTorch has no CPU
                  allocator statistics, so the step runs under torch.profiler with profile_memory=True, which
                  records every allocation and free of the CPU allocator; the running sum of those events in time
                  order peaks at the step's peak. Caveats: the record is private profiler state (kineto_results);
                  only the calling thread's allocations are recorded, so scratch that a kernel allocates on its
                  other OpenMP threads is missed (the fused CPU kernel's per-thread scratch: about 0.2 MB per
                  extra thread for a 64->128 module at 56x56, small against the tens of MB of activations).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from .cases import DTypeConfig
from .providers import fused_model, place, set_mode


@dataclasses.dataclass(frozen=True)
class SavedTensors:
    total_bytes: int
    ghost_bytes: int  # the part saved while a Ghost module (eager or fused) was running
    tensors: int


def ghost_types() -> tuple[type, ...]:
    from ghostkernels.models import GhostModule
    from ghostkernels.nn import FusedGhostConv, FusedGhostModule

    return (GhostModule, FusedGhostModule, FusedGhostConv)


def saved_tensor_bytes(model: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> SavedTensors:
    """Run forward (recording what autograd saves) and backward to the parameters; see the module docstring."""
    state_ptrs = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    storages: dict[int, tuple[int, bool]] = {}  # data_ptr -> (nbytes, saved inside a Ghost module)
    depth = [0]

    def enter(module, args):
        depth[0] += 1

    def leave(module, args, out):
        depth[0] -= 1

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr != 0 and ptr not in state_ptrs:
            nbytes, inside = storages.get(ptr, (0, False))
            storages[ptr] = (max(nbytes, st.nbytes()), inside or depth[0] > 0)
        return t

    types = ghost_types()
    handles = []
    for m in model.modules():
        if isinstance(m, types):
            handles.append(m.register_forward_pre_hook(enter))
            handles.append(m.register_forward_hook(leave))
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
        torch.autograd.grad(out, params, grad_out)
    finally:
        for h in handles:
            h.remove()
    return SavedTensors(total_bytes=sum(n for n, _ in storages.values()),
                        ghost_bytes=sum(n for n, inside in storages.values() if inside),
                        tensors=len(storages))


def peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    """Peak allocated bytes during step() above the bytes allocated before it (see the module docstring)."""
    step()  # warm-up: one-time allocations (oneDNN primitives, cuDNN workspaces, lazy inits) are not the model's
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        raise RuntimeError("ghostkernels.bench: this torch's profiler exposes no memory events (kineto_results); "
                           "CPU peak memory cannot be measured")
    events = sorted((e.start_ns(), e.nbytes()) for e in results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


@dataclasses.dataclass
class TrainingStep:
    """A model under a provider in train mode (frozen BN), an image batch and a fixed grad of the logits."""

    model: nn.Module
    x: torch.Tensor
    grad_out: torch.Tensor

    @classmethod
    def build(cls, base: nn.Module, provider: str, device: torch.device, config: DTypeConfig, batch: int,
              resolution: int = 224) -> TrainingStep:
        if provider == "eager":
            model = place(base, device, config)
        elif provider.startswith("fused-"):
            model = fused_model(base, provider.removeprefix("fused-"), device, config)
        else:
            raise ValueError(f"ghostkernels.bench: training memory is measured for eager and fused-<backend>, "
                             f"not {provider!r}")
        model = set_mode(model, "train")
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(batch, 3, resolution, resolution, generator=gen, device=device)
        x = x.to(dtype=config.dtype, memory_format=config.memory_format)  # an image batch: no gradient wanted
        with torch.no_grad():
            grad_out = torch.randn(model(x).shape, generator=gen, device=device).to(config.dtype)
        return cls(model, x, grad_out)

    def __call__(self):
        """Forward and backward to every parameter (autograd.grad: nothing accumulates in .grad)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.autograd.grad(self.model(self.x), params, self.grad_out)


def training_memory(model_name: str, base: nn.Module, provider: str, device: torch.device, config: DTypeConfig,
                    batch: int, resolution: int = 224) -> dict:
    """One record: saved-for-backward bytes and peak bytes of forward+backward of `base` under `provider`
    ("eager" or "fused-<backend>")."""
    step = TrainingStep.build(base, provider, device, config, batch, resolution)
    saved = saved_tensor_bytes(step.model, step.x, step.grad_out)
    peak = peak_bytes(step, device)
    return {"model": model_name, "resolution": resolution, "batch": batch, "dtype": config.name,
            "memory_format": "channels_last" if config.channels_last else "nchw", "provider": provider,
            "peak_bytes": peak, "saved_bytes": saved.total_bytes, "saved_bytes_ghost": saved.ghost_bytes,
            "saved_tensors": saved.tensors}
