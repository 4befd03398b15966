"""The ops' math written with plain PyTorch ops: the ``eager`` backend and the tests' reference.

out = cat(x1, x2)[:, :out_channels] with x1 = act(conv1x1(x, w_primary) + b_primary) and
x2 = act(depthwise_conv_kxk(x1, w_cheap, padding=k//2) + b_cheap). It runs as about five kernels and keeps every
intermediate for autograd: exactly what the fused op avoids. GhostNetV2's gated Ghost module multiplies that by
the nearest-upsampled DFC attention map of its input (``dfc_gate_reference``, ``ghost_module_gated_reference``).
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


def ghost_module_bn_train_reference(x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, eps_primary: float,
                                    w_cheap, b_cheap, bn_weight_cheap, bn_bias_cheap, eps_cheap: float,
                                    out_channels: int, act: str):
    """The Ghost module in training with batch-statistics BatchNorm, as its layers compute it: (out, mean1, var1,
    mean2, var2), each BN's batch mean and biased variance over (N, H, W) of its conv's output (bias included)."""
    f = activation(act)
    init, k = w_primary.shape[0], w_cheap.shape[-1]
    z1 = F.conv2d(x, w_primary, b_primary)
    x1 = f(F.batch_norm(z1, None, None, bn_weight_primary, bn_bias_primary, True, 0.0, eps_primary))
    z2 = F.conv2d(x1, w_cheap, b_cheap, padding=k // 2, groups=init)
    x2 = f(F.batch_norm(z2, None, None, bn_weight_cheap, bn_bias_cheap, True, 0.0, eps_cheap))
    out = torch.cat([x1, x2], dim=1)[:, :out_channels].contiguous(memory_format=output_memory_format(x))
    moments = [m for z in (z1, z2) for m in (z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False))]
    return (out, *moments)


def dfc_gate_reference(x, w_reduce, b_reduce, w_h, b_h, w_v, b_v):
    """GhostNetV2's DFC attention map, BatchNorms folded: sigmoid(dw_v(dw_h(conv1x1(avg_pool2x2(x))))).

    avg_pool2d(x, 2, 2) floors odd sizes (a 7x7 input pools to 3x3); conv1x1 is w_reduce [O, C, 1, 1] + b_reduce;
    dw_h the depthwise (1, kh) conv w_h [O, 1, 1, kh] + b_h, zero-padded by kh//2 columns; dw_v the depthwise (kv, 1)
    conv w_v [O, 1, kv, 1] + b_v, padded by kv//2 rows. The map is [N, O, H//2, W//2] in x's memory format."""
    o = w_reduce.shape[0]
    z = F.conv2d(F.avg_pool2d(x, 2, 2), w_reduce, b_reduce)
    z = F.conv2d(z, w_h, b_h, padding=(0, w_h.shape[-1] // 2), groups=o)
    z = F.conv2d(z, w_v, b_v, padding=(w_v.shape[-2] // 2, 0), groups=o)
    return torch.sigmoid(z).contiguous(memory_format=output_memory_format(x))


def upsample_nearest(gate: torch.Tensor, size) -> torch.Tensor:
    """F.interpolate(gate, size, mode='nearest'): output row i reads gate row min(floor(i * (in / out)), in - 1)
    (in / out in float32), columns alike; a 3x3 map upsampled to 7x7 reads rows 0, 0, 0, 1, 1, 2, 2."""
    return F.interpolate(gate, size=tuple(size), mode="nearest")


def ghost_module_gated_reference(x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act: str, gate):
    """ghost_module(...) * upsample_nearest(gate, (H, W)): both halves multiplied by the map (gate [N, out_channels,
    Hg, Wg])."""
    out = ghost_module_reference(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    return (out * upsample_nearest(gate, out.shape[-2:])).contiguous(memory_format=output_memory_format(x))


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The contract's output format (mirrors csrc/ghost_module_check.cpp): channels_last iff x is
    channels_last-contiguous and not contiguous."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """relu6(x + 3) / 6: GhostNet's squeeze-excite gate."""
    return F.relu6(x + 3.0) / 6.0


def ghost_bottleneck_reference(x, ghost1, mid_channels: int, ghost2, out_channels: int, act: str = "relu",
                               stride: int = 1, dw=None, se=None, shortcut=None, gate=None):
    """GhostNet's bottleneck with folded BatchNorms (the contract of ghostkernels::ghost_bottleneck, and with
    ``gate`` that of ghost_bottleneck_gated, GhostNetV2's block):

        y = ghost_module(x, *ghost1, mid_channels, act)        (gate: ghost_module_gated with dfc_gate(x, *gate))
        y = conv2d(y, *dw, stride, padding k//2, groups=mid)            if dw (given exactly when stride == 2)
        y = y * hard_sigmoid(conv1x1(relu(conv1x1(mean_hw(y), se[0:2])), se[2:4]))   if se
        out = ghost_module(y, *ghost2, out_channels, "identity") + (x if shortcut is None else
              conv1x1(conv2d(x, *shortcut[0:2], stride, padding k//2, groups=C), *shortcut[2:4]))
    """
    if gate is None:
        y = ghost_module_reference(x, *ghost1, mid_channels, act)
    else:
        y = ghost_module_gated_reference(x, *ghost1, mid_channels, act, dfc_gate_reference(x, *gate))
    if dw is not None:
        w, b = dw
        y = F.conv2d(y, w, b, stride, w.shape[-1] // 2, 1, y.shape[1])
    if se is not None:
        rw, rb, ew, eb = se
        s = F.relu(F.conv2d(y.mean((2, 3), keepdim=True), rw, rb))
        y = y * hard_sigmoid(F.conv2d(s, ew, eb))
    out = ghost_module_reference(y, *ghost2, out_channels, "identity")
    if shortcut is None:
        return out + x
    dw_w, dw_b, pw_w, pw_b = shortcut
    s = F.conv2d(x, dw_w, dw_b, stride, dw_w.shape[-1] // 2, 1, x.shape[1])
    return (out + F.conv2d(s, pw_w, pw_b)).contiguous(memory_format=output_memory_format(x))
