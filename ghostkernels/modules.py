"""Drop-in Ghost modules that run the fused op: ``FusedGhostModule`` and its Ultralytics-layout sibling
``FusedGhostConv``.

Both keep the layers (and so the parameters, buffers and state_dict keys) of the module they stand for, and choose
per call between two paths:

* fused: whenever no BatchNorm of the module normalizes with batch statistics (eval mode; or train mode with the
  BatchNorms frozen in eval mode; or a module with no BatchNorm at all). Each BN is folded into the convolution in
  front of it (ghostkernels._bn_fold, differentiable, so gradients reach the conv weights and the BN affine
  parameters) and ``ghostkernels.ops.ghost_module`` runs once.
* unfused: when a BatchNorm uses batch statistics (train mode), the original layers run exactly as the original
  module runs them, so outputs and running statistics are identical. The op has no batch-statistics kernel.

Folded weights are cached between calls and recomputed only when a tensor they are computed from changes (another
tensor object, an in-place update such as an optimizer step, which bumps ``Tensor._version``, new storage, dtype or
device) or a BN's eps changes. (Not noticed: ``.data =`` swapping in a view of the same storage at the same address
with another shape.) A cached fold never carries an autograd graph: when autograd is recording and a
parameter requires grad, the fold is recomputed on every call. Under torch.compile the cache is skipped and the fold
is traced into the graph (reading ``_version`` would break the graph).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from . import ops
from ._bn_fold import fold_conv_bn
from .models import _check_positive_int
from .reference import ACTS

# Activation modules the op can run, by exact type (a subclass may override forward). An empty nn.Sequential is the
# official code's "no activation".
_ACT_TYPES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish",
              nn.Identity: "identity"}


def activation_name(module: nn.Module | None) -> str | None:
    """The op's act name for an activation module (None or an empty Sequential: "identity"), or None when the op
    has no such activation."""
    if module is None or (type(module) is nn.Sequential and len(module) == 0):
        return "identity"
    return _ACT_TYPES.get(type(module))


def activation_module(act: str) -> nn.Module:
    """The module GhostModule puts after each conv for ``act``: in-place activations, and for "identity" the
    official code's empty ``nn.Sequential()`` (no state_dict keys either way)."""
    table = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish}
    if act == "identity":
        return nn.Sequential()
    if act not in table:
        raise ValueError(f"ghostkernels: unknown act {act!r}; expected one of {', '.join(ACTS)}")
    return table[act](inplace=True)


class Stage(NamedTuple):
    """One conv -> [BatchNorm] step of a Ghost module (the activation is the module's ``act``)."""

    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None


def _uses_batch_statistics(bn: nn.BatchNorm2d | None) -> bool:
    # The same rule as F.batch_norm's caller in nn.BatchNorm2d: batch statistics in training mode or without
    # running statistics.
    return bn is not None and (bn.training or bn.running_mean is None or bn.running_var is None)


def _fold_sources(stages) -> tuple[list[torch.Tensor], tuple[float, ...]]:
    """Every tensor the fold reads, and the BNs' eps (from the modules' _parameters and _buffers dicts: attribute
    access through nn.Module.__getattr__ is several times slower, and this runs on every call)."""
    out, eps = [], []
    for st in stages:
        params = st.conv._parameters
        out.append(params["weight"])
        if params.get("bias") is not None:
            out.append(params["bias"])
        if st.bn is not None:
            bp, bb = st.bn._parameters, st.bn._buffers
            out += [t for t in (bp.get("weight"), bp.get("bias"), bb.get("running_mean"), bb.get("running_var"))
                    if t is not None]
            eps.append(st.bn.eps)
    return out, tuple(eps)


def _fold_key(sources: list[torch.Tensor], grad_enabled: bool):
    """What decides the folded weights, or None when they must not be cached: a source that is part of this call's
    autograd graph, or an inference tensor (it has no version counter, so an in-place update could not be noticed).

    Per source: its identity (id() is safe: the cache entry keeps the sources alive, so no other tensor can take
    their ids), its version counter (in-place updates: optimizer steps, load_state_dict, ``mul_``) and its data_ptr
    (``.data =`` and ``module.to()``, which swap a parameter's storage without touching its version). This runs on
    every call of every fused module; at batch 1 its cost is a visible share of a block's time, hence one flat
    list comprehension."""
    if grad_enabled:
        for t in sources:
            if t.requires_grad:
                return None
    try:
        return [(id(t), t._version, t.data_ptr()) for t in sources]
    except RuntimeError:  # "Inference tensors do not track version counter"
        return None


def checked_backend(owner: str, value: str) -> str:
    """``value`` if it is one of ops.BACKENDS (else ValueError naming ``owner``); the C++ library is loaded now for
    the backends that use it, so that a later torch.compile never has to build it."""
    if value not in ops.BACKENDS:
        raise ValueError(f"{owner}: unknown backend {value!r}; expected one of {', '.join(ops.BACKENDS)}")
    if value in ("auto", "cpu", "cuda"):
        ops.load_library()
    return value


