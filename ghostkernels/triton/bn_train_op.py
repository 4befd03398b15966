"""torch.library registration of the Triton train-mode BatchNorm: the five passes and the composite op.

* The passes, ghostkernels::ghost_bn_{conv1x1_stats, cheap_stats, forward_out, backward_reduce, backward}_triton, are
  torch.library.triton_op with the schemas of the C++ passes (csrc/ghost_module.cpp) and the dispatch of op.py:
  the kernels of bn_train_kernels (through wrap_triton on the GPU, called directly under the interpreter), or
  bn_train_math's plain PyTorch where they cannot run (CPU without the interpreter; fake/meta/functional tensors
  under it). triton_op registers each function as its own fake kernel.
* ghostkernels::ghost_module_bn_train_triton and ghostkernels::ghost_module_bn_train_triton_backward: the schemas of
  ghost_module_bn_train and its backward, as torch.library.custom_op whose kernels are ghostkernels.ops.train_bn's
  forward and backward composed of the Triton passes (``passes()``), with the same fakes and autograd as the C++
  op (ghostkernels.ops.registration): torch.compile and torch.export see one opaque op per Ghost module and one for
  its backward, as on the CPU, because the statistics must be combined (all-gathered under SyncBatchNorm) between
  the passes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.library import triton_op

from ..ops import train_bn
from ..ops.reference import ACTS
from ..ops.registration import (bn_train_setup_context, make_bn_train_backward, make_bn_train_fakes,
                                no_backward)
from ..ops.validation import (BN_CHEAP_NAMES, BN_PRIMARY_NAMES, check_bn_backward_inputs, check_bn_conv1x1_inputs,
                              check_bn_grad_out, check_bn_train_inputs, check_bn_z1_inputs, output_memory_format)
from . import bn_train_kernels as kernels
from . import bn_train_math, configs
from .op import INTERPRETED, _holds_data, _image_span, _launcher, _runs_kernels

Tensor = torch.Tensor
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_PRIMARY, _CHEAP = BN_PRIMARY_NAMES, BN_CHEAP_NAMES


def check_dtype(op: str, x: Tensor) -> None:
    """The Triton kernels' dtypes (statistics in float32); bfloat16 not under the interpreter (numpy has none)."""
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: the Triton kernels support float16, bfloat16 and float32, got {x.dtype} (use "
                        f"backend='cpu' or 'eager' for float64)")
    if INTERPRETED and x.dtype == torch.bfloat16 and _holds_data(x):
        raise TypeError(f"{op}: bfloat16 cannot run under TRITON_INTERPRET=1 (numpy has no bfloat16); use "
                        f"float16/float32 there, or a GPU")
    if _image_span(x) >= 2 ** 31:
        raise ValueError(f"{op}: one image spans {_image_span(x)} elements; the Triton kernels need < 2**31")


def _block_i(init: int) -> int:
    return configs.choose_block_i(int(init))


def _empty_stats(like: Tensor, n: int):
    """(mean, var) of channels that saw no value: NaN, as BatchNorm's statistics of an empty batch."""
    nan = torch.full((n,), float("nan"), dtype=torch.float32, device=like.device)
    return nan, nan.clone()


