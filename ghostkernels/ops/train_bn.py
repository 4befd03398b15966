"""The Ghost module in training with batch-statistics BatchNorm: ghostkernels::ghost_module_bn_train and its backward,
composed of the passes of csrc/ghost_module.cpp (ghost_bn_*) with the statistics combined in between.

Why Python in between: BN2's statistics depend on BN1's (x1 = act(BN1(z1)) is what the depthwise conv reads), and
under SyncBatchNorm each stage's statistics must be gathered from every process before the next pass can use them;
the backward's reductions likewise. So the op's kernel is this module's ``forward`` (and ``backward``), which
torch.library registers as the kernel of the two ops (registration.py): torch.compile and torch.export see one op
per Ghost module, and autograd one node whose backward is the backward op.

    forward:  z1, stats1 = conv1x1_stats(x)           # pass 1: the only GEMM of the forward
              [all_gather stats1]                     # SyncBatchNorm: Chan-combined as torch's SyncBatchNorm does
              stats2 = cheap_stats(z1, BN1)           # pass 2: x1 and the depthwise conv, recomputed from z1
              [all_gather stats2]
              out = forward_out(z1, BN1, BN2)         # pass 3
    backward: z1 = saved or conv1x1_stats(x)          # recomputed when it was not kept (see keep_z1)
              sums = backward_reduce(grad_out, z1)    # both stages' BN-backward reductions, in one pass
              [all_reduce sums]
              grad_x, grad_w1, grad_w2 = backward(grad_out, x, z1, means of the reductions)

bench/NOTES.md entry 36 has the derivation, the choices and their measurements. ``Passes`` names the ops this
composition calls, so that a backend with other kernels of the same passes (Triton) can reuse it.

Without a process group on the CPU the op's kernels (``native_forward``, ``native_backward``) call
ghost_bn_train_local and ghost_bn_train_local_backward instead: this composition in one C++ call each, since at
batch 1 the Python between the passes cost more than the passes (bench/NOTES.md entry 43). The op's autograd kernel
(csrc/bn_train_autograd.cpp) makes the same choice itself, so that a training step on the CPU runs none of this
module's Python; these kernels then serve the calls below autograd (inference mode, other devices, process groups).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .layouts import BnBackwardArgs, BnBackwardReduceArgs, BnCheapStatsArgs, BnForwardOutArgs
from .reference import ACTS

# z1 (init channels) is kept for backward when x has at least this many channels, since recomputing it costs the
# backward one GEMM of init x C per pixel, while keeping it costs memory for init channels: worth it where C is
# large (GhostNet's ghost2 modules and its late ghost1 modules), not for the wide early ones, whose z1 is the
# largest activation of the module (bench/NOTES.md entry 36: the memory target and the measured cost).
KEEP_Z1_MIN_CHANNELS = 32


def keep_z1(in_channels: int) -> bool:
    """Whether the forward keeps z1 for backward (``saved_z1``) instead of the backward recomputing it."""
    return in_channels >= KEEP_Z1_MIN_CHANNELS


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the statistics, sums, per-channel vectors and weights the passes take: float64 for float64
    inputs, float32 for every other dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class Passes(NamedTuple):
    """The kernels of the five passes (schemas in csrc/ghost_module.cpp)."""

    conv1x1_stats: object
    cheap_stats: object
    forward_out: object
    backward_reduce: object
    backward: object


def native_passes() -> Passes:
    """The C++/CUDA ops (dispatched on the tensors' device)."""
    ops = torch.ops.ghostkernels
    return Passes(ops.ghost_bn_conv1x1_stats.default, ops.ghost_bn_cheap_stats.default,
                  ops.ghost_bn_forward_out.default, ops.ghost_bn_backward_reduce.default,
                  ops.ghost_bn_backward.default)


# ---------------------------------------------------------------------------------------------------------------
# Statistics across processes (SyncBatchNorm)
# ---------------------------------------------------------------------------------------------------------------


def process_group(group: str):
    """The process group named ``group`` (a ProcessGroup's group_name), or None for ""."""
    if not group:
        return None
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _resolve_process_group

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"ghostkernels: group={group!r} names a process group, but torch.distributed is not "
                           f"initialized")
    return _resolve_process_group(group)


