"""Installing a fused stem in its network: conv_stem / bn1 / act1 swapped together, checked on a probe image.

The stem's three layers are children of the network itself, not one module, so the swap changes the parent: its
three children become the fused stem's modules (ghostkernels.nn.FusedStemConv.from_modules) and it gets a forward
pre-hook and an always-called forward hook that tell the stem when a forward of the parent is running (the op runs
only there). Whether the parent's forward really applies ``act1(bn1(conv_stem(x)))`` is checked by running it on a
probe image before and after the swap (ghostkernels.nn.recognize.probe); the swap is undone unless the two agree.
"""

from __future__ import annotations

from torch import nn

from .. import ops
from ..nn.conv_bn_act import FusedStemConv
from ..nn.recognize import StemNotFusable, check_stem, probe


def _install(parent: nn.Module, backend: str):
    """Swap parent's conv_stem / bn1 / act1 for the fused ones; return what _undo() needs."""
    old = (parent.conv_stem, parent.bn1, parent.act1)
    conv, bn, act = FusedStemConv.from_modules(*old, backend=backend)
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
    probe image does not change; return True (an already fused stem gets ``backend``). Raises StemNotFusable naming
    what stands in the way, and leaves ``parent`` as it was."""
    install_stem(parent, backend)
    return True


def install_stem(parent: nn.Module, backend: str):
    """fuse_stem, returning what ``undo_stem`` needs to put the original stem back (None: it was already fused)."""
    conv, bn, act = parent.conv_stem, parent.bn1, parent.act1
    if isinstance(conv, FusedStemConv):
        conv.backend = backend
        return None
    check_stem(conv, bn, act)
    ops.load_library()
    installed = []
    outputs = []

    def swapped_forward(x):
        outputs.append(parent(x))  # before the swap: the expected output
        installed.append(_install(parent, backend))
        return parent(x)

    try:
        probe(parent, (2, conv.in_channels, 64, 64), conv.weight, lambda x, got: outputs[0], actual=swapped_forward,
              error=StemNotFusable, what="the network's forward",
              mismatch="the network's output changed by {err:.3g} on a probe image with the stem fused: its forward "
                       "does not apply act1(bn1(conv_stem(x)))")
    except StemNotFusable:
        if installed:
            _undo(parent, installed[0])
        raise
    # The new modules were made while the probe held the network in eval mode: give them the old ones' flags.
    for old_module, new_module in zip(installed[0][0], (parent.conv_stem, parent.bn1, parent.act1)):
        new_module.training = old_module.training
    return installed[0]


def undo_stem(parent: nn.Module, installed) -> None:
    """Put back the stem that install_stem replaced (its record ``installed``)."""
    if installed is not None:
        _undo(parent, installed)


__all__ = ["fuse_stem", "install_stem", "undo_stem"]
