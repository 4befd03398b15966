"""conv -> BatchNorm -> activation chains outside the Ghost modules, as one CPU inference op (ghostkernels::conv2d_act,
the BatchNorm folded into the convolution, the output from the CPU block pool). fuse() (blocks=True) does two:

1. The network's stem. GhostNet (this package's, the official code's and timm's) opens with three children of the
network itself, ``conv_stem`` (a 3x3 stride-2 Conv2d from the 3 image channels), ``bn1`` (BatchNorm2d) and
``act1`` (ReLU), applied as ``act1(bn1(conv_stem(x)))`` in its forward. In eager PyTorch they are three calls
whose outputs (800 KB per image each at 224x224) come from glibc, and in some processes those pages go back to the
system after every forward and fault in again on the next (bench/NOTES.md, entries 17 and 18).

The three are not one module, so fuse() cannot swap a single child. It replaces each by an instance of a subclass
of its own class that shares its Parameter and buffer objects (the state_dict keys and values do not change;
``FusedStemConv.from_modules`` makes the three, ghostkernels.patch.stem installs them in the parent):

* ``conv_stem`` -> FusedStemConv. Inside its parent's forward, in CPU inference, it returns what
  ``act1(bn1(conv_stem(x)))`` returns, computed by the op, and marks that tensor (an attribute naming the two
  modules that are already applied). Anywhere else (called on its own, training, autograd, other devices,
  autocast, torch.compile / export, hooks on any of the three) it is the plain convolution.
* ``bn1`` -> BatchNormAfterFusedStem and ``act1`` -> ReLUAfterFusedStem: an input marked for them is returned as it
  is; any other input is normalized / activated as before.

"Inside its parent's forward" is a per-module depth count kept by a forward pre-hook and an always-called forward
hook on the parent, so a direct call of ``conv_stem`` (feature extraction, say) still gets the convolution alone.
fuse() runs the parent on a probe image before and after the swap and undoes it unless the outputs agree, which
catches a forward that uses the three differently. Only stems on the CPU are fused (the op is CPU-only). "CPU
inference" is the rule of ghostkernels.nn.gate, shared by every fused module that runs an inference op.

2. ConvBnAct modules: a module whose children are exactly ``conv``, ``bn1`` and ``act1`` and whose forward is
``act1(bn1(conv(x)))`` (GhostNet's last stage, 160 -> 960 channels 1x1 at 7x7 in GhostNet 1.0x; timm's ConvBnAct)
is one module, so it is swapped whole for a FusedConvBnAct with the same children (checked on a probe input by
ghostkernels.nn.recognize.inspect_conv_bn_act).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..ops.layouts import ChainStep, Conv2dActArgs, chain_step
from .folding import FoldCache, Stage
from .gate import BackendAttribute, CpuInferenceGate
from .recognize import check_stem, inspect_conv_bn_act

# The attribute FusedStemConv sets on its output: (bn, act), the modules whose work that output already contains.
_APPLIED = "_ghostkernels_stem_applied"


def _applied_by(x: torch.Tensor):
    # Never while tracing: dynamo would have to reason about an attribute set on a tensor in eager code.
    if torch.compiler.is_compiling():
        return None
    return getattr(x, _APPLIED, None)


def rebased(module: nn.Module, cls: type) -> nn.Module:
    """A new ``cls`` instance with ``module``'s attributes: the same Parameter and buffer objects in new dicts (how
    the fused stem and head layers become subclasses of their own classes without copying state)."""
    new = cls.__new__(cls)
    new.__dict__.update({k: copy.copy(v) if isinstance(v, (dict, set)) else v for k, v in module.__dict__.items()})
    return new


class _AfterFusedStem:
    """The forward of bn1 / act1 of a fused stem: an input FusedStemConv marked as already containing this module's
    work (slot 0: the BatchNorm, 1: the activation) is returned as it is; any other input goes to the base class."""

    _slot: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        applied = _applied_by(x)
        if applied is not None and applied[self._slot] is self:
            return x
        return super().forward(x)


class BatchNormAfterFusedStem(_AfterFusedStem, nn.BatchNorm2d):
    """bn1 of a fused stem (a BatchNorm2d with the original's parameters and buffers)."""

    _slot = 0


class ReLUAfterFusedStem(_AfterFusedStem, nn.ReLU):
    """act1 of a fused stem (a ReLU)."""

    _slot = 1


class FusedStemConv(BackendAttribute, nn.Conv2d):
    """conv_stem of a fused stem (see the module docstring); its state is the original Conv2d's."""

    _bn: BatchNormAfterFusedStem
    _act: ReLUAfterFusedStem

    @classmethod
    def from_modules(cls, conv: nn.Module, bn: nn.Module, act: nn.Module, backend: str = "auto"
                     ) -> tuple["FusedStemConv", BatchNormAfterFusedStem, ReLUAfterFusedStem]:
        """The fused stem's three modules, sharing the state of ``conv`` / ``bn`` / ``act`` (which are not changed);
        raises StemNotFusable (a NotFusableError) unless conv2d_act computes them. The caller installs them in the
        parent together with the parent hooks ``_enter_parent`` / ``_leave_parent`` (ghostkernels.patch.stem)."""
        check_stem(conv, bn, act)
        new_bn = rebased(bn, BatchNormAfterFusedStem)
        new_act = rebased(act, ReLUAfterFusedStem)
        new_conv = rebased(conv, FusedStemConv)
        new_conv._attach(new_bn, new_act, backend)
        return new_conv, new_bn, new_act

    def _attach(self, bn: BatchNormAfterFusedStem, act: ReLUAfterFusedStem, backend: str) -> None:
        # Plain attributes, not submodules: bn1 and act1 stay the parent's children (and state_dict keys).
        object.__setattr__(self, "_bn", bn)
        object.__setattr__(self, "_act", act)
        self.backend = backend
        self._fold_cache = FoldCache()
        self._stages = [Stage(self, bn)]
        self._gate = CpuInferenceGate(self, [self, bn, act])
        self._depth = 0  # how many forwards of the parent are running

    # The parent's hooks (bound methods, so that copy.deepcopy of the network binds them to the copy's stem).
    def _enter_parent(self, module, args) -> None:
        if not torch.compiler.is_compiling():
            self._depth += 1

    def _leave_parent(self, module, args, output) -> None:
        if not torch.compiler.is_compiling():
            self._depth = max(0, self._depth - 1)

    def op_arguments(self, x=None) -> Conv2dActArgs:
        """The arguments of ghostkernels::conv2d_act for the whole stem (bn1 folded in, act1's ReLU)."""
        w, b = self._fold_cache.get(self._stages)
        return Conv2dActArgs(x, w, b, self.stride[0], "relu")

    def chain_step(self) -> ChainStep:
        """The ghostkernels::chain step that runs the whole stem."""
        return chain_step(self.op_arguments())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self._depth > 0 and self._gate.open(x, self.training, self._backend)):
            return super().forward(x)
        y = torch.ops.ghostkernels.conv2d_act.default(*self.op_arguments(x))
        setattr(y, _APPLIED, (self._bn, self._act))
        return y


