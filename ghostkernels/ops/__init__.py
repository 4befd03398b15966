"""The ops layer: a Python wrapper for every op of the ``ghostkernels`` namespace, and backend selection.

Layer 1 of the package (ops -> nn -> patch): nothing here imports ghostkernels.nn or ghostkernels.patch. Its
modules: ``build`` (finding or JIT-building the C++/CUDA op library), ``registration`` (fake kernels and autograd,
registered right after the library loads), ``validation`` (the contract's checks in Python), ``reference`` (the
eager math), ``layouts`` (the ops' argument layouts as NamedTuples and the chain program's encoding).

Backends of ghost_module (and of GhostNetV2's dfc_gate and ghost_module_gated): ``cpu`` and ``cuda`` run the C++/CUDA
kernels registered as ``torch.ops.ghostkernels.ghost_module``; ``triton`` runs ``torch.ops.ghostkernels.
ghost_module_triton`` (ghostkernels.triton); ``eager`` runs the same math as plain PyTorch ops (ops.reference);
``auto`` picks ``cuda`` for CUDA tensors and ``cpu`` for CPU tensors. A backend that cannot run the given tensors
raises; nothing silently falls back to another backend. The inference ops (ghost_bottleneck, ghost_bottleneck_gated,
conv2d_act, linear_act, chain) are CPU-only.
"""

from __future__ import annotations

import os
import warnings

import torch

from . import build
from .layouts import (ChainArgs, Conv2dActArgs, DfcGateArgs, GhostBottleneckArgs, GhostBottleneckGatedArgs,
                      GhostModuleArgs, GhostModuleBnTrainArgs, GhostModuleGatedArgs, LinearActArgs)
from .reference import (ACTS, dfc_gate_reference, ghost_bottleneck_reference, ghost_module_bn_train_reference,
                        ghost_module_gated_reference, ghost_module_reference)
from .validation import (check_bn_train_inputs, check_bottleneck_inputs, check_dfc_gate_inputs, check_gated_inputs,
                         check_ghost_inputs)

BACKENDS = ("auto", "cpu", "cuda", "triton", "eager")


def load_library() -> str:
    """Build (first time) and load the C++/CUDA op library; returns the path it was loaded from."""
    return build.load_library()


class LoadWarning(UserWarning):
    """``import ghostkernels`` could not load the op library; the ops that need it raise the same error on use."""


def load_at_import() -> None:
    """What ``import ghostkernels`` does unless GHOSTKERNELS_DEFER_LOAD=1: load (or build, printing one line) the
    op library and register the Triton op when triton is installed, so that every ``torch.ops.ghostkernels`` op
    resolves right after the import. A library that cannot be built (no compiler, no ninja) is a LoadWarning here,
    not an import error: the eager backend, the Triton backend and the models still work, and every op that needs
    the library raises the build error when called."""
    try:
        build.load_library()
    except (RuntimeError, OSError, ImportError) as e:
        warnings.warn(f"ghostkernels: the op library could not be loaded at import ({e}); the ops that need it "
                      f"raise this error when called", LoadWarning, stacklevel=3)
    if triton_installed():
        from ..triton import load_op

        load_op()


def triton_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def defer_load_requested() -> bool:
    """GHOSTKERNELS_DEFER_LOAD=1: ``import ghostkernels`` loads nothing; the library is loaded on first use."""
    return os.environ.get("GHOSTKERNELS_DEFER_LOAD", "0") == "1"


def cuda_kernels_available() -> bool:
    """True when the loaded op library has CUDA kernels (torch with CUDA and a CUDA build of csrc/)."""
    build.load_library()
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
    if build.is_loaded():
        return
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "ghostkernels: the op library is not loaded yet (GHOSTKERNELS_DEFER_LOAD=1); call "
            "ghostkernels.load_library() (or run the op once) before torch.compile / torch.export")
    build.load_library()


def _autocast_dtype(x):
    """The autocast dtype that x's device is under (the ops cast their floating inputs to it, as a convolution
    does), or None."""
    dev = x.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return None


def _cast(tensors, dtype):
    return [t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors]


def _check_cuda_kernels(backend: str) -> None:
    if backend == "cuda" and not torch.compiler.is_compiling() and not cuda_kernels_available():
        raise RuntimeError(
            "ghostkernels: backend='cuda' was asked for, but the op library has no CUDA kernels (it was built "
            "without CUDA: torch has no CUDA, no nvcc was found, or GHOSTKERNELS_NO_CUDA=1)")


