"""The Triton train-mode BatchNorm passes in plain PyTorch ops: their body where the kernels cannot run (CPU tensors
without the interpreter; fake, meta and functional tensors, i.e. torch.compile/export tracing the pass ops and
opcheck), as torch_math is for the Ghost-module op. Each function is the formula of its pass's schema in
csrc/ghost_module.cpp, computed in float32 (the stats dtype), returning tensors of the kernels' dtypes, shapes and
memory formats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.reference import activation
from ..ops.validation import output_memory_format
from .torch_math import activation_derivative


def _v(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


def _stage(z, stage):
    """(xhat, y) of one BN stage (mean, invstd, weight, bias) applied to z."""
    mean, invstd, weight, bias = stage
    xh = (z - _v(mean)) * _v(invstd)
    return xh, xh * _v(weight) + _v(bias)


def _dwconv(t, w_cheap):
    return F.conv2d(t, w_cheap, padding=w_cheap.shape[-1] // 2, groups=t.shape[1])


def _moments(z):
    return z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)


def conv1x1_stats(x, w_primary):
    z1 = F.conv2d(x.float(), w_primary).to(x.dtype).contiguous(memory_format=output_memory_format(x))
    return (z1, *_moments(z1.float()))


def cheap_stats(z1, stage1, w_cheap, act: str):
    x1 = activation(act)(_stage(z1.float(), stage1)[1])
    return _moments(_dwconv(x1, w_cheap))


def forward_out(z1, stage1, w_cheap, stage2, out_channels: int, act: str):
    f = activation(act)
    x1 = f(_stage(z1.float(), stage1)[1])
    x2 = f(_stage(_dwconv(x1, w_cheap), stage2)[1])
    out = torch.cat([x1, x2], 1)[:, :out_channels]
    return out.to(z1.dtype).contiguous(memory_format=output_memory_format(z1))


def _kept(grad_out, init: int, cheap: int):
    """grad_out split into the primary and cheap halves at full width, zero for channels past the slice."""
    n, oc, h, w = grad_out.shape
    g = grad_out.float()
    gp = F.pad(g[:, :min(oc, init)], (0, 0, 0, 0, 0, init - min(oc, init)))
    gc = F.pad(g[:, init:], (0, 0, 0, 0, 0, cheap - max(0, oc - init)))
    return gp, gc


def backward_reduce(grad_out, z1, stage1, w_cheap, stage2, act: str):
    init, cheap = z1.shape[1], w_cheap.shape[0]
    f = activation(act)
    xh1, y1 = _stage(z1.float(), stage1)
    a1 = activation_derivative(act, y1)
    z2 = _dwconv(f(y1), w_cheap)
    xh2, y2 = _stage(z2, stage2)
    gp, gc = _kept(grad_out, init, cheap)
    live = torch.zeros(cheap, dtype=torch.bool, device=z1.device)
    live[:max(0, grad_out.shape[1] - init)] = True
    g2 = gc * activation_derivative(act, y2)
    da = _dwconv(a1, w_cheap) * _v(live)
    dq = _dwconv(a1 * xh1, w_cheap) * _v(live)
    xh2 = xh2 * _v(live)
    dims = (0, 2, 3)
    sums_p = torch.stack([(a1 * gp).sum(dims), (a1 * xh1 * gp).sum(dims)])
    sums_c = torch.stack([g2.sum(dims), (g2 * xh2).sum(dims), (da * g2).sum(dims), da.sum(dims),
                          (da * xh2).sum(dims), (dq * g2).sum(dims), dq.sum(dims), (dq * xh2).sum(dims)])
    return sums_p, sums_c


def backward(grad_out, x, z1, w_primary, stage1, mdy1, mdyx1, w_cheap, stage2, mdy2, mdyx2, act: str):
    init, cheap, k = z1.shape[1], w_cheap.shape[0], w_cheap.shape[-1]
    f = activation(act)
    xh1, y1 = _stage(z1.float(), stage1)
    x1 = f(y1)
    xh2, y2 = _stage(_dwconv(x1, w_cheap), stage2)
    gp, gc = _kept(grad_out, init, cheap)
    live = torch.zeros(cheap, dtype=torch.bool, device=z1.device)
    live[:max(0, grad_out.shape[1] - init)] = True
    dz2 = _v(stage2[1] * stage2[2]) * (gc * activation_derivative(act, y2) - _v(mdy2) - xh2 * _v(mdyx2)) * _v(live)
    g1 = gp + torch.nn.grad.conv2d_input(x1.shape, w_cheap, dz2, padding=k // 2, groups=init)
    dz1 = _v(stage1[1] * stage1[2]) * (g1 * activation_derivative(act, y1) - _v(mdy1) - xh1 * _v(mdyx1))
    grad_wc = torch.nn.grad.conv2d_weight(x1, w_cheap.shape, dz2, padding=k // 2, groups=init)
    xf = x.float()
    grad_wp = torch.nn.grad.conv2d_weight(xf, w_primary.shape, dz1)
    grad_x = torch.nn.grad.conv2d_input(xf.shape, w_primary, dz1)
    return grad_x.to(x.dtype).contiguous(memory_format=output_memory_format(x)), grad_wp.contiguous(), grad_wc