class FoldCache:
    """The BN-folded weights of a list of Stages, recomputed only when a tensor they come from changes (see the
    module docstring). One per fused module; a plain attribute, never state. ``frozen`` (set by freeze()): with
    autograd off, a cached fold is returned without checking its sources."""

    def __init__(self):
        self._entry = None  # (source tensors, key, folded weights)
        self.frozen = False

    @staticmethod
    def fold(stages) -> tuple[torch.Tensor, ...]:
        """(w, b) of every stage, flattened: w0, b0, w1, b1, ..."""
        return tuple(t for st in stages for t in fold_conv_bn(st.conv.weight, st.conv.bias, st.bn))

    def get(self, stages) -> tuple[torch.Tensor, ...]:
        """The folded weights of ``stages`` (as ``fold``), from the cache when still valid."""
        if torch.compiler.is_compiling():
            return self.fold(stages)
        if self.frozen and self._entry is not None and not torch.is_grad_enabled():
            return self._entry[2]
        sources, eps = _fold_sources(stages)
        grad_enabled = torch.is_grad_enabled()
        key = _fold_key(sources, grad_enabled)
        if key is None:
            if grad_enabled and any(t.requires_grad for t in sources):
                return self.fold(stages)  # part of this call's autograd graph: never cached
            with torch.no_grad():
                return self.fold(stages)
        key.append((eps, torch.is_inference_mode_enabled()))
        entry = self._entry
        if entry is not None and entry[1] == key:
            return entry[2]
        with torch.no_grad():
            folded = self.fold(stages)
        self._entry = (sources, key, folded)
        return folded


class BackendAttribute:
    """The ``backend`` attribute of the fused modules: one of ops.BACKENDS, checked on assignment."""

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = checked_backend(type(self).__name__, value)


class _FusedGhostBase(BackendAttribute, nn.Module):
    """What both fused layouts share: act/backend/out_channels, the choice of path, the cached BN fold.

    A subclass provides ``_stages()`` -> (primary Stage, cheap Stage) and ``_unfused_forward(x)`` (the original
    module's computation with its own layers).
    """

    def __init__(self):
        super().__init__()
        self._fold_cache = FoldCache()

    def _configure(self, out_channels: int, act: str, backend: str) -> None:
        if act not in ACTS:
            raise ValueError(f"{type(self).__name__}: unknown act {act!r}; expected one of {', '.join(ACTS)}")
        self.out_channels = out_channels
        self.act = act
        self.backend = backend

    def _stages(self) -> tuple[Stage, Stage]:
        raise NotImplementedError

    def _unfused_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _folded_weights(self, stages):
        """(w_primary, b_primary, w_cheap, b_cheap) with the BNs folded in, from the cache when still valid."""
        return self._fold_cache.get(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self._stages()
        if any(_uses_batch_statistics(st.bn) for st in stages):
            return self._unfused_forward(x)
        w1, b1, w2, b2 = self._folded_weights(stages)
        return ops.ghost_module(x, w1, b1, w2, b2, self.out_channels, self.act, backend=self.backend)

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, act={self.act!r}, backend={self.backend!r}"


def _sequential_stage(seq: nn.Sequential) -> Stage:
    # Through the _modules dict rather than seq[i]: Sequential's indexing costs microseconds, on every call.
    layers = list(seq._modules.values())
    bn = layers[1] if len(layers) > 1 and isinstance(layers[1], nn.BatchNorm2d) else None
    return Stage(layers[0], bn)


class FusedGhostModule(_FusedGhostBase):
    """GhostModule (official constructor) running the fused op: ``cat(x1, x2)[:, :oup]`` with
    x1 = act(BN(conv1x1(x))), x2 = act(BN(depthwise_dw_size(x1))).

    Same layers, parameters, buffers and state_dict keys as ``ghostkernels.models.GhostModule`` (and the official
    and timm modules), so their state_dicts load in both directions with ``strict=True``. Keyword-only ``act`` (one
    of the op's activations; default "relu" when ``relu`` else "identity"; when given it decides the activation and
    ``relu`` is ignored) and ``backend`` ("auto" | "cpu" | "cuda" | "triton" | "eager", see ghostkernels.ops).
    The op's primary convolution is 1x1 with stride 1 and its depthwise kernel odd: other values raise ValueError.

    See the module docstring for when the fused op runs and how the folded weights are cached.
    """

    def __init__(self, inp: int, oup: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3,
                 stride: int = 1, relu: bool = True, *, act: str | None = None, backend: str = "auto"):
        super().__init__()
        name = "FusedGhostModule"
        _check_positive_int(name, inp=inp, oup=oup, kernel_size=kernel_size, dw_size=dw_size, stride=stride)
        if kernel_size != 1:
            raise ValueError(f"{name}: kernel_size={kernel_size} is not supported: the fused op's primary "
                             f"convolution is 1x1 (use ghostkernels.models.GhostModule for other sizes)")
        if stride != 1:
            raise ValueError(f"{name}: stride={stride} is not supported: the fused op runs at stride 1 "
                             f"(use ghostkernels.models.GhostModule for strided Ghost modules)")
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 2:
            raise ValueError(f"{name}: ratio must be an int >= 2 (ratio - 1 cheap channels per primary channel), "
                             f"got {ratio!r}")
        if dw_size % 2 != 1:
            raise ValueError(f"{name}: dw_size={dw_size} must be odd (padding dw_size // 2 keeps the image size)")
        act = ("relu" if relu else "identity") if act is None else act
        if act not in ACTS:
            raise ValueError(f"{name}: unknown act {act!r}; expected one of {', '.join(ACTS)}")
        init = math.ceil(oup / ratio)
        new = init * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(inp, init, 1, 1, 0, bias=False), nn.BatchNorm2d(init), activation_module(act))
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init, new, dw_size, 1, dw_size // 2, groups=init, bias=False), nn.BatchNorm2d(new),
            activation_module(act))
        self._configure(oup, act, backend)

    @classmethod
    def from_module(cls, module: nn.Module, *, backend: str = "auto") -> "FusedGhostModule":
        """A FusedGhostModule that shares the layers (the same Parameter and buffer objects) of ``module``: this
        package's GhostModule, the official or timm GhostModule, an official GhostModuleV2 in mode 'original', or a
        timm GhostModuleV3 after ``reparameterize()`` (convs with bias, no BN, no slice). Its forward semantics
        (slice or not, activation) are checked on a small probe input; what the op cannot compute raises
        ValueError (ghostkernels.fuse.NotFusableError) with the reason. The training flag is copied."""
        from .fuse import inspect_ghost_module

        spec = inspect_ghost_module(module)
        if spec.layout != "sequential":
            raise ValueError(f"FusedGhostModule.from_module: {type(module).__name__} has the cv1/cv2 layout of "
                             f"Ultralytics' GhostConv; use FusedGhostConv.from_module (or ghostkernels.fuse)")
        fused = cls.__new__(cls)
        _FusedGhostBase.__init__(fused)
        fused.primary_conv = module.primary_conv
        fused.cheap_operation = module.cheap_operation
        fused._configure(spec.out_channels, spec.act, backend)
        fused.training = module.training  # not .train(): that would overwrite the shared layers' own flags
        return fused

    # The official module's attribute names.
    @property
    def oup(self) -> int:
        return self.out_channels

    @property
    def init_channels(self) -> int:
        return self.primary_conv[0].out_channels

    @property
    def new_channels(self) -> int:
        return self.cheap_operation[0].out_channels

    def _stages(self) -> tuple[Stage, Stage]:
        return _sequential_stage(self.primary_conv), _sequential_stage(self.cheap_operation)

    def _unfused_forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        return torch.cat([x1, x2], dim=1)[:, :self.out_channels]


