"""conv -> BatchNorm -> activation chains outside the Ghost modules, as one CPU inference op (ghostkernels::conv2d_act,
the BatchNorm folded into the convolution, the output from the CPU block pool). fuse() (blocks=True) does two:

1. The network's stem. GhostNet (this package's, the official code's and timm's) opens with three children of the
network itself, ``conv_stem`` (a 3x3 stride-2 Conv2d from the 3 image channels), ``bn1`` (BatchNorm2d) and
``act1`` (ReLU), applied as ``act1(bn1(conv_stem(x)))`` in its forward. In eager PyTorch they are three calls
whose outputs (800 KB per image each at 224x224) come from glibc, and in some processes those pages go back to the
system after every forward and fault in again on the next (bench/NOTES.md, entries 17 and 18).

The three are not one module, so fuse() cannot swap a single child. It replaces each by an instance of a subclass
of its own class that shares its Parameter and buffer objects (the state_dict keys and values do not change):

* ``conv_stem`` -> FusedStemConv. Inside its parent's forward, in CPU inference, it returns what
  ``act1(bn1(conv_stem(x)))`` returns, computed by the op, and marks that tensor (an attribute naming the two
  modules that are already applied). Anywhere else (called on its own, training, autograd, other devices,
  autocast, torch.compile / export, hooks on any of the three) it is the plain convolution.
* ``bn1`` -> BatchNormAfterFusedStem and ``act1`` -> ReLUAfterFusedStem: an input marked for them is returned as it
  is; any other input is normalized / activated as before.

"Inside its parent's forward" is a per-module depth count kept by a forward pre-hook and an always-called forward
hook on the parent, so a direct call of ``conv_stem`` (feature extraction, say) still gets the convolution alone.
fuse() runs the parent on a probe image before and after the swap and undoes it unless the outputs agree, which
catches a forward that uses the three differently. Only stems on the CPU are fused (the op is CPU-only).

2. ConvBnAct modules: a module whose children are exactly ``conv``, ``bn1`` and ``act1`` and whose forward is
``act1(bn1(conv(x)))`` (GhostNet's last stage, 160 -> 960 channels 1x1 at 7x7 in GhostNet 1.0x; timm's ConvBnAct)
is one module, so it is swapped whole for a FusedConvBnAct with the same children (checked on a probe input).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

from . import ops
from .modules import BackendAttribute, FoldCache, Stage, activation_name
from .reference import activation

# The attribute FusedStemConv sets on its output: (bn, act), the modules whose work that output already contains.
_APPLIED = "_ghostkernels_stem_applied"


def _applied_by(x: torch.Tensor):
    # Never while tracing: dynamo would have to reason about an attribute set on a tensor in eager code.
    if torch.compiler.is_compiling():
        return None
    return getattr(x, _APPLIED, None)


def _has_hooks(*modules: nn.Module) -> bool:
    if _module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _rebased(module: nn.Module, cls: type) -> nn.Module:
    """A new ``cls`` instance with ``module``'s attributes: the same Parameter and buffer objects in new dicts."""
    new = cls.__new__(cls)
    new.__dict__.update({k: copy.copy(v) if isinstance(v, (dict, set)) else v for k, v in module.__dict__.items()})
    return new


