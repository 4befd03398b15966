"""Drop-in Ghost modules that run the fused op: ``FusedGhostModule``, its GhostNetV2 (DFC-gated) subclass
``FusedGatedGhostModule``, and its Ultralytics-layout sibling ``FusedGhostConv``.

Both keep the layers (and so the parameters, buffers and state_dict keys) of the module they stand for, and choose
per call between two paths:

* fused: whenever no BatchNorm of the module normalizes with batch statistics (eval mode; or train mode with the
  BatchNorms frozen in eval mode; or a module with no BatchNorm at all). Each BN is folded into the convolution in
  front of it (ghostkernels.nn.folding, differentiable, so gradients reach the conv weights and the BN affine
  parameters) and ``ghostkernels.ops.ghost_module`` runs once. The folded weights are cached (FoldCache).
* train-mode BN: when both BatchNorms normalize with batch statistics (train mode; BatchNorm2d, or SyncBatchNorm
  after torch.nn.SyncBatchNorm.convert_sync_batchnorm, before or after fuse()),
  ``ghostkernels.ops.ghost_module_bn_train`` runs once (the statistics, combined across the SyncBatchNorm's
  processes where it synchronizes, and the output in a few passes; one fused backward), and the running statistics
  are updated from the statistics it returns exactly as nn.BatchNorm2d updates them (ghostkernels.nn.batchnorm).
  Nothing is cached between calls.
* unfused: the original layers run exactly as the original module runs them, where neither of the above applies:
  only one of the two BatchNorms in train mode, backend ``eager`` in train mode, a device without
  train-mode kernels (backend ``triton`` has them wherever it runs), or two SyncBatchNorms of different process groups.

Unlike the CPU inference ops (ghostkernels.nn.gate), the fused Ghost-module op has a backward and kernels on every
backend, so the fused path is taken in training too; forward hooks on the inner layers (primary_conv[0], ...) do
not run on it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..models import _check_positive_int
from ..ops.layouts import GhostModuleArgs
from ..ops.reference import ACTS
from . import batchnorm
from .activations import activation_module
from .folding import FoldCache, Stage, uses_batch_statistics
from .gate import BackendAttribute
from .recognize import GhostSpec, inspect_ghost_module, sequential_stage


class FusedGhostBase(BackendAttribute, nn.Module):
    """What both fused layouts share: act/backend/out_channels, the choice of path, the cached BN fold.

    A subclass provides ``ghost_stages()`` -> (primary Stage, cheap Stage) and ``_unfused_forward(x)`` (the
    original module's computation with its own layers).
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

    layout: str  # the recognizers' name of the layout: "sequential" or "conv_pair"

    def ghost_stages(self) -> tuple[Stage, Stage]:
        """The primary and cheap (conv, BatchNorm) stages."""
        raise NotImplementedError

    def ghost_spec(self) -> GhostSpec:
        """What the recognizers would find for this module (they read an already fused module by it, without a
        probe: it computes the op by construction)."""
        return GhostSpec(self.layout, self.act, self.out_channels)

    def _unfused_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def op_arguments(self, x=None) -> GhostModuleArgs:
        """The arguments of ghostkernels::ghost_module for input ``x`` (None: only the weights), BatchNorms folded
        (from the fold cache when still valid)."""
        w1, b1, w2, b2 = self._fold_cache.get(self.ghost_stages())
        return GhostModuleArgs(x, w1, b1, w2, b2, self.out_channels, self.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.ghost_stages()
        batch = [uses_batch_statistics(st.bn) for st in stages]
        if all(batch):
            group = self._train_bn_group(x, stages)
            if group is not None:
                return self._train_bn_forward(x, stages, group)
        if any(batch):
            return self._unfused_forward(x)
        w1, b1, w2, b2 = self._fold_cache.get(stages)
        return ops.ghost_module(x, w1, b1, w2, b2, self.out_channels, self.act, backend=self.backend)

    def _train_bn_group(self, x: torch.Tensor, stages) -> str | None:
        """The process group name for ghost_module_bn_train ("" for none), or None where the op does not apply (see
        the module docstring)."""
        if self.backend == "eager":
            return None
        ops.resolve_backend(self.backend, x.device)  # raises for a backend that cannot run x, as the op would
        if self.backend != "triton" and not ops.bn_train_kernels_available(x.device.type):
            return None  # (the Triton passes are not in the op library; the triton backend raises if it cannot run)
        groups = {batchnorm.sync_group(st.bn) for st in stages}
        return groups.pop() if len(groups) == 1 else None

    def _train_bn_forward(self, x: torch.Tensor, stages, group: str) -> torch.Tensor:
        (conv1, bn1), (conv2, bn2) = stages
        out, mean1, var1, mean2, var2, count, _ = ops.ghost_module_bn_train(
            x, conv1.weight, conv1.bias, bn1.weight, bn1.bias, bn1.eps, conv2.weight, conv2.bias, bn2.weight,
            bn2.bias, bn2.eps, self.out_channels, self.act, group=group, backend=self.backend)
        batchnorm.update_running_stats_of((bn1, bn2), (mean1, mean2), (var1, var2), count)
        return out

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, act={self.act!r}, backend={self.backend!r}"


class FusedGhostModule(FusedGhostBase):
    """GhostModule (official constructor) running the fused op: ``cat(x1, x2)[:, :oup]`` with
    x1 = act(BN(conv1x1(x))), x2 = act(BN(depthwise_dw_size(x1))).

    Same layers, parameters, buffers and state_dict keys as ``ghostkernels.models.GhostModule`` (and the official
    and timm modules), so their state_dicts load in both directions with ``strict=True``. Keyword-only ``act`` (one
    of the op's activations; default "relu" when ``relu`` else "identity"; when given it decides the activation and
    ``relu`` is ignored) and ``backend`` ("auto" | "cpu" | "cuda" | "triton" | "eager", see ghostkernels.ops).
    The op's primary convolution is 1x1 with stride 1 and its depthwise kernel odd: other values raise ValueError.

    See the module docstring for when the fused op runs and how the folded weights are cached.
    """

    layout = "sequential"

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
        (slice or not, activation) are checked on a small probe input (ghostkernels.nn.recognize); what the op
        cannot compute raises NotFusableError (a ValueError) with the reason. The training flag is copied. A module
        with GhostNetV2's DFC gate (short_conv) comes back as a FusedGatedGhostModule."""
        spec = inspect_ghost_module(module)
        if spec.layout != "sequential":
            raise ValueError(f"FusedGhostModule.from_module: {type(module).__name__} has the cv1/cv2 layout of "
                             f"Ultralytics' GhostConv; use FusedGhostConv.from_module (or ghostkernels.fuse)")
        if spec.gated and not issubclass(cls, FusedGatedGhostModule):
            cls = FusedGatedGhostModule
        elif not spec.gated and issubclass(cls, FusedGatedGhostModule):
            raise ValueError(f"FusedGatedGhostModule.from_module: {type(module).__name__} has no DFC gate "
                             f"(short_conv); use FusedGhostModule.from_module")
        fused = cls.__new__(cls)
        FusedGhostBase.__init__(fused)
        fused.primary_conv = module.primary_conv
        fused.cheap_operation = module.cheap_operation
        if spec.gated:
            fused.gate_fn = getattr(module, "gate_fn", None) or nn.Sigmoid()
            fused.short_conv = module.short_conv
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

    def ghost_stages(self) -> tuple[Stage, Stage]:
        return sequential_stage(self.primary_conv), sequential_stage(self.cheap_operation)

    def _unfused_forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        return torch.cat([x1, x2], dim=1)[:, :self.out_channels]


class FusedGatedGhostModule(FusedGhostModule):
    """GhostNetV2's gated Ghost module (ghostkernels.models.GhostModuleV2, timm's GhostModuleV2, the official
    GhostModuleV2 in mode 'attn', timm's GhostModuleV3 in mode 'shortcut' after reparameterize()) on the fused ops:
    ``ops.dfc_gate`` computes the DFC attention map sigmoid(short_conv(avg_pool2d(x, 2, 2))) from x, and
    ``ops.ghost_module_gated`` multiplies its nearest upsampling into both halves of the Ghost module as they are
    stored.

    Same layers, parameters and state_dict keys as the module it stands for (primary_conv, cheap_operation,
    short_conv; gate_fn, a Sigmoid, has none). The fused path runs where no BatchNorm of the five (two of the Ghost
    module, three of the gate) uses batch statistics, with all five folded (one fold cache); otherwise the original
    layers run. Both fused ops have a backward, so the fused path is taken in training with frozen BNs too.
    """

    def __init__(self, inp: int, oup: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3,
                 stride: int = 1, relu: bool = True, *, act: str | None = None, backend: str = "auto"):
        super().__init__(inp, oup, kernel_size, ratio, dw_size, stride, relu, act=act, backend=backend)
        self.gate_fn = nn.Sigmoid()
        self.short_conv = nn.Sequential(
            nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
            nn.Conv2d(oup, oup, (1, 5), 1, (0, 2), groups=oup, bias=False), nn.BatchNorm2d(oup),
            nn.Conv2d(oup, oup, (5, 1), 1, (2, 0), groups=oup, bias=False), nn.BatchNorm2d(oup))

    def ghost_spec(self) -> GhostSpec:
        return GhostSpec(self.layout, self.act, self.out_channels, gated=True)

    def gate_stages(self) -> tuple[Stage, Stage, Stage]:
        """The gate's three (conv, BatchNorm) stages: the 1x1 conv, the (1, k) and the (k, 1) depthwise convs
        (short_conv's layers as checked when the module was made; read through _modules, as per call)."""
        c0, b0, c1, b1, c2, b2 = self.short_conv._modules.values()
        return Stage(c0, b0), Stage(c1, b1), Stage(c2, b2)

    def _stages(self) -> tuple[Stage, ...]:
        return self.ghost_stages() + self.gate_stages()

    def op_arguments(self, x=None) -> GhostModuleArgs:
        """The arguments of ghostkernels::ghost_module (without the map: see gate_arguments) for input ``x``,
        BatchNorms folded."""
        w1, b1, w2, b2 = self._fold_cache.get(self._stages())[:4]
        return GhostModuleArgs(x, w1, b1, w2, b2, self.out_channels, self.act)

    def gate_arguments(self) -> tuple[torch.Tensor, ...]:
        """dfc_gate's six folded weights (w_reduce, b_reduce, w_h, b_h, w_v, b_v)."""
        return self._fold_cache.get(self._stages())[4:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self._stages()
        if any(uses_batch_statistics(st.bn) for st in stages):
            return self._unfused_forward(x)
        w1, b1, w2, b2, *gate = self._fold_cache.get(stages)
        gate_map = ops.dfc_gate(x, *gate, backend=self.backend)
        return ops.ghost_module_gated(x, w1, b1, w2, b2, self.out_channels, self.act, gate_map,
                                      backend=self.backend)

    def _unfused_forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.short_conv(F.avg_pool2d(x, kernel_size=2, stride=2))
        out = super()._unfused_forward(x)
        return out * F.interpolate(self.gate_fn(res), size=(out.shape[-2], out.shape[-1]), mode="nearest")


class FusedGhostConv(FusedGhostBase):
    """Ultralytics' GhostConv running the fused op: y = cv1(x), output ``cat(y, cv2(y))`` (no slice), where cv1 is
    conv1x1 -> [bn] -> act and cv2 a depthwise conv -> [bn] -> act (BN present before Ultralytics' own fuse(), a
    conv bias after it).

    ``FusedGhostConv(ghost_conv, backend=...)`` wraps an existing GhostConv-shaped module, sharing its ``cv1`` and
    ``cv2`` (so the same parameters, buffers and state_dict keys); what the op cannot compute (a strided or grouped
    cv1, an activation outside the op's set, ...) raises ValueError with the reason.
    """

    layout = "conv_pair"

    def __init__(self, ghost_conv: nn.Module, *, backend: str = "auto"):
        super().__init__()
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

    def ghost_stages(self) -> tuple[Stage, Stage]:
        return (Stage(self.cv1.conv, getattr(self.cv1, "bn", None)),
                Stage(self.cv2.conv, getattr(self.cv2, "bn", None)))

    def _unfused_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        return torch.cat([y, self.cv2(y)], dim=1)[:, :self.out_channels]


__all__ = ["FusedGatedGhostModule", "FusedGhostBase", "FusedGhostConv", "FusedGhostModule"]