class FusedGhostConv(_FusedGhostBase):
    """Ultralytics' GhostConv running the fused op: y = cv1(x), output ``cat(y, cv2(y))`` (no slice), where cv1 is
    conv1x1 -> [bn] -> act and cv2 a depthwise conv -> [bn] -> act (BN present before Ultralytics' own fuse(), a
    conv bias after it).

    ``FusedGhostConv(ghost_conv, backend=...)`` wraps an existing GhostConv-shaped module, sharing its ``cv1`` and
    ``cv2`` (so the same parameters, buffers and state_dict keys); what the op cannot compute (a strided or grouped
    cv1, an activation outside the op's set, ...) raises ValueError with the reason.
    """

    def __init__(self, ghost_conv: nn.Module, *, backend: str = "auto"):
        super().__init__()
        from .fuse import inspect_ghost_module

        spec = inspect_ghost_module(ghost_conv)
        if spec.layout != "conv_pair":
            raise ValueError(f"FusedGhostConv: {type(ghost_conv).__name__} has the primary_conv/cheap_operation "
                             f"layout; use FusedGhostModule.from_module (or ghostkernels.fuse)")
        self.cv1 = ghost_conv.cv1
        self.cv2 = ghost_conv.cv2
        self._configure(spec.out_channels, spec.act, backend)
        self.training = ghost_conv.training  # not .train(): that would overwrite the shared layers' own flags

    @classmethod
    def from_module(cls, module: nn.Module, *, backend: str = "auto") -> "FusedGhostConv":
        return cls(module, backend=backend)

    def _stages(self) -> tuple[Stage, Stage]:
        return (Stage(self.cv1.conv, getattr(self.cv1, "bn", None)),
                Stage(self.cv2.conv, getattr(self.cv2, "bn", None)))

    def _unfused_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        return torch.cat([y, self.cv2(y)], dim=1)[:, :self.out_channels]


__all__ = ["FusedGhostConv", "FusedGhostModule", "activation_module", "activation_name"]
