"""The Triton ops' implementation in plain PyTorch ops: their CPU kernel (without the interpreter) and the
implementation traced for tensors that hold no data (fake/meta tensors on the CPU path, see op.py).

Forward: ghostkernels.ops.reference, copied into a tensor of the op's output memory format. Backward: the chain rule
written out with torch.nn.grad's convolution gradients (no autograd graph, so it traces as plain ops):
  gz2 = g[:, init:] * act'(z2), grad b_c = sum gz2, grad w_c = conv2d_weight(x1, gz2), gx1 = g[:, :init] +
  conv2d_input(w_c, gz2), gz1 = gx1 * act'(z1), grad b_p = sum gz1, grad w_p = conv2d_weight(x, gz1),
  grad x = conv2d_input(w_p, gz1); channels sliced off by out_channels get zero gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.reference import activation, ghost_module_reference


def activation_derivative(act: str, z: torch.Tensor) -> torch.Tensor:
    """d act / dz at z, with PyTorch's conventions at the kinks (as tile_math.act_derivative)."""
    if act == "identity":
        return torch.ones_like(z)
    if act == "relu":
        return (z > 0).to(z.dtype)
    if act == "relu6":
        return ((z > 0) & (z < 6)).to(z.dtype)
    if act == "silu":
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    if act == "hardswish":
        return torch.where(z <= -3, torch.zeros_like(z), torch.where(z < 3, z / 3 + 0.5, torch.ones_like(z)))
    raise ValueError(f"ghostkernels: unknown act {act!r}")


def forward_into(out, x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act: str):
    out.copy_(ghost_module_reference(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act))
    return out


def backward(grad_out, x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act: str,
             grad_x_format: torch.memory_format):
    f = activation(act)
    init = w_primary.shape[0]
    k = w_cheap.shape[-1]
    z1 = F.conv2d(x, w_primary, b_primary)
    x1 = f(z1)
    z2 = F.conv2d(x1, w_cheap, b_cheap, padding=k // 2, groups=init)
    n_primary = min(out_channels, init)
    g1 = torch.zeros_like(z1)
    g1[:, :n_primary] = grad_out[:, :n_primary]
    g2 = torch.zeros_like(z2)
    if out_channels > init:
        g2[:, :out_channels - init] = grad_out[:, init:]
    gz2 = g2 * activation_derivative(act, z2)
    grad_bc = gz2.sum((0, 2, 3))
    grad_wc = torch.nn.grad.conv2d_weight(x1, w_cheap.shape, gz2, padding=k // 2, groups=init)
    gx1 = g1 + torch.nn.grad.conv2d_input(x1.shape, w_cheap, gz2, padding=k // 2, groups=init)
    gz1 = gx1 * activation_derivative(act, z1)
    grad_bp = gz1.sum((0, 2, 3))
    grad_wp = torch.nn.grad.conv2d_weight(x, w_primary.shape, gz1)
    grad_x = torch.nn.grad.conv2d_input(x.shape, w_primary, gz1).contiguous(memory_format=grad_x_format)
    return grad_x, grad_wp, grad_bp, grad_wc, grad_bc