def _all_gather(t: torch.Tensor, pg) -> torch.Tensor:
    """[world, *t.shape]: every process's t. dist.all_gather with a list, since gloo has no all_gather_into_tensor
    (as torch's SyncBatchNorm does)."""
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(pg))]
    dist.all_gather(parts, t.contiguous(), group=pg)
    return torch.stack(parts)


def combine_moments(mean, var, counts):
    """Chan's combination of per-process (mean, biased var) rows with per-process counts [world, 1]; processes
    that saw no values (count 0, NaN statistics) drop out, as in torch's SyncBatchNorm."""
    seen = counts > 0
    mean = torch.where(seen, mean, 0)
    var = torch.where(seen, var, 0)
    n = counts.sum()
    total_mean = (mean * counts).sum(0) / n
    total_var = ((var + (mean - total_mean) ** 2) * counts).sum(0) / n
    return total_mean, total_var


def gather_counts(count: torch.Tensor, pg) -> torch.Tensor:
    return _all_gather(count.reshape(1), pg)  # [world, 1]


def gather_moments(mean, var, counts, pg):
    both = _all_gather(torch.cat([mean, var]), pg)
    c = mean.shape[0]
    return combine_moments(both[:, :c], both[:, c:], counts)


def all_reduce_sum(t: torch.Tensor, pg) -> torch.Tensor:
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=pg)
    return t


# ---------------------------------------------------------------------------------------------------------------
# The op's two kernels
# ---------------------------------------------------------------------------------------------------------------


def _affine(t, like: torch.Tensor, fill: float, sd: torch.dtype) -> torch.Tensor:
    """A BN's weight or bias in the stats dtype; None (affine=False) as its constant."""
    if t is None:
        return torch.full(like.shape, fill, dtype=sd, device=like.device)
    return t.to(sd)


def _raw_mean(mean_with_bias, conv_bias, sd):
    """The mean of conv(x) without its bias (what the passes normalize, since they never add the bias)."""
    return mean_with_bias if conv_bias is None else mean_with_bias - conv_bias.to(sd)


def _check_count(x: torch.Tensor, synced: bool) -> None:
    per_channel = x.shape[0] * x.shape[2] * x.shape[3]
    if not synced and isinstance(per_channel, int) and per_channel == 1:
        # nn.BatchNorm2d's own check and message (F.batch_norm's _verify_batch_size).
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")


def _check_act(act: str) -> None:
    if act not in ACTS:
        raise ValueError(f"ghostkernels::ghost_module_bn_train: unknown act {act!r}; expected one of "
                         f"{', '.join(ACTS)}")


def _local_cpu(x, group: str) -> bool:
    """Whether the call runs as one C++ op (ghost_bn_train_local and its backward): no process group, on the CPU."""
    return not group and x.device.type == "cpu"


def native_forward(*args):
    """The kernel of ghostkernels::ghost_module_bn_train on the library's devices: ``forward`` on the native passes,
    or, without a process group on the CPU, ghost_bn_train_local (the same composition in C++: at batch 1 the
    twenty-odd small tensor ops between the passes cost more than the passes, bench/NOTES.md entry 43)."""
    x, act, group = args[0], args[-2], args[-1]
    if _local_cpu(x, group):
        _check_act(act)
        _check_count(x, False)
        return torch.ops.ghostkernels.ghost_bn_train_local(*args[:-1], keep_z1(x.shape[1]))
    return forward(native_passes(), *args)