def ghost_module(x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act: str = "relu",
                 backend: str = "auto"):
    """Fused Ghost module: ``cat(x1, x2)[:, :out_channels]``.

    x1 = act(conv1x1(x, w_primary) + b_primary) with init = w_primary.shape[0] channels;
    x2 = act(depthwise_kxk(x1, w_cheap, padding=k//2) + b_cheap), channel j of x2 reading channel j // (ratio-1)
    of x1. Weights and biases hold the folded BatchNorm. The result has x's memory format (channels_last or
    contiguous). Under autocast, x and the weights are cast to the autocast dtype first, as for a convolution.
    """
    backend = resolve_backend(backend, x.device)
    dt = _autocast_dtype(x)
    if dt is not None:
        with torch.autocast(x.device.type, enabled=False):
            return ghost_module(*_cast((x, w_primary, b_primary, w_cheap, b_cheap), dt), out_channels, act, backend)
    if backend == "eager":
        check_ghost_inputs("ghostkernels (eager)", x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
        if not x.is_floating_point():
            raise TypeError(f"ghostkernels (eager): x must be a floating-point tensor, got {x.dtype}")
        return ghost_module_reference(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    if backend == "triton":
        from ..triton import ghost_module_triton

        return ghost_module_triton(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    _ensure_library()
    _check_cuda_kernels(backend)
    return torch.ops.ghostkernels.ghost_module(*GhostModuleArgs(x, w_primary, b_primary, w_cheap, b_cheap,
                                                                out_channels, act))


_bn_train_kernels: dict[str, bool] = {}  # by device type, once the library is loaded (its kernels never change)


def bn_train_kernels_available(device_type: str) -> bool:
    """Whether the op library has kernels of the train-mode BatchNorm passes for tensors on devices of this type
    (CPU always; CUDA where the library was built with CUDA: csrc/cuda/ghost_bn_cuda.cpp registers them)."""
    known = _bn_train_kernels.get(device_type)  # answered: a dict lookup (the decorated query below costs a
    if known is not None:                       # dynamo wrapper call even in eager mode, twice per training call)
        return known
    return _query_bn_train_kernels(device_type)


@torch.compiler.assume_constant_result  # a dispatcher query, which dynamo cannot trace; fixed once loaded
def _query_bn_train_kernels(device_type: str) -> bool:
    _ensure_library()
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    known = key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "ghostkernels::ghost_bn_conv1x1_stats", key)
    _bn_train_kernels[device_type] = known
    return known


def ghost_module_bn_train(x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, eps_primary: float, w_cheap,
                          b_cheap, bn_weight_cheap, bn_bias_cheap, eps_cheap: float, out_channels: int,
                          act: str = "relu", group: str = "", backend: str = "auto"):
    """A Ghost module in training, each BatchNorm normalizing with the batch's statistics:
    ``cat(x1, x2)[:, :out_channels]`` with x1 = act(BN1(conv1x1(x, w_primary, b_primary))) and
    x2 = act(BN2(depthwise(x1, w_cheap, b_cheap))), BN_i(z) = bn_weight_i * (z - mean(z)) / sqrt(var(z) + eps_i) +
    bn_bias_i over (N, H, W). The conv biases and BN affine parameters may be None (none); ``group`` names the
    process group a SyncBatchNorm combines the statistics over ("" for none; every process must call with the same
    shapes but may have its own batch size).

    Returns (out, mean_primary, var_primary, mean_cheap, var_cheap, count, saved_z1): each BN's batch mean and biased
    variance (the running statistics' update is the caller's: ghostkernels.nn.batchnorm.update_running_stats), the
    number of values each was computed over (all processes'), and what the backward keeps (an implementation
    detail). Differentiable in x and every parameter (the statistics outputs are not). Backends: ``cpu``, ``cuda``
    (float32, float16 and bfloat16 CUDA tensors; csrc/cuda/ghost_bn_kernels.cuh), ``triton`` (ghostkernels.triton's
    passes: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1; float16, bfloat16, float32), ``eager`` (plain
    PyTorch ops, for reference; its saved_z1 is empty), ``auto`` (the tensors' device). Under autocast x and the
    conv weights are cast to the autocast dtype, as for a convolution.
    """
    backend = resolve_backend(backend, x.device)
    dev = x.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        cast = lambda t: t if t is None else t.to(dt)  # noqa: E731
        with torch.autocast(dev, enabled=False):
            return ghost_module_bn_train(cast(x), cast(w_primary), cast(b_primary), bn_weight_primary,
                                         bn_bias_primary, eps_primary, cast(w_cheap), cast(b_cheap), bn_weight_cheap,
                                         bn_bias_cheap, eps_cheap, out_channels, act, group, backend)
    args = GhostModuleBnTrainArgs(x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, eps_primary, w_cheap,
                                  b_cheap, bn_weight_cheap, bn_bias_cheap, eps_cheap, out_channels, act, group)
    if backend == "eager":
        op = "ghostkernels (eager)"
        check_bn_train_inputs(op, x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, w_cheap, b_cheap,
                              bn_weight_cheap, bn_bias_cheap, out_channels, act, group)
        if group:
            raise ValueError(f"{op}: the eager backend does not synchronize statistics across processes "
                             f"(group={group!r}); use a SyncBatchNorm module")
        out = ghost_module_bn_train_reference(*args[:-1])
        count = torch.tensor(float(x.shape[0] * x.shape[2] * x.shape[3]), dtype=out[1].dtype, device=x.device)
        return (*out, count, x.new_empty(0))
    if backend == "triton":
        from .. import triton as gk_triton

        return gk_triton.ghost_module_bn_train_triton(*args)
    _ensure_library()
    _check_cuda_kernels(backend)  # a library built without CUDA: the same error as the other ops
    if not bn_train_kernels_available(x.device.type):
        raise NotImplementedError(f"ghostkernels: the op library has no train-mode BatchNorm kernels for "
                                  f"{x.device.type} tensors (the CPU and, in a CUDA build, CUDA have them); use "
                                  f"backend='eager' (FusedGhostModule runs its own layers there)")
    return torch.ops.ghostkernels.ghost_module_bn_train(*args)


def dfc_gate(x, w_reduce, b_reduce, w_h, b_h, w_v, b_v, backend: str = "auto"):
    """GhostNetV2's DFC attention map of x, BatchNorms folded into the convolutions:
    ``sigmoid(dw_v(dw_h(conv1x1(avg_pool2d(x, 2, 2)))))``, [N, O, H // 2, W // 2] (odd sizes floor).

    w_reduce [O, C, 1, 1] + b_reduce is the 1x1 conv, w_h [O, 1, 1, kh] + b_h the depthwise (1, kh) conv (zero padding
    kh // 2 columns), w_v [O, 1, kv, 1] + b_v the depthwise (kv, 1) conv (kv // 2 rows); kh, kv odd (GhostNetV2: 5).
    Backends as for ghost_module; differentiable (the backward is the op ghostkernels::dfc_gate_backward, or the
    Triton op's). The result has x's memory format.
    """
    backend = resolve_backend(backend, x.device)
    dt = _autocast_dtype(x)
    if dt is not None:
        with torch.autocast(x.device.type, enabled=False):
            return dfc_gate(*_cast((x, w_reduce, b_reduce, w_h, b_h, w_v, b_v), dt), backend)
    return _run_gate_op("dfc_gate", backend, DfcGateArgs(x, w_reduce, b_reduce, w_h, b_h, w_v, b_v),
                        dfc_gate_reference, check_dfc_gate_inputs)


def ghost_module_gated(x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act: str, gate,
                       backend: str = "auto"):
    """GhostNetV2's gated Ghost module: ``ghost_module(x, ...) * F.interpolate(gate, size=(H, W), mode='nearest')``,
    the map ``gate`` [N, out_channels, Hg, Wg] (dfc_gate's output, or any map) multiplied into both halves as the
    output is stored. Backends, autocast and memory format as for ghost_module; differentiable in x, the weights
    and the map (the backward op recomputes the ungated module from x)."""
    backend = resolve_backend(backend, x.device)
    dt = _autocast_dtype(x)
    if dt is not None:
        with torch.autocast(x.device.type, enabled=False):
            a = _cast((x, w_primary, b_primary, w_cheap, b_cheap, gate), dt)
            return ghost_module_gated(*a[:5], out_channels, act, a[5], backend)
    return _run_gate_op("ghost_module_gated", backend,
                        GhostModuleGatedArgs(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act, gate),
                        ghost_module_gated_reference, check_gated_inputs)


def _run_gate_op(name: str, backend: str, args, reference, check):
    """GhostNetV2's op ``name`` (dfc_gate or ghost_module_gated; its Triton twin is ghostkernels.triton's
    <name>_triton) on ``args`` (its layout) on the resolved ``backend``; eager checks with ``check`` and runs
    ``reference``."""
    if backend == "eager":
        check(f"ghostkernels.ops.{name} (eager)", *args)
        return reference(*args)
    if backend == "triton":
        from .. import triton as gk_triton

        return getattr(gk_triton, f"{name}_triton")(*args)
    _ensure_library()
    _check_cuda_kernels(backend)
    return getattr(torch.ops.ghostkernels, name)(*args)


BOTTLENECK_BACKENDS = ("auto", "cpu", "eager")


def _tensors(group, n: int, name: str):
    """A group of optional op arguments as a tuple of n tensors, or n Nones."""
    if group is None:
        return (None,) * n
    group = tuple(group)
    if len(group) == n and all(t is None for t in group):  # what this function returns for None
        return group
    if len(group) != n or not all(isinstance(t, torch.Tensor) for t in group):
        raise TypeError(f"ghostkernels.ops.ghost_bottleneck: {name} must be None or {n} tensors")
    return group


def ghost_bottleneck(x, ghost1, mid_channels: int, ghost2, out_channels: int, *, act: str = "relu",
                     stride: int = 1, dw=None, se=None, shortcut=None, gate=None, backend: str = "auto"):
    """GhostNet's bottleneck in one call, for inference (no autograd), BatchNorms folded:

        y = ghost_module(x, *ghost1, mid_channels, act)     with gate: ghost_module_gated(..., dfc_gate(x, *gate))
        y = depthwise_conv(y, *dw, stride)                  dw = (w [mid,1,k,k], b [mid]), given iff stride == 2
        y = y * hard_sigmoid(W_e . relu(W_r . mean_hw(y) + b_r) + b_e)      se = (W_r, b_r, W_e, b_e) or None
        out = ghost_module(y, *ghost2, out_channels, "identity") + shortcut(x)
        shortcut(x) = x (shortcut None), or conv1x1(depthwise_conv(x, dw_w, dw_b, stride), pw_w, pw_b) for
                      shortcut = (dw_w, dw_b, pw_w, pw_b)

    ghost1/ghost2 are (w_primary, b_primary, w_cheap, b_cheap) as for ghost_module; ``gate`` (GhostNetV2's block)
    ghost1's DFC gate weights (w_reduce, b_reduce, w_h, b_h, w_v, b_v) as for dfc_gate. Backends: ``cpu`` (one op,
    torch.ops.ghostkernels.ghost_bottleneck, or ghost_bottleneck_gated with a gate), ``eager`` (plain PyTorch ops,
    differentiable), ``auto`` (``cpu`` for CPU tensors; other devices raise: there is no GPU kernel of the whole
    block, use FusedGhostBottleneck, which runs the block's layers with fused Ghost modules there). The ``cpu`` op
    has no backward.
    """
    if backend not in BOTTLENECK_BACKENDS:
        raise ValueError(f"ghostkernels.ops.ghost_bottleneck: unknown backend {backend!r}; expected one of "
                         f"{', '.join(BOTTLENECK_BACKENDS)}")
    ghost1, ghost2 = _tensors(ghost1, 4, "ghost1"), _tensors(ghost2, 4, "ghost2")
    dw, se, shortcut = _tensors(dw, 2, "dw"), _tensors(se, 4, "se"), _tensors(shortcut, 4, "shortcut")
    gate = None if gate is None else _tensors(gate, 6, "gate")
    if gate is not None and gate[0] is None:
        raise TypeError("ghostkernels.ops.ghost_bottleneck: gate must be None or 6 tensors")
    if backend == "auto":
        if x.device.type != "cpu":
            raise ValueError(f"ghostkernels.ops.ghost_bottleneck: no kernel for tensors on {x.device} (the op is "
                             f"CPU-only); backend='eager' runs anywhere")
        backend = "cpu"
    if backend == "cpu" and x.device.type != "cpu":
        raise ValueError(f"ghostkernels.ops.ghost_bottleneck: backend='cpu' needs CPU tensors, got tensors on "
                         f"{x.device}")
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        dt = torch.get_autocast_dtype("cpu")
        cast = lambda g: tuple(t if t is None else t.to(dt) for t in g)  # noqa: E731
        with torch.autocast("cpu", enabled=False):
            return ghost_bottleneck(x.to(dt), cast(ghost1), mid_channels, cast(ghost2), out_channels, act=act,
                                    stride=stride, dw=cast(dw), se=cast(se), shortcut=cast(shortcut),
                                    gate=None if gate is None else cast(gate), backend=backend)
    if backend == "eager":
        check_bottleneck_inputs("ghostkernels (eager)", x, ghost1, mid_channels, act, dw, stride, se, ghost2,
                                out_channels, shortcut, gate=gate)
        none = lambda g: None if g[0] is None else g  # noqa: E731
        return ghost_bottleneck_reference(x, ghost1, mid_channels, ghost2, out_channels, act, stride, none(dw),
                                          none(se), none(shortcut), gate=gate)
    _ensure_library()
    if gate is not None:
        args = GhostBottleneckGatedArgs.from_groups(x, ghost1, mid_channels, ghost2, out_channels, act=act,
                                                    stride=stride, gate=gate, dw=dw, se=se, shortcut=shortcut)
        return torch.ops.ghostkernels.ghost_bottleneck_gated(*args)
    args = GhostBottleneckArgs.from_groups(x, ghost1, mid_channels, ghost2, out_channels, act=act, stride=stride,
                                           dw=dw, se=se, shortcut=shortcut)
    return torch.ops.ghostkernels.ghost_bottleneck(*args)


def _cpu_inference_op(name: str, x) -> None:
    """The checks every CPU-only inference op wrapper shares: CPU tensors, the library loaded."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"ghostkernels.ops.{name}: x must be a tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"ghostkernels.ops.{name}: the op is CPU-only, got tensors on {x.device}")
    _ensure_library()


def conv2d_act(x, w, b, stride: int = 1, act: str = "relu"):
    """``act(conv2d(x, w, b, stride, padding k//2))``: groups 1, odd k, stride 1 or 2, CPU, inference only (no
    backward). A convolution with its BatchNorm folded into ``w`` and ``b`` (FusedConvBnAct and the fused stem)."""
    _cpu_inference_op("conv2d_act", x)
    return torch.ops.ghostkernels.conv2d_act(*Conv2dActArgs(x, w, b, stride, act))


def linear_act(x, w, b, act: str = "identity"):
    """``act(x @ w.T + b)`` for a 2-D ``x``: CPU, inference only (no backward); the fused head's op."""
    _cpu_inference_op("linear_act", x)
    return torch.ops.ghostkernels.linear_act(*LinearActArgs(x, w, b, act))


def chain(x, tensors, program):
    """A program of inference steps (conv2d_act, ghost_bottleneck, mean_hw, linear_act) run back to back as one op
    call, each step's output feeding the next: CPU, inference only. Build ``(tensors, program)`` from
    ``layouts.ChainStep``s with ``layouts.encode_chain``; ghostkernels.freeze does that for a whole GhostNet."""
    _cpu_inference_op("chain", x)
    return torch.ops.ghostkernels.chain(*ChainArgs(x, list(tensors), list(program)))


def cpu_pool_stats() -> dict[str, int]:
    """The CPU block pool of the C++ kernels (csrc/cpu/util_tensor_pool.h): idle bytes it keeps (``cached_bytes``),
    bytes held by live tensors (``in_use_bytes``), allocations served from it (``hits``) and from the system
    (``misses``), and the cap on idle bytes (``limit_bytes``, from ``GHOSTKERNELS_CPU_POOL_MB``)."""
    build.load_library()
    cached, in_use, hits, misses, limit = torch.ops.ghostkernels._cpu_pool_stats()
    return {"cached_bytes": cached, "in_use_bytes": in_use, "hits": hits, "misses": misses, "limit_bytes": limit}


def release_cpu_pool() -> None:
    """Return the CPU block pool's idle blocks to the system (blocks of live tensors come back to the pool, not
    to the system, when those tensors are freed)."""
    build.load_library()
    torch.ops.ghostkernels._cpu_pool_release()


__all__ = ["ACTS", "BACKENDS", "BOTTLENECK_BACKENDS", "LoadWarning", "bn_train_kernels_available", "chain",
           "conv2d_act", "cpu_pool_stats", "cuda_kernels_available", "dfc_gate", "ghost_bottleneck", "ghost_module",
           "ghost_module_bn_train", "ghost_module_gated", "linear_act", "load_library", "release_cpu_pool",
           "resolve_backend"]