@triton_op("ghostkernels::ghost_bn_conv1x1_stats_triton", mutates_args=())
def bn_conv1x1_stats_triton(x: Tensor, w_primary: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    op = "ghostkernels::ghost_bn_conv1x1_stats_triton"
    init = check_bn_conv1x1_inputs(op, x, w_primary)
    check_dtype(op, x)
    if not _runs_kernels(x):
        return bn_train_math.conv1x1_stats(x, w_primary)
    n, _, h, w = x.shape
    z1 = torch.empty((n, init, h, w), dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    if n * h * w == 0:
        return (z1, *_empty_stats(x, init))
    mean, var = kernels.conv1x1_stats(_launcher, x, w_primary, _block_i(init), INTERPRETED,
                                      configs.fp32_dot_precision(), z1)
    return z1, mean, var


@triton_op("ghostkernels::ghost_bn_cheap_stats_triton", mutates_args=())
def bn_cheap_stats_triton(z1: Tensor, mean_primary: Tensor, invstd_primary: Tensor, weight_primary: Tensor,
                          bias_primary: Tensor, w_cheap: Tensor, act: str) -> tuple[Tensor, Tensor]:
    op = "ghostkernels::ghost_bn_cheap_stats_triton"
    stage1 = (mean_primary, invstd_primary, weight_primary, bias_primary)
    init, mult = check_bn_z1_inputs(op, z1, w_cheap, -1, act, primary=zip(_PRIMARY, stage1))
    check_dtype(op, z1)
    if not _runs_kernels(z1):
        return bn_train_math.cheap_stats(z1, stage1, w_cheap, act)
    if z1.numel() == 0:
        return _empty_stats(z1, init * mult)
    return kernels.cheap_stats(_launcher, z1, stage1, w_cheap, ACTS.index(act), _block_i(init), INTERPRETED)


@triton_op("ghostkernels::ghost_bn_forward_out_triton", mutates_args=())
def bn_forward_out_triton(z1: Tensor, mean_primary: Tensor, invstd_primary: Tensor, weight_primary: Tensor,
                          bias_primary: Tensor, w_cheap: Tensor, mean_cheap: Tensor, invstd_cheap: Tensor,
                          weight_cheap: Tensor, bias_cheap: Tensor, out_channels: int, act: str) -> Tensor:
    op = "ghostkernels::ghost_bn_forward_out_triton"
    stage1 = (mean_primary, invstd_primary, weight_primary, bias_primary)
    stage2 = (mean_cheap, invstd_cheap, weight_cheap, bias_cheap)
    init, _ = check_bn_z1_inputs(op, z1, w_cheap, out_channels, act, primary=zip(_PRIMARY, stage1),
                                 cheap=zip(_CHEAP, stage2))
    check_dtype(op, z1)
    if not _runs_kernels(z1):
        return bn_train_math.forward_out(z1, stage1, w_cheap, stage2, out_channels, act)
    n, _, h, w = z1.shape
    if out_channels * h * w >= 2 ** 31:
        raise ValueError(f"{op}: one image of the output has {out_channels * h * w} elements; the Triton kernels "
                         "need < 2**31")
    out = torch.empty((n, out_channels, h, w), dtype=z1.dtype, device=z1.device,
                      memory_format=output_memory_format(z1))
    if out.numel() == 0:
        return out
    return kernels.forward_out(_launcher, z1, stage1, w_cheap, stage2, out, ACTS.index(act), _block_i(init),
                               INTERPRETED)


@triton_op("ghostkernels::ghost_bn_backward_reduce_triton", mutates_args=())
def bn_backward_reduce_triton(grad_out: Tensor, z1: Tensor, mean_primary: Tensor, invstd_primary: Tensor,
                              weight_primary: Tensor, bias_primary: Tensor, w_cheap: Tensor, mean_cheap: Tensor,
                              invstd_cheap: Tensor, weight_cheap: Tensor, bias_cheap: Tensor, out_channels: int,
                              act: str) -> tuple[Tensor, Tensor]:
    op = "ghostkernels::ghost_bn_backward_reduce_triton"
    stage1 = (mean_primary, invstd_primary, weight_primary, bias_primary)
    stage2 = (mean_cheap, invstd_cheap, weight_cheap, bias_cheap)
    init, mult = check_bn_z1_inputs(op, z1, w_cheap, out_channels, act, primary=zip(_PRIMARY, stage1),
                                    cheap=zip(_CHEAP, stage2))
    check_bn_grad_out(op, grad_out, z1, out_channels)
    check_dtype(op, z1)
    check_dtype(op, grad_out)
    if not _runs_kernels(z1):
        return bn_train_math.backward_reduce(grad_out, z1, stage1, w_cheap, stage2, act)
    if z1.numel() == 0:
        return (torch.zeros((2, init), dtype=torch.float32, device=z1.device),
                torch.zeros((8, init * mult), dtype=torch.float32, device=z1.device))
    return kernels.backward_reduce(_launcher, grad_out, z1, stage1, w_cheap, stage2, ACTS.index(act), _block_i(init),
                                   INTERPRETED)


@triton_op("ghostkernels::ghost_bn_backward_triton", mutates_args=())
def bn_backward_triton(grad_out: Tensor, x: Tensor, z1: Tensor, w_primary: Tensor, mean_primary: Tensor,
                       invstd_primary: Tensor, weight_primary: Tensor, bias_primary: Tensor, mean_dy_primary: Tensor,
                       mean_dy_xhat_primary: Tensor, w_cheap: Tensor, mean_cheap: Tensor, invstd_cheap: Tensor,
                       weight_cheap: Tensor, bias_cheap: Tensor, mean_dy_cheap: Tensor, mean_dy_xhat_cheap: Tensor,
                       out_channels: int, act: str) -> tuple[Tensor, Tensor, Tensor]:
    op = "ghostkernels::ghost_bn_backward_triton"
    stage1 = (mean_primary, invstd_primary, weight_primary, bias_primary)
    stage2 = (mean_cheap, invstd_cheap, weight_cheap, bias_cheap)
    init = check_bn_backward_inputs(op, grad_out, x, z1, w_primary, stage1 + (mean_dy_primary, mean_dy_xhat_primary),
                                    w_cheap, stage2 + (mean_dy_cheap, mean_dy_xhat_cheap), out_channels, act)
    n, _, h, w = x.shape
    for t in (x, z1, grad_out):
        check_dtype(op, t)
    fmt = output_memory_format(x)
    if not _runs_kernels(x):
        return bn_train_math.backward(grad_out, x, z1, w_primary, stage1, mean_dy_primary, mean_dy_xhat_primary,
                                      w_cheap, stage2, mean_dy_cheap, mean_dy_xhat_cheap, act)
    if n * h * w == 0:  # no pixel: grad x is empty, the weight gradients zero
        return (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt),
                torch.zeros_like(w_primary), torch.zeros_like(w_cheap))
    grad_x, grad_wp, grad_wc = kernels.backward(
        _launcher, grad_out, x, z1, w_primary, stage1, mean_dy_primary, mean_dy_xhat_primary, w_cheap, stage2,
        mean_dy_cheap, mean_dy_xhat_cheap, ACTS.index(act), _block_i(init), INTERPRETED, fmt)
    return grad_x, grad_wp.contiguous(), grad_wc.contiguous()


def passes() -> train_bn.Passes:
    """The Triton passes, for train_bn.forward / backward."""
    ops = torch.ops.ghostkernels
    return train_bn.Passes(ops.ghost_bn_conv1x1_stats_triton.default, ops.ghost_bn_cheap_stats_triton.default,
                           ops.ghost_bn_forward_out_triton.default, ops.ghost_bn_backward_reduce_triton.default,
                           ops.ghost_bn_backward_triton.default)


_OP = "ghostkernels::ghost_module_bn_train_triton"


@torch.library.custom_op(_OP, mutates_args=())
def ghost_module_bn_train_triton_op(
        x: Tensor, w_primary: Tensor, b_primary: Optional[Tensor], bn_weight_primary: Optional[Tensor],
        bn_bias_primary: Optional[Tensor], eps_primary: float, w_cheap: Tensor, b_cheap: Optional[Tensor],
        bn_weight_cheap: Optional[Tensor], bn_bias_cheap: Optional[Tensor], eps_cheap: float, out_channels: int,
        act: str, group: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    check_bn_train_inputs(_OP, x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, w_cheap, b_cheap,
                          bn_weight_cheap, bn_bias_cheap, out_channels, act, group)
    check_dtype(_OP, x)
    return train_bn.forward(passes(), x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, eps_primary,
                            w_cheap, b_cheap, bn_weight_cheap, bn_bias_cheap, eps_cheap, out_channels, act, group)


@torch.library.custom_op(_OP + "_backward", mutates_args=())
def ghost_module_bn_train_triton_backward_op(
        grad_out: Tensor, x: Tensor, w_primary: Tensor, b_primary: Optional[Tensor],
        bn_weight_primary: Optional[Tensor], bn_bias_primary: Optional[Tensor], eps_primary: float, w_cheap: Tensor,
        b_cheap: Optional[Tensor], bn_weight_cheap: Optional[Tensor], bn_bias_cheap: Optional[Tensor],
        eps_cheap: float, mean_primary: Tensor, var_primary: Tensor, mean_cheap: Tensor, var_cheap: Tensor,
        count: Tensor, saved_z1: Tensor, out_channels: int, act: str, group: str
        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    check_dtype(_OP + "_backward", x)
    return train_bn.backward(passes(), grad_out, x, w_primary, b_primary, bn_weight_primary, bn_bias_primary,
                             eps_primary, w_cheap, b_cheap, bn_weight_cheap, bn_bias_cheap, eps_cheap, mean_primary,
                             var_primary, mean_cheap, var_cheap, count, saved_z1, out_channels, act, group)


_fake, _backward_fake = make_bn_train_fakes(_OP)
ghost_module_bn_train_triton_op.register_fake(_fake)
ghost_module_bn_train_triton_backward_op.register_fake(_backward_fake)
ghost_module_bn_train_triton_op.register_autograd(
    make_bn_train_backward(lambda *args: torch.ops.ghostkernels.ghost_module_bn_train_triton_backward(*args)),
    setup_context=bn_train_setup_context)
ghost_module_bn_train_triton_backward_op.register_autograd(
    no_backward("ghost_module_bn_train_backward", "ghost_module_bn_train_triton_backward"))
for _pass, _name in ((bn_conv1x1_stats_triton, "ghost_bn_conv1x1_stats"),
                     (bn_cheap_stats_triton, "ghost_bn_cheap_stats"), (bn_forward_out_triton, "ghost_bn_forward_out"),
                     (bn_backward_reduce_triton, "ghost_bn_backward_reduce"),
                     (bn_backward_triton, "ghost_bn_backward")):
    _pass.register_autograd(no_backward(_name, _name + "_triton"))
