"""Folding an inference-mode BatchNorm into the convolution in front of it, differentiably, and the cache of the
folded weights that every fused module keeps.

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

from typing import NamedTuple

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


# ---------------------------------------------------------------------------------------------------------------
# The fold cache
#
# Folded weights are cached between calls and recomputed only when a tensor they are computed from changes (another
# tensor object, an in-place update such as an optimizer step, which bumps ``Tensor._version``, new storage, dtype or
# device) or a BN's eps changes. (Not noticed: ``.data =`` swapping in a view of the same storage at the same address
# with another shape.) A cached fold never carries an autograd graph: when autograd is recording and a parameter
# requires grad, the fold is recomputed on every call. Under torch.compile the cache is skipped and the fold is
# traced into the graph (reading ``_version`` would break the graph).
# ---------------------------------------------------------------------------------------------------------------


class Stage(NamedTuple):
    """One conv -> [BatchNorm] step of a Ghost module (the activation is the module's ``act``)."""

    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None


def uses_batch_statistics(bn: nn.BatchNorm2d | None) -> bool:
    # The same rule as F.batch_norm's caller in nn.BatchNorm2d: batch statistics in training mode or without
    # running statistics.
    return bn is not None and (bn.training or bn.running_mean is None or bn.running_var is None)


def _fold_sources(stages) -> tuple[list[torch.Tensor], tuple[float, ...]]:
    """Every tensor the fold reads, and the BNs' eps (from the modules' _parameters and _buffers dicts: attribute
    access through nn.Module.__getattr__ is several times slower, and this runs on every call)."""
    out, eps = [], []
    for st in stages:
        params = st.conv._parameters
        out.append(params["weight"])
        if params.get("bias") is not None:
            out.append(params["bias"])
        if st.bn is not None:
            bp, bb = st.bn._parameters, st.bn._buffers
            out += [t for t in (bp.get("weight"), bp.get("bias"), bb.get("running_mean"), bb.get("running_var"))
                    if t is not None]
            eps.append(st.bn.eps)
    return out, tuple(eps)


def _fold_key(sources: list[torch.Tensor], grad_enabled: bool):
    """What decides the folded weights, or None when they must not be cached: a source that is part of this call's
    autograd graph, or an inference tensor (it has no version counter, so an in-place update could not be noticed).

    Per source: its identity (id() is safe: the cache entry keeps the sources alive, so no other tensor can take
    their ids), its version counter (in-place updates: optimizer steps, load_state_dict, ``mul_``) and its data_ptr
    (``.data =`` and ``module.to()``, which swap a parameter's storage without touching its version). This runs on
    every call of every fused module; at batch 1 its cost is a visible share of a block's time, hence one flat
    list comprehension."""
    if grad_enabled:
        for t in sources:
            if t.requires_grad:
                return None
    try:
        return [(id(t), t._version, t.data_ptr()) for t in sources]
    except RuntimeError:  # "Inference tensors do not track version counter"
        return None


class FoldCache:
    """The BN-folded weights of a list of Stages, recomputed only when a tensor they come from changes (see the
    comment above). One per fused module; a plain attribute, never state. ``frozen`` (set by freeze()): with
    autograd off, a cached fold is returned without checking its sources."""

    def __init__(self):
        self._entry = None  # (source tensors, key, folded weights)
        self.frozen = False

    @staticmethod
    def fold(stages) -> tuple[torch.Tensor, ...]:
        """(w, b) of every stage, flattened: w0, b0, w1, b1, ..."""
        return tuple(t for st in stages for t in fold_conv_bn(st.conv.weight, st.conv.bias, st.bn))

    def get(self, stages) -> tuple[torch.Tensor, ...]:
        """The folded weights of ``stages`` (as ``fold``), from the cache when still valid."""
        if torch.compiler.is_compiling():
            return self.fold(stages)
        if self.frozen and self._entry is not None and not torch.is_grad_enabled():
            return self._entry[2]
        sources, eps = _fold_sources(stages)
        grad_enabled = torch.is_grad_enabled()
        key = _fold_key(sources, grad_enabled)
        if key is None:
            if grad_enabled and any(t.requires_grad for t in sources):
                return self.fold(stages)  # part of this call's autograd graph: never cached
            with torch.no_grad():
                return self.fold(stages)
        key.append((eps, torch.is_inference_mode_enabled()))
        entry = self._entry
        if entry is not None and entry[1] == key:
            return entry[2]
        with torch.no_grad():
            folded = self.fold(stages)
        self._entry = (sources, key, folded)
        return folded


__all__ = ["FoldCache", "Stage", "fold_conv_bn", "uses_batch_statistics"]

