"""The one CPU-inference gate (ghostkernels.nn.gate): the same rule for every fused module that runs an inference op,
checked here on FusedGhostBottleneck (which, before the gate, checked neither the dtype nor hooks) and on the gate
itself."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ghost_testing as gt
import variants
from ghostkernels import fuse, models
from ghostkernels.nn import FusedGhostBottleneck
from ghostkernels.nn.gate import CpuInferenceGate, HookWatch


def _fused_block():
    """A block and its fused copy made by fuse(), whose own forward (run where the gate is closed) uses the fused
    module's children."""
    block = variants.randomize_batchnorm(models.GhostBottleneck(8, 16, 12, 3, 2, se_ratio=0.25), seed=3).eval()
    fused = fuse(nn.Sequential(copy.deepcopy(block)), strict=True)[0]
    assert isinstance(fused, FusedGhostBottleneck)
    return block, fused


@pytest.fixture
def op_calls(monkeypatch):
    """The calls that take the whole-block op (forward reads the op's arguments only then)."""
    return gt.record_method_calls(monkeypatch, FusedGhostBottleneck, "op_arguments")


def test_a_hook_on_an_inner_layer_runs_the_blocks_layers(op_calls):
    block, fused = _fused_block()
    seen = []
    handle = fused.ghost1.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        got = fused(x)
        assert seen and not op_calls  # the hook ran: the op would have skipped ghost1's forward
        handle.remove()
        again = fused(x)
        assert len(op_calls) == 1 and len(seen) == 1  # hook gone: the op again
        want = block(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, want, atol=1e-4, rtol=1e-4)


def test_an_input_of_another_dtype_gets_the_layers_error_not_the_ops(op_calls):
    _, fused = _fused_block()
    with torch.no_grad(), pytest.raises((RuntimeError, TypeError), match="(?i)type"):
        fused(torch.randn(2, 8, 10, 10, dtype=torch.float64))
    assert not op_calls


def test_autocast_runs_the_blocks_layers(op_calls):
    block, fused = _fused_block()
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused(x)
    assert not op_calls and got.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(got.float(), block(x), atol=0.15, rtol=0.05)


def test_a_batchnorm_in_training_mode_closes_the_gate(op_calls):
    block, fused = _fused_block()
    fused.bn_dw.train()
    with torch.no_grad():
        fused(torch.randn(2, 8, 10, 10))
    assert not op_calls


def test_hook_watch_notices_registration_and_removal():
    layers = [nn.ReLU(), nn.Identity()]
    watch = HookWatch(layers)
    assert not watch.hooked()
    handle = layers[1].register_forward_pre_hook(lambda m, args: None)
    assert watch.hooked()
    handle.remove()  # a removal does not advance the registration counter; the watch looks again anyway
    assert not watch.hooked()


def test_gate_reads_replaced_parameters_live():
    conv = nn.Conv2d(3, 4, 1)
    gate = CpuInferenceGate(conv, [conv])
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        assert gate.open(x, False, "auto")
    assert not gate.open(x, False, "auto")  # autograd on and the weight requires grad
    conv.weight = nn.Parameter(conv.weight.detach().double())  # a new Parameter object, another dtype
    with torch.no_grad():
        assert not gate.open(x, False, "auto")
        assert gate.open(x.double(), False, "auto")
    for backend in ("eager", "cuda", "triton"):
        assert not gate.open(x.double(), False, backend)
    with torch.no_grad():
        assert not gate.open(x.double(), True, "auto")  # training
