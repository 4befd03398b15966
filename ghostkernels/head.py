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
for act2 to skip (as the stem does, ghostkernels.conv_bn_act), for a pass over 1280 numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from . import ops
from .conv_bn_act import _has_hooks, _rebased
from .modules import BackendAttribute

_OP_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def _op_ready(x: torch.Tensor, module: nn.Module, backend: str) -> bool:
    """Whether linear_act may stand in for ``module`` on x now (CPU inference, nothing traced or hooked)."""
    if backend not in ("auto", "cpu") or x.device.type != "cpu" or x.dtype not in _OP_DTYPES:
        return False
    if torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"):
        return False
    weight, bias = module.weight, module.bias
    if x.dtype != weight.dtype or bias is None or weight.device.type != "cpu":
        return False  # the op takes one dtype; mixed inputs get ATen's error message from the plain layer
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        return False
    return not _has_hooks(module)


class FusedConvHead(BackendAttribute, nn.Conv2d):
    """conv_head of a fused GhostNet: a 1x1 Conv2d (stride 1, no padding, groups 1, with a bias) that runs
    linear_act on a pooled [N, C, 1, 1] input in CPU inference; its state is the original Conv2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[2] != 1 or x.shape[3] != 1 or not _op_ready(x, self, self._backend):
            return super().forward(x)
        n = x.shape[0]
        y = torch.ops.ghostkernels.linear_act.default(x.reshape(n, -1), self.weight.reshape(self.out_channels, -1),
                                                      self.bias, "identity")
        return y.reshape(n, self.out_channels, 1, 1)


class FusedClassifier(BackendAttribute, nn.Linear):
    """classifier of a fused GhostNet: a Linear with a bias that runs linear_act on a 2-D input in CPU inference;
    its state is the original Linear's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or not _op_ready(x, self, self._backend):
            return super().forward(x)
        return torch.ops.ghostkernels.linear_act.default(x, self.weight, self.bias, "identity")


def _conv_head_fusable(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is not None)


def _classifier_fusable(linear: nn.Module) -> bool:
    return type(linear) is nn.Linear and linear.bias is not None


def fuse_head(parent: nn.Module, backend: str) -> list[str]:
    """Swap ``parent``'s conv_head and classifier, in place, for FusedConvHead / FusedClassifier where each is a
    plain layer of the kind above on the CPU without hooks (already fused ones get ``backend``); return the names
    of those swapped or updated. The replacements compute the same function as the originals, so no probe is run."""
    done = []
    for name, fusable, cls in (("conv_head", _conv_head_fusable, FusedConvHead),
                               ("classifier", _classifier_fusable, FusedClassifier)):
        old = parent._modules.get(name)
        if isinstance(old, cls):
            old.backend = backend
        elif not (fusable(old) and old.weight.device.type == "cpu" and not _has_hooks(old)):
            continue
        else:
            new = _rebased(old, cls)
            new.backend = backend
            setattr(parent, name, new)
        done.append(name)
    if done:
        ops.load_library()
    return done


def head_parents(model: nn.Module):
    """(qualified name, module) of every module of ``model`` with both conv_head and classifier children."""
    for name, module in model.named_modules():
        kids = module._modules
        if kids.get("conv_head") is not None and kids.get("classifier") is not None:
            yield name, module


__all__ = ["FusedClassifier", "FusedConvHead", "fuse_head", "head_parents"]
