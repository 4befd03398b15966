"""Activation modules and the ops' activation names (ghostkernels.ops.reference.ACTS), both ways."""

from __future__ import annotations

from torch import nn

from ..ops.reference import ACTS

# Activation modules the ops can run, by exact type (a subclass may override forward). An empty nn.Sequential is the
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


__all__ = ["activation_module", "activation_name"]
