"""What the fused modules need to know about a BatchNorm in training: whether it is one the fused ops stand in for
(BatchNorm2d, or SyncBatchNorm in its place), the process group a SyncBatchNorm synchronizes over, and the update of
its running statistics from the batch statistics the train-mode op returns, done exactly as nn.BatchNorm2d (and
SyncBatchNorm) do it.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops

# The BatchNorm classes a fused module may hold. SyncBatchNorm is BatchNorm2d with statistics over every process of
# its group in training (torch.nn.SyncBatchNorm.convert_sync_batchnorm swaps it in, before or after fuse()); in
# eval mode it is BatchNorm2d.
BATCHNORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm)


def is_batchnorm(module) -> bool:
    """A plain BatchNorm2d or SyncBatchNorm (not a subclass whose forward may do more)."""
    return type(module) in BATCHNORM_TYPES


def sync_group(bn: nn.Module | None) -> str:
    """The name of the process group whose statistics ``bn`` combines in this call, "" for none: SyncBatchNorm's own
    rule (training, torch.distributed initialized, more than one process in the group)."""
    if type(bn) is not nn.SyncBatchNorm or not bn.training:
        return ""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return ""
    group = bn.process_group if bn.process_group is not None else dist.group.WORLD
    return group.group_name if dist.get_world_size(group) > 1 else ""


def update_running_stats(bn: nn.Module, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
    """nn.BatchNorm2d's update after a training-mode call with batch mean ``mean`` and biased variance ``var`` over
    ``count`` values per channel: num_batches_tracked += 1; factor = momentum, or 1 / num_batches_tracked when
    momentum is None (a cumulative average); running_mean = factor * mean + (1 - factor) * running_mean and
    running_var likewise with the unbiased variance var * count / (count - 1). Nothing for a BN in eval mode or
    without running statistics (it normalizes with the batch's statistics and keeps none)."""
    update_running_stats_of((bn,), (mean,), (var,), count)


def update_running_stats_of(bns, means, variances, count: torch.Tensor) -> None:
    """update_running_stats of several BNs whose statistics were taken over the same ``count`` values (a Ghost
    module's two), with the same arithmetic per element but the per-channel vectors of all of them in each of a few
    foreach ops: at batch 1 a small module's update took as long as a pass when it was about thirty single ops; with
    the op library loaded, one ghostkernels::ghost_bn_update_running_stats call per BN."""
    todo = [(bn, m, v) for bn, m, v in zip(bns, means, variances) if bn.training and bn.running_mean is not None]
    if not todo:
        return
    if ops.build.is_loaded() and all(bn.num_batches_tracked is not None for bn, _, _ in todo):
        # One op per BN (csrc/bn_running_stats.cpp): the update below is a dozen small tensor ops, as long as a late
        # module's passes at batch 1. Below: the Triton backend without the op library, a BN whose
        # num_batches_tracked was removed.
        for bn, mean, var in todo:
            torch.ops.ghostkernels.ghost_bn_update_running_stats(bn.running_mean, bn.running_var,
                                                                 bn.num_batches_tracked, mean, var, count,
                                                                 bn.momentum)
        return
    # No torch.no_grad() needed (buffers and the op's statistics outputs carry no autograd history), and none
    # wanted: torch.export would wrap the updates in a grad-mode region and lose them as buffer mutations.
    tracked = [bn.num_batches_tracked for bn, _, _ in todo if bn.num_batches_tracked is not None]
    if tracked:
        torch._foreach_add_(tracked, 1)
    factors = []
    for bn, _, _ in todo:
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.momentum is None and bn.num_batches_tracked is not None:
            factor = 1.0 / float(bn.num_batches_tracked)
        factors += [factor, factor]
    unbiased = torch._foreach_mul([v for _, _, v in todo], count / (count - 1))
    runnings = [r for bn, _, _ in todo for r in (bn.running_mean, bn.running_var)]
    batches = [b for (_, mean, _), var in zip(todo, unbiased) for b in (mean, var)]
    keep = [1 - f for f in factors]
    if all(r.dtype == b.dtype for r, b in zip(runnings, batches)):
        # running = (1 - f) * running + f * batch in place: the same three roundings as out of place.
        torch._foreach_mul_(runnings, keep)
        torch._foreach_add_(runnings, torch._foreach_mul(batches, factors))
        return
    # Buffers of another dtype (bfloat16 modules): computed in the promoted dtype, rounded once into the buffer.
    acc = [torch.promote_types(r.dtype, b.dtype) for r, b in zip(runnings, batches)]
    new = torch._foreach_mul([r.to(a) for r, a in zip(runnings, acc)], keep)
    torch._foreach_add_(new, torch._foreach_mul([b.to(a) for b, a in zip(batches, acc)], factors))
    for running, value in zip(runnings, new):
        running.copy_(value)


__all__ = ["BATCHNORM_TYPES", "is_batchnorm", "sync_group", "update_running_stats", "update_running_stats_of"]
