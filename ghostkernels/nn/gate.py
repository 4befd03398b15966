"""When a fused module runs a CPU inference op instead of its own layers: one rule for all of them.

The inference ops (ghost_bottleneck, conv2d_act, linear_act; chain for a frozen network) have no backward and no
GPU kernel, and they compute several layers at once. A fused module may therefore call one only where that is
invisible: the result must be what its layers would return, and nothing may miss a call it expects. The rule,
shared by FusedGhostBottleneck, FusedConvBnAct, the fused stem, FusedConvHead / FusedClassifier and a frozen
network's chain (ghostkernels.patch.frozen):

* backend "auto" or "cpu", the module (and every BatchNorm the op folds) in eval mode;
* x a CPU tensor of an op dtype (float32, bfloat16, float64) equal to the weights' dtype (a mismatch gets the
  layers' own error message);
* nothing needs a gradient: autograd off, or neither x nor any weight requires grad;
* no CPU autocast (the layers' autocast rules decide the dtypes there);
* while traced (torch.compile, torch.export), only where the module asks for its op in graphs (``traced_as_op``):
  FusedGhostBottleneck does, because exported graphs then hold one ghost_bottleneck node per block, which AOTInductor
  runs and ONNX lowers (ghostkernels.export); the others trace their layers (conv2d_act and linear_act have no ONNX
  lowering, and the fused stem marks its output with a Python attribute that a graph cannot carry);
* no forward hook or pre-hook on a module whose forward the op stands in for (it would not run), nor a global one.

The hook check runs on every call, so it is cheap: ``HookWatch`` looks at the modules' hook dicts again only when a
hook was registered anywhere since it last looked (every registration advances ``RemovableHandle.next_id``) or when
it last found one (a removal does not advance the counter).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module_globals
from torch.utils.hooks import RemovableHandle

from .. import ops

OP_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def checked_backend(owner: str, value: str) -> str:
    """``value`` if it is one of ops.BACKENDS (else ValueError naming ``owner``); the C++ library is loaded now for
    the backends that use it, so that a later torch.compile never has to build it."""
    if value not in ops.BACKENDS:
        raise ValueError(f"{owner}: unknown backend {value!r}; expected one of {', '.join(ops.BACKENDS)}")
    if value in ("auto", "cpu", "cuda"):
        ops.load_library()
    return value


class BackendAttribute:
    """The ``backend`` attribute of the fused modules: one of ops.BACKENDS, checked on assignment."""

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = checked_backend(type(self).__name__, value)


def global_hooks_registered() -> bool:
    return bool(_module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks)


class HookWatch:
    """Whether any of a fixed list of modules has a forward hook or pre-hook (see the module docstring for why it is
    cheap). Kept by the module that owns the list; copy.deepcopy copies it with the modules."""

    def __init__(self, modules):
        self.modules = list(modules)
        self._seen_id = -1  # RemovableHandle.next_id when the modules were last looked at
        self._hooked = True

    def hooked(self) -> bool:
        next_id = RemovableHandle.next_id
        if next_id != self._seen_id or self._hooked:
            self._hooked = any(m._forward_hooks or m._forward_pre_hooks for m in self.modules)
            self._seen_id = next_id
        return self._hooked


class CpuInferenceGate:
    """The rule of the module docstring for one fused module. ``modules``: every module whose parameters the op
    reads (none of them may need a gradient; parameters are read live on each call, so a replaced Parameter is
    seen) and whose forward the op stands in for (hook check; its BatchNorms must be in eval mode); ``weight_of``:
    the module whose ``weight`` has the weights' dtype."""

    def __init__(self, weight_of: nn.Module, modules, *, traced_as_op: bool = False):
        self.weight_of = weight_of
        self.modules = list(modules)
        self.batch_norms = [m for m in self.modules if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.hooks = HookWatch(self.modules)
        self.traced_as_op = traced_as_op

    def _needs_grad(self, x: torch.Tensor) -> bool:
        if x.requires_grad:
            return True
        return any(p is not None and p.requires_grad for m in self.modules for p in m._parameters.values())

    def open(self, x, training: bool, backend: str) -> bool:
        """Whether the op may stand in for the module's layers on ``x`` now."""
        if training or backend not in ("auto", "cpu") or not isinstance(x, torch.Tensor):
            return False
        if x.device.type != "cpu" or x.dtype not in OP_DTYPES:
            return False
        weight = self.weight_of._parameters["weight"]
        if x.dtype != weight.dtype or weight.device.type != "cpu":
            return False
        for bn in self.batch_norms:
            if bn.training:
                return False
        if torch.is_autocast_enabled("cpu"):
            return False
        if torch.is_grad_enabled() and self._needs_grad(x):
            return False
        if global_hooks_registered():
            return False
        if torch.compiler.is_compiling():
            # No cached hook state while tracing: the graph must not depend on (or write) the watch's counters.
            return self.traced_as_op and not any(m._forward_hooks or m._forward_pre_hooks for m in self.modules)
        return not self.hooks.hooked()


__all__ = ["BackendAttribute", "CpuInferenceGate", "HookWatch", "OP_DTYPES", "checked_backend",
           "global_hooks_registered"]
