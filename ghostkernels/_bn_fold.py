"""Folding an inference-mode BatchNorm into the convolution in front of it, differentiably.

In inference mode ``bn(conv(x))`` is an affine map per output channel o:

    gamma_o * (conv(x)_o + b_o - mean_o) / sqrt(var_o + eps) + beta_o

which is the same convolution with

    s_o  = gamma_o / sqrt(var_o + eps)
    w'_o = w_o * s_o
    b'_o = (b_o - mean_o) * s_o + beta_o          (b_o = 0 for a convolution without bias)

Everything here is ordinary autograd-tracked tensor math on the live parameters, so gradients flow from w', b'
back to the convolution's weight and bias and to the BatchNorm's affine parameters (gamma, beta): training with
frozen BN statistics through a folded convolution works. The running statistics are buffers and get no gradient.

Numerics: 1/sqrt(var + eps) and the products are computed in float32 at least (float64 stays float64) and only the
results are rounded to the weight's dtype. Folding directly in bfloat16 would round s (8-bit mantissa) before the
multiplication and again after it; that error lands on every output of the layer.
"""

from __future__ import annotations

import torch
from torch import nn


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def fold_conv_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d | None):
    """(w', b') of ``conv`` followed by the inference-mode ``bn`` (see the module docstring).

    ``bn=None`` means no normalization: the weight is returned as it is and the bias (zeros when the convolution
    has none) as the folded bias. ``bn`` must hold running statistics; a BatchNorm without them normalizes with the
    batch's statistics, which no folded weight can reproduce.
    """
    out_channels = weight.shape[0]
    if bn is None:
        if bias is None:
            bias = torch.zeros(out_channels, dtype=weight.dtype, device=weight.device)
        return weight, bias
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("ghostkernels: cannot fold a BatchNorm2d without running statistics "
                         "(track_running_stats=False): it always normalizes with the batch's statistics")
    if bn.num_features != out_channels:
        raise ValueError(f"ghostkernels: BatchNorm2d has {bn.num_features} features but the convolution in front of "
                         f"it has {out_channels} output channels")
    acc = _compute_dtype(weight.dtype)
    inv_std = torch.rsqrt(bn.running_var.to(acc) + bn.eps)
    scale = inv_std if bn.weight is None else bn.weight.to(acc) * inv_std
    shift = -bn.running_mean.to(acc) if bias is None else bias.to(acc) - bn.running_mean.to(acc)
    folded_bias = shift * scale
    if bn.bias is not None:
        folded_bias = folded_bias + bn.bias.to(acc)
    folded_weight = weight.to(acc) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return folded_weight.to(weight.dtype), folded_bias.to(weight.dtype)


__all__ = ["fold_conv_bn"]
