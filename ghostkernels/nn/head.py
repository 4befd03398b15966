"""GhostNet's head on ghostkernels::linear_act (CPU inference): ``conv_head`` and ``classifier``.

GhostNet (this package's, the official code's and timm's) ends with global_pool -> conv_head (a 1x1 Conv2d with a
bias, 960 -> 1280 in GhostNet 1.0x, applied to the pooled 1x1 image) -> act2 -> flatten -> dropout -> classifier (a
Linear, 1280 -> 1000). At batch 1 the two are matrix-vector products over 10 MB of weights, which the rest of the
forward pushes out of the last-level cache, and ATen ran them on one of the threads (an im2col convolution and
MKL's sgemv: ~0.5 ms each on the 2-core VM of bench/NOTES.md, entry 19). fuse() (blocks=True) gives every module
that has both children a FusedConvHead and a FusedClassifier instead: subclasses of Conv2d and Linear that share the
original's Parameter objects (the state_dict does not change) and compute the same function; only in CPU inference
(nothing needs a gradient, no autocast, not traced, no hooks) do they call the op, whose kernel splits the weight
rows over the threads and reads each row once for the whole batch. Anywhere else they are the plain layers.

The activation after conv_head (act2) stays a module of its own: fusing it would mean marking conv_head's output
for act2 to skip (as the stem does, ghostkernels.nn.conv_bn_act), for a pass over 1280 numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.layouts import ChainStep, LinearActArgs, chain_step
from .conv_bn_act import rebased
from .gate import BackendAttribute, CpuInferenceGate
from .recognize import classifier_fusable, conv_head_fusable


class _FusedLinearLayer(BackendAttribute):
    """What FusedConvHead and FusedClassifier share: made from the plain layer by ``from_module`` (the same
    Parameter objects), the CPU inference gate of ghostkernels.nn.gate over the layer itself (a hook on it means
    its caller expects the layer's own forward)."""

    @classmethod
    def from_module(cls, layer: nn.Module, backend: str = "auto"):
        """The fused layer sharing ``layer``'s state; ValueError unless linear_act computes ``layer``."""
        if not cls._fusable(layer):
            raise ValueError(f"{cls.__name__}.from_module: {type(layer).__name__} is not {cls._what}")
        new = rebased(layer, cls)
        new.backend = backend
        new._gate = CpuInferenceGate(new, [new])
        return new

    def _op_ready(self, x: torch.Tensor) -> bool:
        return self.bias is not None and self._gate.open(x, self.training, self._backend)

    def chain_step(self, act: str = "identity") -> ChainStep:
        """The ghostkernels::chain step that runs this layer on the pooled [N, C] input, followed by ``act`` (a
        frozen GhostNet folds act2 into conv_head's step)."""
        return chain_step(self.op_arguments(act=act))


class FusedConvHead(_FusedLinearLayer, nn.Conv2d):
    """conv_head of a fused GhostNet: a 1x1 Conv2d (stride 1, no padding, groups 1, with a bias) that runs
    linear_act on a pooled [N, C, 1, 1] input in CPU inference; its state is the original Conv2d's."""

    _fusable = staticmethod(conv_head_fusable)
    _what = "a 1x1 Conv2d with a bias"

    def op_arguments(self, x=None, act: str = "identity") -> LinearActArgs:
        """The arguments of ghostkernels::linear_act for the pooled, flattened input ``x`` [N, C]."""
        return LinearActArgs(x, self.weight.detach().reshape(self.out_channels, -1), self.bias.detach(), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[2] != 1 or x.shape[3] != 1 or not self._op_ready(x):
            return super().forward(x)
        n = x.shape[0]
        y = torch.ops.ghostkernels.linear_act.default(*self.op_arguments(x.reshape(n, -1)))
        return y.reshape(n, self.out_channels, 1, 1)


class FusedClassifier(_FusedLinearLayer, nn.Linear):
    """classifier of a fused GhostNet: a Linear with a bias that runs linear_act on a 2-D input in CPU inference;
    its state is the original Linear's."""

    _fusable = staticmethod(classifier_fusable)
    _what = "a Linear with a bias"

    def op_arguments(self, x=None, act: str = "identity") -> LinearActArgs:
        """The arguments of ghostkernels::linear_act."""
        return LinearActArgs(x, self.weight.detach(), self.bias.detach(), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or not self._op_ready(x):
            return super().forward(x)
        return torch.ops.ghostkernels.linear_act.default(*self.op_arguments(x))


__all__ = ["FusedClassifier", "FusedConvHead"]
