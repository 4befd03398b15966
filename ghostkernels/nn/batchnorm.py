"""What the fused modules need to know about a BatchNorm in training: whether it is one the fused ops stand in for
(BatchNorm2d, or SyncBatchNorm in its place), the process group a SyncBatchNorm synchronizes over, and the update of
its running statistics from the batch statistics the train-mode op returns, done exactly as nn.BatchNorm2d (and
SyncBatchNorm) do it.
"""

from __future__ import annotations

import torch
from torch import nn

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
    if not bn.training or bn.running_mean is None:
        return
    # No torch.no_grad() needed (buffers and the op's statistics outputs carry no autograd history), and none
    # wanted: torch.export would wrap the updates in a grad-mode region and lose them as buffer mutations.
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    unbiased = var * (count / (count - 1))
    for running, batch in ((bn.running_mean, mean), (bn.running_var, unbiased)):
        acc = torch.promote_types(running.dtype, batch.dtype)
        running.copy_(factor * batch.to(acc) + (1 - factor) * running.to(acc))


__all__ = ["BATCHNORM_TYPES", "is_batchnorm", "sync_group", "update_running_stats"]
