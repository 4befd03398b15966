"""The fused train-mode op under torch.distributed: 2 processes on the CPU (gloo, torch.multiprocessing spawn), each
checking its own results against a single-process eager model it computes itself.

* DDP with BatchNorm2d: each process normalizes with its own batch's statistics, so DDP's averaged gradients must
  equal the mean of the eager model's gradients on each process's slice, and each process's running statistics
  the eager model's on its slice.
* SyncBatchNorm, converted before fuse() and after it: the statistics (forward) and the BN backward's sums are
  those of the whole batch, so every output, input gradient and running statistic equals the eager model's on the
  whole batch, and DDP's averaged parameter gradients equal the whole batch's gradient of the sum of the
  processes' losses divided by the number of processes (torch's SyncBatchNorm returns each process's own
  dL/dgamma and dL/dbeta, and DDP averages them). Eager SyncBatchNorm itself runs only on GPUs, so the whole-batch
  eager model is the reference it would be compared with; and DDP refuses a CPU module holding SyncBatchNorm
  layers ("SyncBatchNorm layers only work with GPU modules"), so there the gradients are averaged the way DDP's
  reducer averages them, by an all-reduce of each gradient divided by the number of processes.

One spawn runs all scenarios (two training steps each, so nothing cached from a step survives into the next).
"""

from __future__ import annotations

import copy
import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
PER_RANK = 2  # images per process
TOL = dict(atol=5e-5, rtol=2e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(seed: int) -> nn.Module:
    from ghostkernels import models

    torch.manual_seed(seed)
    # A wide second module (48 input channels) keeps z1 for backward; the first recomputes it.
    model = nn.Sequential(models.GhostModule(3, 48), models.GhostModule(48, 10, relu=False))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.5)
    return model.train()


def _close(actual, expected, what):
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual.double(), expected.double(), atol=TOL["atol"] * scale, rtol=TOL["rtol"],
                               msg=lambda m: f"rank {dist.get_rank()}: {what}: {m}")


def _batches(step: int) -> torch.Tensor:
    return torch.randn(WORLD * PER_RANK, 3, 6, 7, generator=torch.Generator().manual_seed(100 + step))


def _loss(out: torch.Tensor) -> torch.Tensor:
    return (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()


def _ddp_with_batchnorm(rank: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    import ghostkernels

    eager = _model(1)
    fused = ghostkernels.fuse(copy.deepcopy(eager), strict=True)
    assert all(isinstance(m, ghostkernels.FusedGhostModule) for m in fused)
    # Each process keeps its own running statistics (by default DDP would overwrite them with process 0's before
    # every forward). torch 2.13 deprecates the argument but keeps it, as the way to keep rank-local buffers.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ddp = DDP(fused, broadcast_buffers=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    refs = [copy.deepcopy(eager) for _ in range(WORLD)]  # one per process's slice: their own running statistics
    ref_opt = [torch.optim.SGD(r.parameters(), lr=0.1) for r in refs]
    for step in range(2):
        x = _batches(step)
        slices = x.split(PER_RANK)
        opt.zero_grad()
        _loss(ddp(slices[rank])).backward()
        grads = []
        for r, (ref, o) in enumerate(zip(refs, ref_opt)):
            o.zero_grad()
            _loss(ref(slices[r])).backward()
            grads.append([p.grad.clone() for p in ref.parameters()])
        for (name, p), *per_rank in zip(fused.named_parameters(), *grads):
            _close(p.grad, sum(per_rank) / WORLD, f"step {step} DDP grad {name}")
        for (name, b), b_ref in zip(fused.named_buffers(), refs[rank].buffers()):
            _close(b, b_ref, f"step {step} {name}")
        opt.step()
        # Every reference takes the averaged step, as every DDP replica does.
        for ref, o in zip(refs, ref_opt):
            for p, g in zip(ref.parameters(), (sum(gs) / WORLD for gs in zip(*grads))):
                p.grad = g.clone()
            o.step()


def _average_gradients(model: nn.Module) -> None:
    """What DDP's reducer does after backward: every gradient all-reduced and divided by the number of processes."""
    for p in model.parameters():
        dist.all_reduce(p.grad)
        p.grad /= WORLD


def _sync_batchnorm(rank: int, convert_first: bool) -> None:
    import ghostkernels

    eager = _model(2)
    if convert_first:
        fused = ghostkernels.fuse(nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(eager)), strict=True)
    else:
        fused = nn.SyncBatchNorm.convert_sync_batchnorm(ghostkernels.fuse(copy.deepcopy(eager), strict=True))
    assert all(isinstance(m, ghostkernels.FusedGhostModule) for m in fused)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in fused.modules()) == 4
    opt = torch.optim.SGD(fused.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    what = "convert, fuse" if convert_first else "fuse, convert"
    for step in range(2):
        x = _batches(step)
        x_local = x.split(PER_RANK)[rank].clone().requires_grad_()
        opt.zero_grad()
        out = fused(x_local)
        _loss(out).backward()
        _average_gradients(fused)
        x_ref = x.clone().requires_grad_()
        ref_opt.zero_grad()
        out_ref = eager(x_ref)
        sum(_loss(o) for o in out_ref.split(PER_RANK)).backward()
        _close(out, out_ref.split(PER_RANK)[rank], f"{what}: step {step} output")
        _close(x_local.grad, x_ref.grad.split(PER_RANK)[rank], f"{what}: step {step} grad x")
        for (name, p), p_ref in zip(fused.named_parameters(), eager.parameters()):
            _close(p.grad, p_ref.grad / WORLD, f"{what}: step {step} grad {name}")
        for (name, b), b_ref in zip(fused.named_buffers(), eager.buffers()):
            _close(b, b_ref, f"{what}: step {step} {name}")
        opt.step()
        for p in eager.parameters():
            p.grad /= WORLD
        ref_opt.step()


def _worker(rank: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        _ddp_with_batchnorm(rank)
        _sync_batchnorm(rank, convert_first=True)
        _sync_batchnorm(rank, convert_first=False)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_and_sync_batchnorm_on_two_processes():
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)
