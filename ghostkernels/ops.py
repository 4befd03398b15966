"""The Python entry point of the fused Ghost-module op and its backend selection.

Backends: ``cpu`` and ``cuda`` run the C++/CUDA kernels registered as ``torch.ops.ghostkernels.ghost_module``;
``triton`` runs ``torch.ops.ghostkernels.ghost_module_triton``; ``eager`` runs the same math as plain PyTorch ops
(ghostkernels.reference); ``auto`` picks ``cuda`` for CUDA tensors and ``cpu`` for CPU tensors. A backend that
cannot run the given tensors raises; nothing silently falls back to another backend.
"""

from __future__ import annotations

import torch

from . import _build
from ._validation import check_ghost_inputs
from .reference import ACTS, ghost_module_reference

BACKENDS = ("auto", "cpu", "cuda", "triton", "eager")


def load_library() -> str:
    """Build (first time) and load the C++/CUDA op library; returns the path it was loaded from."""
    return _build.load_library()


def cuda_kernels_available() -> bool:
    """True when the loaded op library has CUDA kernels (torch with CUDA and a CUDA build of csrc/)."""
    _build.load_library()
    return torch._C._dispatch_has_kernel_for_dispatch_key("ghostkernels::ghost_module", "CUDA")


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` (maybe "auto") to the concrete backend for tensors on ``device``, or raise."""
    if backend not in BACKENDS:
        raise ValueError(f"ghostkernels: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda":
            return "cuda"
        if device.type == "cpu":
            return "cpu"
        raise ValueError(f"ghostkernels: no backend for tensors on {device}; backend='eager' runs anywhere")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"ghostkernels: backend='cpu' needs CPU tensors, got tensors on {device}")
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"ghostkernels: backend='cuda' needs CUDA tensors, got tensors on {device}")
    return backend


def _ensure_library() -> None:
    if _build.is_loaded():
        return
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "ghostkernels: the op library is not loaded yet; call ghostkernels.load_library() (or run the op once) "
            "before torch.compile / torch.export")
    _build.load_library()


def ghost_module(x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act: str = "relu",
                 backend: str = "auto"):
    """Fused Ghost module: ``cat(x1, x2)[:, :out_channels]``.

    x1 = act(conv1x1(x, w_primary) + b_primary) with init = w_primary.shape[0] channels;
    x2 = act(depthwise_kxk(x1, w_cheap, padding=k//2) + b_cheap), channel j of x2 reading channel j // (ratio-1)
    of x1. Weights and biases hold the folded BatchNorm. The result has x's memory format (channels_last or
    contiguous). Under autocast, x and the weights are cast to the autocast dtype first, as for a convolution.
    """
    backend = resolve_backend(backend, x.device)
    dev = x.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        args = [t.to(dt) if t.is_floating_point() else t for t in (x, w_primary, b_primary, w_cheap, b_cheap)]
        with torch.autocast(dev, enabled=False):
            return ghost_module(*args, out_channels, act, backend)
    if backend == "eager":
        check_ghost_inputs("ghostkernels (eager)", x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
        if not x.is_floating_point():
            raise TypeError(f"ghostkernels (eager): x must be a floating-point tensor, got {x.dtype}")
        return ghost_module_reference(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    if backend == "triton":
        from .triton import ghost_module_triton

        return ghost_module_triton(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    _ensure_library()
    if backend == "cuda" and not torch.compiler.is_compiling() and not cuda_kernels_available():
        raise RuntimeError(
            "ghostkernels: backend='cuda' was asked for, but the op library has no CUDA kernels (it was built "
            "without CUDA: torch has no CUDA, no nvcc was found, or GHOSTKERNELS_NO_CUDA=1)")
    return torch.ops.ghostkernels.ghost_module(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)


__all__ = ["ACTS", "BACKENDS", "ghost_module", "load_library", "cuda_kernels_available", "resolve_backend"]