def _op_ready(x: torch.Tensor, training: bool, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: nn.Module,
              backend: str) -> bool:
    """Whether conv2d_act may stand in for conv -> bn -> act on x now (CPU inference, nothing traced or hooked)."""
    if training or bn.training or backend not in ("auto", "cpu"):
        return False
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16, torch.float64):
        return False
    if torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(
            p is not None and p.requires_grad for p in (conv.weight, conv.bias, bn.weight, bn.bias))):
        return False
    return not _has_hooks(conv, bn, act)


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

    def _attach(self, bn: BatchNormAfterFusedStem, act: ReLUAfterFusedStem, backend: str) -> None:
        # Plain attributes, not submodules: bn1 and act1 stay the parent's children (and state_dict keys).
        object.__setattr__(self, "_bn", bn)
        object.__setattr__(self, "_act", act)
        self.backend = backend
        self._fold_cache = FoldCache()
        self._stages = [Stage(self, bn)]
        self._depth = 0  # how many forwards of the parent are running

    # The parent's hooks (bound methods, so that copy.deepcopy of the network binds them to the copy's stem).
    def _enter_parent(self, module, args) -> None:
        if not torch.compiler.is_compiling():
            self._depth += 1

    def _leave_parent(self, module, args, output) -> None:
        if not torch.compiler.is_compiling():
            self._depth = max(0, self._depth - 1)

    def _op_applies(self, x: torch.Tensor) -> bool:
        return self._depth > 0 and _op_ready(x, self.training, self, self._bn, self._act, self._backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._op_applies(x):
            return super().forward(x)
        w, b = self._fold_cache.get(self._stages)
        y = torch.ops.ghostkernels.conv2d_act.default(x, w, b, self.stride[0], "relu")
        setattr(y, _APPLIED, (self._bn, self._act))
        return y


class StemNotFusable(ValueError):
    """conv_stem / bn1 / act1 that the op cannot stand in for; the message says why."""


def _check_conv_bn(conv_name: str, conv: nn.Module, bn_name: str, bn: nn.Module, max_in_channels: int | None):
    if type(conv) is not nn.Conv2d:
        raise StemNotFusable(f"{conv_name} is a {type(conv).__name__}, not a Conv2d")
    kh, kw = conv.kernel_size
    if conv.groups != 1 or kh != kw or kh % 2 != 1 or conv.dilation != (1, 1):
        raise StemNotFusable(f"{conv_name} (groups={conv.groups}, kernel_size={conv.kernel_size}, dilation="
                             f"{conv.dilation}) is not a dense convolution with a square odd kernel")
    if conv.padding != (kh // 2, kh // 2) or conv.padding_mode != "zeros":
        raise StemNotFusable(f"{conv_name} has padding {conv.padding} ({conv.padding_mode}), not zeros of {kh // 2}")
    if conv.stride not in ((1, 1), (2, 2)):
        raise StemNotFusable(f"{conv_name} has stride {conv.stride}; the op's is 1 or 2")
    if max_in_channels is not None and conv.in_channels > max_in_channels:
        raise StemNotFusable(f"{conv_name} has {conv.in_channels} input channels; the op's stem kernel takes at most "
                             f"{max_in_channels}")
    if type(bn) is not nn.BatchNorm2d or bn.running_mean is None or bn.running_var is None:
        raise StemNotFusable(f"{bn_name} is not a BatchNorm2d with running statistics")


def check_stem(conv: nn.Module, bn: nn.Module, act: nn.Module) -> None:
    """Raise StemNotFusable unless the three are what conv2d_act computes: a plain Conv2d (groups 1, square odd
    kernel, zero padding k//2, stride 1 or 2, no dilation, at most 4 input channels), a BatchNorm2d with running
    statistics, a ReLU; without hooks."""
    _check_conv_bn("conv_stem", conv, "bn1", bn, max_in_channels=4)
    if type(act) is not nn.ReLU:
        raise StemNotFusable(f"act1 is a {type(act).__name__}, not a ReLU")
    if _has_hooks(conv, bn, act):
        raise StemNotFusable("conv_stem, bn1 or act1 has forward hooks, which would see the fused output")


def _install(parent: nn.Module, backend: str):
    """Swap parent's conv_stem / bn1 / act1 for the fused ones; return what undo() needs."""
    old = (parent.conv_stem, parent.bn1, parent.act1)
    bn = _rebased(old[1], BatchNormAfterFusedStem)
    act = _rebased(old[2], ReLUAfterFusedStem)
    conv = _rebased(old[0], FusedStemConv)
    conv._attach(bn, act, backend)
    handles = (parent.register_forward_pre_hook(conv._enter_parent),
               parent.register_forward_hook(conv._leave_parent, always_call=True))
    parent.conv_stem, parent.bn1, parent.act1 = conv, bn, act
    return old, handles


def _undo(parent: nn.Module, installed) -> None:
    old, handles = installed
    for h in handles:
        h.remove()
    parent.conv_stem, parent.bn1, parent.act1 = old


def fuse_stem(parent: nn.Module, backend: str) -> bool:
    """Fuse ``parent``'s conv_stem / bn1 / act1 in place if the op computes them exactly and ``parent``'s output on a
    probe image does not change; return whether it did. Raises StemNotFusable naming what stands in the way."""
    conv, bn, act = parent.conv_stem, parent.bn1, parent.act1
    if isinstance(conv, FusedStemConv):
        conv.backend = backend
        return True
    check_stem(conv, bn, act)
    ops.load_library()
    gen = torch.Generator().manual_seed(0)  # private: fuse() must not consume the global RNG
    weight = conv.weight
    x = torch.randn(2, conv.in_channels, 64, 64, generator=gen).to(weight.dtype)
    flags = [(m, m.training) for m in parent.modules()]
    parent.eval()
    installed = None
    try:
        with torch.no_grad():
            try:
                before = parent(x)
                installed = _install(parent, backend)
                after = parent(x)
            except Exception as e:  # any failure: the network is not one whose stem the op can stand in for
                raise StemNotFusable(f"the network's forward failed on a [2, {conv.in_channels}, 64, 64] probe image "
                                     f"({type(e).__name__}: {e})") from e
        if not (isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor)
                and before.shape == after.shape):
            raise StemNotFusable("the network's output on a probe image is not one tensor of one shape")
        err = float((after.float() - before.float()).abs().max())
        scale = max(1.0, float(before.float().abs().max()))
        tol = 1e-3 if weight.dtype in (torch.float32, torch.float64) else 6e-2
        if not err <= tol * scale:
            raise StemNotFusable(f"the network's output changed by {err:.3g} on a probe image with the stem fused: "
                                 f"its forward does not apply act1(bn1(conv_stem(x)))")
    except StemNotFusable:
        if installed is not None:
            _undo(parent, installed)
        raise
    finally:
        for m, flag in flags:
            m.training = flag
        if installed is not None and parent.conv_stem is not installed[0][0]:
            # The new modules were copied from the old ones while in eval mode: give them the old ones' flags.
            for old_module, new_module in zip(installed[0], (parent.conv_stem, parent.bn1, parent.act1)):
                new_module.training = old_module.training
    return True


def conv_bn_act_layout(module: nn.Module) -> bool:
    """Whether ``module`` has exactly the children conv (Conv2d), bn1 (BatchNorm2d) and act1 (an activation of the
    op's set), the ConvBnAct shape; its forward is checked separately (FusedConvBnAct.from_module)."""
    kids = module._modules
    return (set(kids) == {"conv", "bn1", "act1"} and type(kids["conv"]) is nn.Conv2d
            and type(kids["bn1"]) is nn.BatchNorm2d and activation_name(kids["act1"]) is not None)


class FusedConvBnAct(BackendAttribute, nn.Module):
    """A ConvBnAct (children conv, bn1, act1; forward act1(bn1(conv(x)))) with the same children and state_dict. In
    CPU inference it runs ghostkernels::conv2d_act with the BatchNorm folded (cached as in FusedGhostModule);
    anywhere else (training, autograd, GPUs, autocast, torch.compile, hooks) its own layers."""

    @classmethod
    def from_module(cls, module: nn.Module, backend: str = "auto") -> FusedConvBnAct:
        """Share ``module``'s children; raises StemNotFusable unless conv2d_act computes it exactly."""
        if not conv_bn_act_layout(module):
            raise StemNotFusable(f"{type(module).__name__} is not a ConvBnAct (children conv, bn1, act1)")
        conv, bn, act = module.conv, module.bn1, module.act1
        # Any width: the op runs wide 1x1 convolutions on its GEMM path and other wide ones on ATen's convolution.
        _check_conv_bn("conv", conv, "bn1", bn, max_in_channels=None)
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        for name, child in module._modules.items():
            fused._modules[name] = child
        fused.training = module.training
        fused.act = activation_name(act)
        fused.backend = backend
        fused._fold_cache = FoldCache()
        fused._stages = [Stage(conv, bn)]
        fused._check_on_probe(module)
        return fused

    def _check_on_probe(self, module: nn.Module) -> None:
        conv = module.conv
        if conv.weight.device.type != "cpu":
            return  # the op never runs there; the forward is the module's own layers
        gen = torch.Generator().manual_seed(0)  # private: fuse() must not consume the global RNG
        x = torch.randn(2, conv.in_channels, 9, 11, generator=gen).to(conv.weight.dtype)
        flags = [(m, m.training) for m in module.modules()]
        module.eval()
        try:
            with torch.no_grad():
                try:
                    got = module(x)
                except Exception as e:  # whatever the forward raises, the op cannot stand in for it
                    raise StemNotFusable(f"its forward failed on a probe input ({type(e).__name__}: {e})") from e
                w, b = FoldCache.fold(self._stages)
                want = activation(self.act)(torch.nn.functional.conv2d(x, w, b, conv.stride, conv.padding))
        finally:
            for m, flag in flags:
                m.training = flag
        tol = 1e-3 if conv.weight.dtype in (torch.float32, torch.float64) else 6e-2
        if not (isinstance(got, torch.Tensor) and got.shape == want.shape
                and float((got.float() - want.float()).abs().max()) <= tol * max(1.0, float(want.abs().max()))):
            raise StemNotFusable("its forward does not compute act1(bn1(conv(x)))")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn, act = self.conv, self.bn1, self.act1
        if not _op_ready(x, self.training, conv, bn, act, self._backend):
            return act(bn(conv(x)))
        w, b = self._fold_cache.get(self._stages)
        return torch.ops.ghostkernels.conv2d_act.default(x, w, b, conv.stride[0], self.act)

    def extra_repr(self) -> str:
        return f"act={self.act!r}, backend={self.backend!r}"


def stem_parents(model: nn.Module):
    """(qualified name, module) of every module of ``model`` with conv_stem, bn1 and act1 children."""
    for name, module in model.named_modules():
        kids = module._modules
        if all(kids.get(k) is not None for k in ("conv_stem", "bn1", "act1")):
            yield name, module


__all__ = ["BatchNormAfterFusedStem", "FusedConvBnAct", "FusedStemConv", "ReLUAfterFusedStem", "StemNotFusable",
           "check_stem", "conv_bn_act_layout", "fuse_stem", "stem_parents"]