def forward(passes: Passes, x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, eps_primary: float,
            w_cheap, b_cheap, bn_weight_cheap, bn_bias_cheap, eps_cheap: float, out_channels: int, act: str,
            group: str):
    """The kernel of ghostkernels::ghost_module_bn_train (see its schema)."""
    _check_act(act)
    pg = process_group(group)
    _check_count(x, pg is not None)
    sd = stats_dtype(x.dtype)
    w1, w2 = w_primary.to(sd), w_cheap.to(sd)
    z1, mean1, var1 = passes.conv1x1_stats(x, w1)
    count = torch.tensor(float(x.shape[0] * x.shape[2] * x.shape[3]), dtype=sd, device=x.device)
    if pg is not None:
        counts = gather_counts(count, pg)
        count = counts.sum()
        mean1, var1 = gather_moments(mean1, var1, counts, pg)
    invstd1 = torch.rsqrt(var1 + eps_primary)
    weight1, bias1 = _affine(bn_weight_primary, mean1, 1.0, sd), _affine(bn_bias_primary, mean1, 0.0, sd)
    bn1 = dict(mean_primary=mean1, invstd_primary=invstd1, weight_primary=weight1, bias_primary=bias1)
    mean2, var2 = passes.cheap_stats(*BnCheapStatsArgs(z1=z1, **bn1, w_cheap=w2, act=act))
    if pg is not None:
        mean2, var2 = gather_moments(mean2, var2, counts, pg)
    invstd2 = torch.rsqrt(var2 + eps_cheap)
    weight2, bias2 = _affine(bn_weight_cheap, mean2, 1.0, sd), _affine(bn_bias_cheap, mean2, 0.0, sd)
    bn2 = dict(mean_cheap=mean2, invstd_cheap=invstd2, weight_cheap=weight2, bias_cheap=bias2)
    out = passes.forward_out(*BnForwardOutArgs(z1=z1, **bn1, w_cheap=w2, **bn2, out_channels=out_channels, act=act))
    saved_z1 = z1 if keep_z1(x.shape[1]) else z1.new_empty(0)
    mean1 = mean1 if b_primary is None else mean1 + b_primary.to(sd)
    mean2 = mean2 if b_cheap is None else mean2 + b_cheap.to(sd)
    return out, mean1, var1, mean2, var2, count, saved_z1


def _like_param(grad: torch.Tensor, param) -> torch.Tensor:
    """A gradient in its parameter's dtype and memory format (DDP's buckets and optimizers expect the parameter's
    strides)."""
    if param is None:
        return grad
    grad = grad.to(param.dtype)
    if grad.stride() != param.stride():
        grad = torch.empty_like(param).copy_(grad)
    return grad


def backward(passes: Passes, grad_out, x, w_primary, b_primary, bn_weight_primary, bn_bias_primary,
             eps_primary: float, w_cheap, b_cheap, bn_weight_cheap, bn_bias_cheap, eps_cheap: float, mean_primary,
             var_primary, mean_cheap, var_cheap, count, saved_z1, out_channels: int, act: str, group: str):
    """The kernel of ghostkernels::ghost_module_bn_train_backward (see its schema)."""
    pg = process_group(group)
    sd = stats_dtype(x.dtype)
    w1, w2 = w_primary.to(sd), w_cheap.to(sd)
    init, mult = w1.shape[0], w2.shape[0] // w1.shape[0]
    mean1, mean2 = _raw_mean(mean_primary, b_primary, sd), _raw_mean(mean_cheap, b_cheap, sd)
    invstd1, invstd2 = torch.rsqrt(var_primary + eps_primary), torch.rsqrt(var_cheap + eps_cheap)
    weight1, bias1 = _affine(bn_weight_primary, mean1, 1.0, sd), _affine(bn_bias_primary, mean1, 0.0, sd)
    weight2, bias2 = _affine(bn_weight_cheap, mean2, 1.0, sd), _affine(bn_bias_cheap, mean2, 0.0, sd)
    z1 = saved_z1 if saved_z1.dim() == 4 else passes.conv1x1_stats(x, w1)[0]  # a 1-D saved_z1: not kept
    grad_out = grad_out.to(x.dtype)

    bn1 = dict(mean_primary=mean1, invstd_primary=invstd1, weight_primary=weight1, bias_primary=bias1)
    bn2 = dict(mean_cheap=mean2, invstd_cheap=invstd2, weight_cheap=weight2, bias_cheap=bias2)
    sums_p, sums_c = passes.backward_reduce(*BnBackwardReduceArgs(grad_out=grad_out, z1=z1, **bn1, w_cheap=w2, **bn2,
                                                                  out_channels=out_channels, act=act))
    total_p, total_c = sums_p, sums_c
    if pg is not None:
        both = all_reduce_sum(torch.cat([sums_p.reshape(-1), sums_c.reshape(-1)]), pg)
        total_p, total_c = both[:sums_p.numel()].view_as(sums_p), both[sums_p.numel():].view_as(sums_c)
    # BN2's reductions, over the whole batch: mean(dL/dy2) and mean(dL/dy2 * xhat2).
    mean_dy2, mean_dy_xhat2 = total_c[0] / count, total_c[1] / count
    dz_scale2 = invstd2 * weight2

    def primary_sums(p, c):
        """sum(dL/dy1), sum(dL/dy1 * xhat1) from the pass's sums: dL/dx1 = grad_out + dwconv^T(dz2), linear in BN2's
        reductions (see ghost_bn_backward_reduce's schema)."""
        via = dz_scale2 * (c[2] - mean_dy2 * c[3] - mean_dy_xhat2 * c[4])
        via_x = dz_scale2 * (c[5] - mean_dy2 * c[6] - mean_dy_xhat2 * c[7])
        return p[0] + via.view(init, mult).sum(1), p[1] + via_x.view(init, mult).sum(1)

    dbeta1, dgamma1 = primary_sums(sums_p, sums_c)  # this process's (torch's SyncBatchNorm returns local ones)
    total_dy1, total_dy_xhat1 = primary_sums(total_p, total_c) if pg is not None else (dbeta1, dgamma1)
    grad_x, grad_w1, grad_w2 = passes.backward(*BnBackwardArgs(
        grad_out=grad_out, x=x, z1=z1, w_primary=w1, **bn1, mean_dy_primary=total_dy1 / count,
        mean_dy_xhat_primary=total_dy_xhat1 / count, w_cheap=w2, **bn2, mean_dy_cheap=mean_dy2,
        mean_dy_xhat_cheap=mean_dy_xhat2, out_channels=out_channels, act=act))

    return _gradients(grad_x, grad_w1, dgamma1, dbeta1, grad_w2, sums_c[1].clone(), sums_c[0].clone(), w_primary,
                      b_primary, bn_weight_primary, bn_bias_primary, w_cheap, b_cheap, bn_weight_cheap, bn_bias_cheap)