class FusedConvBnAct(BackendAttribute, nn.Module):
    """A ConvBnAct (children conv, bn1, act1; forward act1(bn1(conv(x)))) with the same children and state_dict. In
    CPU inference (ghostkernels.nn.gate) it runs ghostkernels::conv2d_act with the BatchNorm folded (cached as in
    FusedGhostModule); anywhere else (training, autograd, GPUs, autocast, torch.compile, hooks) its own layers."""

    @classmethod
    def from_module(cls, module: nn.Module, backend: str = "auto") -> FusedConvBnAct:
        """Share ``module``'s children; raises StemNotFusable (a NotFusableError) unless conv2d_act computes it
        exactly (ghostkernels.nn.recognize.inspect_conv_bn_act)."""
        act = inspect_conv_bn_act(module)
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        for name, child in module._modules.items():
            fused._modules[name] = child
        fused.training = module.training
        fused.act = act
        fused.backend = backend
        fused._fold_cache = FoldCache()
        fused._stages = [Stage(module.conv, module.bn1)]
        fused._gate = CpuInferenceGate(module.conv, [module.conv, module.bn1, module.act1])
        return fused

    def op_arguments(self, x=None) -> Conv2dActArgs:
        """The arguments of ghostkernels::conv2d_act (bn1 folded into conv)."""
        w, b = self._fold_cache.get(self._stages)
        return Conv2dActArgs(x, w, b, self.conv.stride[0], self.act)

    def chain_step(self) -> ChainStep:
        """The ghostkernels::chain step that runs this module."""
        return chain_step(self.op_arguments())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._gate.open(x, self.training, self._backend):
            return self.act1(self.bn1(self.conv(x)))
        return torch.ops.ghostkernels.conv2d_act.default(*self.op_arguments(x))

    def extra_repr(self) -> str:
        return f"act={self.act!r}, backend={self.backend!r}"


__all__ = ["BatchNormAfterFusedStem", "FusedConvBnAct", "FusedStemConv", "ReLUAfterFusedStem", "rebased"]
