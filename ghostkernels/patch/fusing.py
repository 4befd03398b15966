"""``fuse(model)``: swap, in place, every module of a model that a fused module can stand in for.

What is swapped (each decided by ghostkernels.nn.recognize: structure, then a probe input; never class names):

* Ghost modules, for FusedGhostModule (the primary_conv + cheap_operation layout: this package's GhostModule, the
  official huawei-noah GhostModule and GhostModuleV2 in mode 'original', timm's GhostModule, timm's GhostModuleV3
  after ``reparameterize()``) or FusedGhostConv (Ultralytics' GhostConv, before or after its own fuse()).
* With ``blocks=True``: GhostNet bottlenecks whose Ghost modules were fused, for FusedGhostBottleneck; ConvBnAct
  modules, for FusedConvBnAct; a CPU network's stem (ghostkernels.patch.stem) and head (FusedConvHead,
  FusedClassifier).

The replacements share the original layers (the same Parameter and buffer objects), so the model's state_dict keys
and values do not change and an optimizer built before fuse() keeps working. What looks like a candidate but
cannot be fused is left alone and named, with the reason, in one GhostFuseWarning; with ``strict=True`` a
NotFusableError is raised instead and the model is left as it was.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .. import ops
from ..nn.bottleneck import FusedGhostBottleneck
from ..nn.conv_bn_act import FusedConvBnAct, FusedStemConv
from ..nn.ghost_module import FusedGhostBase, FusedGhostConv, FusedGhostModule
from ..nn.head import FusedClassifier, FusedConvHead
from ..nn.recognize import (NotFusableError, bottleneck_layout, check_stem, classifier_fusable, conv_bn_act_layout,
                            conv_head_fusable, ghost_layout, has_hooks, head_parents, stem_parents)
from .stem import install_stem, undo_stem


class GhostFuseWarning(UserWarning):
    """fuse() left modules unfused (the message names each one and says why)."""


class _Refusals:
    """What fuse() could not fuse, in two groups (the warning's and the error's message lists both)."""

    def __init__(self):
        self.ghost: list[tuple[str, str]] = []  # Ghost modules and bottlenecks: (qualified name, reason)
        self.chains: list[tuple[str, str]] = []  # conv -> BatchNorm -> activation: stems and ConvBnAct

    def __bool__(self) -> bool:
        return bool(self.ghost or self.chains)

    def message(self) -> str:
        parts = []
        if self.ghost:
            lines = "\n".join(f"  {name}: {reason}" for name, reason in self.ghost)
            parts.append(f"ghostkernels.fuse: {len(self.ghost)} Ghost module(s) or bottleneck(s) cannot be fused and "
                         f"were left alone:\n{lines}")
        if self.chains:
            lines = "\n".join(f"  {name}: {reason}" for name, reason in self.chains)
            parts.append(f"ghostkernels.fuse: conv -> BatchNorm -> activation chains (the stem, ConvBnAct) left "
                         f"unfused:\n{lines}")
        return "\n".join(parts)


def _fused_ghost(module: nn.Module, layout: str, backend: str) -> FusedGhostBase:
    if layout == "sequential":
        return FusedGhostModule.from_module(module, backend=backend)
    return FusedGhostConv.from_module(module, backend=backend)


def fuse(model: nn.Module, backend: str = "auto", strict: bool = False, blocks: bool = True) -> nn.Module:
    """Replace, in place, every Ghost module of ``model`` that the fused op can compute; return ``model``.

    With ``blocks=True`` (the default) every GhostBottleneck whose Ghost modules were fused is then replaced too,
    by a FusedGhostBottleneck: on CPU tensors in inference the whole block runs as one op; elsewhere it runs the
    block's own forward with the fused Ghost modules. So are every ConvBnAct module (children ``conv``, ``bn1``,
    ``act1``) and a CPU network's stem (its ``conv_stem`` / ``bn1`` / ``act1`` children), for
    ghostkernels::conv2d_act, and a CPU network's head (its ``conv_head`` and ``classifier`` children), for
    ghostkernels::linear_act. ``blocks=False`` fuses the Ghost modules only.

    See the module docstring for what is recognized. Modules already fused get ``backend``. What looks like a
    candidate but cannot be fused (an attention gate, a primary kernel_size other than 1 or a stride other than 1,
    an activation outside the op's set, a GhostModuleV3 not reparameterized, a stem its network applies
    differently, ...) is left alone, and one GhostFuseWarning lists each such module by qualified name with the
    reason; with ``strict=True`` a NotFusableError (a ValueError) is raised instead and the model is left as it
    was. When ``model`` itself is a Ghost module, the replacement is returned (it shares the parameters).

    In eval mode the fused model's outputs equal the original's within rounding (the BN fold changes the order of
    operations); in train mode the replaced modules run their original layers (see FusedGhostModule).
    """
    if backend not in ops.BACKENDS:
        raise ValueError(f"ghostkernels.fuse: unknown backend {backend!r}; expected one of "
                         f"{', '.join(ops.BACKENDS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"ghostkernels.fuse: expected an nn.Module, got {type(model).__name__}")
    swaps: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, child name, replacement)
    refused = _Refusals()
    already: list[nn.Module] = []
    replacement_of: dict[int, nn.Module] = {}  # a module reachable from two parents is replaced once
    visited: set[int] = set()

    def consider(module: nn.Module, qualname: str) -> nn.Module | None:
        """The replacement of ``module``, or None (then its children are looked at)."""
        if isinstance(module, (FusedGhostBase, FusedGhostBottleneck, FusedConvBnAct)):
            already.append(module)
            return module
        layout = ghost_layout(module)
        if layout is None:
            if blocks and conv_bn_act_layout(module):
                try:
                    return FusedConvBnAct.from_module(module, backend)
                except NotFusableError as e:
                    refused.chains.append((qualname or type(module).__name__, str(e)))
                    return None
            return consider_block(module, qualname) if blocks and bottleneck_layout(module) else None
        try:
            return _fused_ghost(module, layout, backend)
        except NotFusableError as e:
            refused.ghost.append((qualname or type(module).__name__, str(e)))
            return None

    def consider_block(block: nn.Module, qualname: str) -> nn.Module:
        """A GhostBottleneck: its Ghost modules first (their swaps go into the block itself, so its own forward,
        which runs in training and on GPUs, uses them), then the block."""
        walk(block, f"{qualname}." if qualname else "")
        ghosts = {}
        for name in ("ghost1", "ghost2"):
            child = block._modules[name]
            ghosts[name] = replacement_of.get(id(child), child)
        if not all(isinstance(g, FusedGhostModule) for g in ghosts.values()):
            return block  # a Ghost module of it cannot be fused: already reported
        try:
            return FusedGhostBottleneck.from_module(block, backend=backend, ghost_modules=ghosts)
        except NotFusableError as e:
            refused.ghost.append((qualname or type(block).__name__,
                                  f"(a GhostBottleneck; its Ghost modules are fused) {e}"))
            return block

    def walk(parent: nn.Module, prefix: str) -> None:
        # parent._modules, not named_children(): that skips a module's second occurrence under the same parent.
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) in replacement_of:
                swaps.append((parent, name, replacement_of[id(child)]))
                continue
            if id(child) in visited:
                continue
            visited.add(id(child))
            new = consider(child, prefix + name)
            if new is None:
                walk(child, f"{prefix}{name}.")
            elif new is not child:
                replacement_of[id(child)] = new
                swaps.append((parent, name, new))

    root_replacement = consider(model, "")
    if root_replacement is None:
        walk(model, "")
    result = root_replacement if root_replacement is not None else model
    stems = list(_cpu_stems(result)) if blocks else []
    for name, parent in stems:  # the structural checks, before anything changes
        try:
            if not isinstance(parent.conv_stem, FusedStemConv):
                check_stem(parent.conv_stem, parent.bn1, parent.act1)
        except NotFusableError as e:
            refused.chains.append((_stem_name(name), str(e)))
    if strict and refused:
        raise NotFusableError(refused.message())

    undo = []
    for parent, name, new in swaps:
        undo.append((parent, name, parent._modules[name]))
        setattr(parent, name, new)
    installed = []
    for name, parent in stems:
        if any(n == _stem_name(name) for n, _ in refused.chains):
            continue
        try:
            installed.append((parent, install_stem(parent, backend)))
        except NotFusableError as e:
            refused.chains.append((_stem_name(name), str(e)))
    if strict and refused:  # a network whose forward disagreed on the probe: put everything back
        for parent, record in reversed(installed):
            undo_stem(parent, record)
        for parent, name, old in reversed(undo):
            setattr(parent, name, old)
        raise NotFusableError(refused.message())

    for module in already:
        module.backend = backend
    if blocks:
        for _, parent in list(head_parents(result)):
            fuse_head(parent, backend)
    if refused:
        warnings.warn(refused.message(), GhostFuseWarning, stacklevel=2)
    return result


def _stem_name(parent_name: str) -> str:
    return f"{parent_name + '.' if parent_name else ''}conv_stem/bn1/act1"


def _cpu_stems(model: nn.Module):
    """The stems the stem step looks at: on the CPU (the op is CPU-only; a stem elsewhere is left as it is,
    silently)."""
    for name, parent in stem_parents(model):
        weight = getattr(parent.conv_stem, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.device.type == "cpu":
            yield name, parent


def fuse_head(parent: nn.Module, backend: str) -> list[str]:
    """Swap ``parent``'s conv_head and classifier, in place, for FusedConvHead / FusedClassifier where each is a
    plain layer of the kind linear_act computes, on the CPU, without hooks (already fused ones get ``backend``);
    return the names of those swapped or updated. The replacements compute the same function as the originals, so
    no probe is run."""
    done = []
    for name, fusable, cls in (("conv_head", conv_head_fusable, FusedConvHead),
                               ("classifier", classifier_fusable, FusedClassifier)):
        old = parent._modules.get(name)
        if isinstance(old, cls):
            old.backend = backend
        elif not (fusable(old) and old.weight.device.type == "cpu" and not has_hooks(old)):
            continue
        else:
            setattr(parent, name, cls.from_module(old, backend))
        done.append(name)
    return done


__all__ = ["GhostFuseWarning", "fuse", "fuse_head"]