def _gradients(grad_x, grad_w1, dgamma1, dbeta1, grad_w2, dgamma2, dbeta2, w_primary, b_primary, bn_weight_primary,
               bn_bias_primary, w_cheap, b_cheap, bn_weight_cheap, bn_bias_cheap):
    """The backward op's outputs from the computed gradients: each in its parameter's dtype and strides, and the
    conv biases' (exactly zero: they cancel in the normalization)."""

    def bias_grad(b, like):
        return torch.zeros(like.shape[0], dtype=like.dtype if b is None else b.dtype, device=like.device)

    return (grad_x, _like_param(grad_w1, w_primary), bias_grad(b_primary, w_primary),
            _like_param(dgamma1, bn_weight_primary), _like_param(dbeta1, bn_bias_primary),
            _like_param(grad_w2, w_cheap), bias_grad(b_cheap, w_cheap), _like_param(dgamma2, bn_weight_cheap),
            _like_param(dbeta2, bn_bias_cheap))


def native_backward(*args):
    """The kernel of ghostkernels::ghost_module_bn_train_backward on the library's devices: ``backward`` on the native
    passes, or ghost_bn_train_local_backward where the forward ran ghost_bn_train_local (see native_forward)."""
    x, group = args[1], args[-1]
    if not _local_cpu(x, group):
        return backward(native_passes(), *args)
    grads = torch.ops.ghostkernels.ghost_bn_train_local_backward(*args[:-1])
    w_primary, b_primary, bn_weight_primary, bn_bias_primary = args[2:6]
    w_cheap, b_cheap, bn_weight_cheap, bn_bias_cheap = args[7:11]
    return _gradients(*grads, w_primary, b_primary, bn_weight_primary, bn_bias_primary, w_cheap, b_cheap,
                      bn_weight_cheap, bn_bias_cheap)


def output_shapes(x, w_primary, w_cheap, out_channels: int):
    """Shapes of ghost_module_bn_train's outputs (for its fake kernel): out, the four statistics, count, saved_z1."""
    n, c, h, w = x.shape
    init, cheap = w_primary.shape[0], w_cheap.shape[0]
    z1 = (n, init, h, w) if keep_z1(c) else (0,)
    return (n, out_channels, h, w), (init,), (init,), (cheap,), (cheap,), (), z1


__all__ = ["KEEP_Z1_MIN_CHANNELS", "Passes", "backward", "combine_moments", "forward", "keep_z1", "native_backward",
           "native_forward", "native_passes", "output_shapes", "process_group", "stats_dtype"]
