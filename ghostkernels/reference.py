"""The Ghost module's math written with plain PyTorch ops: the ``eager`` backend and the tests' reference.

out = cat(x1, x2)[:, :out_channels] with x1 = act(conv1x1(x, w_primary) + b_primary) and
x2 = act(depthwise_conv_kxk(x1, w_cheap, padding=k//2) + b_cheap). It runs as about five kernels and keeps every
intermediate for autograd: exactly what the fused op avoids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTS = ("identity", "relu", "relu6", "silu", "hardswish")


def activation(act: str):
    """The torch function for an activation name of the op contract."""
    table = {
        "identity": lambda t: t,
        "relu": F.relu,
        "relu6": F.relu6,
        "silu": F.silu,
        "hardswish": F.hardswish,
    }
    if act not in table:
        raise ValueError(f"ghostkernels: unknown act {act!r}; expected one of {', '.join(ACTS)}")
    return table[act]


def ghost_module_reference(x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act: str):
    f = activation(act)
    init = w_primary.shape[0]
    k = w_cheap.shape[-1]
    x1 = f(F.conv2d(x, w_primary, b_primary))
    x2 = f(F.conv2d(x1, w_cheap, b_cheap, padding=k // 2, groups=init))
    # The slice is a strided view; the contract returns a dense tensor in x's memory format.
    return torch.cat([x1, x2], dim=1)[:, :out_channels].contiguous(memory_format=output_memory_format(x))


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The contract's output format (mirrors csrc/ghost_module_check.cpp): channels_last iff x is
    channels_last-contiguous and not contiguous."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
