"""FusedGhostModule and FusedGhostConv in train mode with batch-statistics BatchNorm: one ghost_module_bn_train call
per forward, outputs and gradients of GhostModule's layers, running statistics updated exactly as nn.BatchNorm2d
updates them, gradients in the parameters' memory format, torch.compile(fullgraph=True) and torch.export."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ghost_testing as gt
import ghostkernels
import variants
from ghostkernels import FusedGhostConv, FusedGhostModule, GhostModule

# (inp, oup, ratio, dw_size, relu) as in test_fused_module.py, plus a wide input (z1 kept for backward).
CONFIGS = [(16, 24, 2, 3, True), (10, 13, 2, 3, True), (8, 11, 3, 5, True), (12, 16, 2, 3, False),
           (48, 20, 2, 3, False)]
CONFIG_IDS = [f"{i}to{o}-r{r}k{k}-{'relu' if a else 'noact'}" for i, o, r, k, a in CONFIGS]

# Against the same layers in float64 (the scaled form of ghost_testing: |err| <= atol * max(1, max|expected|) +
# rtol * |expected|). Running statistics are an average of batch statistics, as accurate as those.
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=5e-5, rtol=2e-5)}


def _assert_close(actual, expected, tol, what):
    expected = expected.detach().double()
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual.detach().double(), expected, atol=tol["atol"] * scale, rtol=tol["rtol"],
                               msg=lambda m: f"{what}: {m}")


def _pair(config, seed, dtype=torch.float32, **bn_kwargs):
    """(fused at dtype, float64 GhostModule with the same rounded parameters and buffers), both in train mode."""
    inp, oup, ratio, dw, relu = config
    torch.manual_seed(seed)
    ref = variants.randomize_batchnorm(GhostModule(inp, oup, ratio=ratio, dw_size=dw, relu=relu), seed)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            for k, v in bn_kwargs.items():
                setattr(m, k, v)
    fused = FusedGhostModule.from_module(copy.deepcopy(ref).to(dtype))
    ref = ref.to(dtype).double()  # the fused module's rounded values, in float64
    return fused.train(), ref.train()


@pytest.fixture
def train_op_counter(monkeypatch):
    counter = gt.CallCounter(ghostkernels.ops.ghost_module_bn_train)
    monkeypatch.setattr(ghostkernels.ops, "ghost_module_bn_train", counter)
    return counter


def _steps(fused, ref, dtype, steps=3, shape=(3, 5, 6), lr=0.05):
    """Training steps on both (forward, backward of a fixed random loss, SGD): every output, gradient and buffer
    compared after each step."""
    opt, opt_ref = torch.optim.SGD(fused.parameters(), lr=lr), torch.optim.SGD(ref.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(11)
    for step in range(steps):
        x = torch.randn(shape[0], fused.primary_conv[0].in_channels, *shape[1:], generator=gen).to(dtype)
        x.requires_grad_()
        x_ref = x.detach().double().requires_grad_()
        out, expected = fused(x), ref(x_ref)
        _assert_close(out, expected, TOL[dtype], f"step {step} output")
        grad_out = torch.randn(expected.shape, generator=gen).to(dtype)
        opt.zero_grad(), opt_ref.zero_grad()
        out.backward(grad_out)
        expected.backward(grad_out.double())
        _assert_close(x.grad, x_ref.grad, TOL[dtype], f"step {step} grad x")
        for (name, p), p_ref in zip(fused.named_parameters(), ref.parameters()):
            _assert_close(p.grad, p_ref.grad, TOL[dtype], f"step {step} grad {name}")
        for (name, b), b_ref in zip(fused.named_buffers(), ref.buffers()):
            if b.is_floating_point():
                _assert_close(b, b_ref, TOL[dtype], f"step {step} {name}")
            else:
                assert torch.equal(b, b_ref), name  # num_batches_tracked
        opt.step(), opt_ref.step()


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_training_steps_match_ghost_module(config, dtype, train_op_counter):
    fused, ref = _pair(config, seed=1, dtype=dtype)
    _steps(fused, ref, dtype)
    assert train_op_counter.calls == 3


@pytest.mark.parametrize("bn_kwargs", [dict(momentum=None), dict(momentum=0.5, eps=0.1), dict(affine=False)],
                         ids=["momentum-none", "momentum-eps", "affine-false"])
def test_batchnorm_settings(bn_kwargs):
    affine = bn_kwargs.pop("affine", True)
    fused, ref = _pair(CONFIGS[1], seed=2, **bn_kwargs)
    if not affine:
        for m in list(fused.modules()) + list(ref.modules()):
            if isinstance(m, nn.BatchNorm2d):
                m.weight, m.bias, m.affine = None, None, False
    _steps(fused, ref, torch.float32)


def test_bn_without_running_statistics_uses_batch_statistics_in_eval_too():
    fused, ref = _pair(CONFIGS[0], seed=3)
    for model in (fused, ref):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.track_running_stats, m.running_mean, m.running_var, m.num_batches_tracked = False, None, None, None
    fused.eval(), ref.eval()
    x = torch.randn(2, 16, 5, 5)
    _assert_close(fused(x), ref(x.double()), TOL[torch.float32], "eval with batch statistics")


def test_a_frozen_batchnorm_beside_a_training_one_runs_the_layers(train_op_counter):
    fused, ref = _pair(CONFIGS[0], seed=4)
    fused.cheap_operation[1].eval()
    x = torch.randn(2, 16, 4, 4)
    layers = copy.deepcopy(fused)
    assert torch.equal(fused(x), layers._unfused_forward(x))
    assert train_op_counter.calls == 0


def test_conv_bias_before_batchnorm():
    """A conv with a bias in front of a train-mode BN: the bias cancels in the output but moves running_mean, and
    gets a zero gradient, as in the layers."""
    conv = variants.ULGhostConv(6, 12)
    for blk in (conv.cv1, conv.cv2):
        blk.conv.bias = nn.Parameter(torch.randn(blk.conv.out_channels))
    variants.randomize_batchnorm(conv, seed=5).train()
    fused = FusedGhostConv(copy.deepcopy(conv)).train()
    ref = copy.deepcopy(conv).double().train()
    x = torch.randn(2, 6, 5, 5)
    out, expected = fused(x), ref(x.double())
    _assert_close(out, expected, TOL[torch.float32], "output")
    out.sum().backward(), expected.sum().backward()
    for (name, p), p_ref in zip(fused.named_parameters(), ref.parameters()):
        _assert_close(p.grad, p_ref.grad, TOL[torch.float32], f"grad {name}")
    for (name, b), b_ref in zip(fused.named_buffers(), ref.buffers()):
        _assert_close(b, b_ref, TOL[torch.float32], name)


def test_ultralytics_ghostconv_trains_through_the_op(train_op_counter):
    conv = variants.randomize_batchnorm(variants.ULGhostConv(8, 16), seed=6)
    fused = FusedGhostConv(copy.deepcopy(conv)).train()
    ref = copy.deepcopy(conv).double().train()
    x = torch.randn(2, 8, 6, 6)
    _assert_close(fused(x), ref(x.double()), TOL[torch.float32], "output (SiLU)")
    assert train_op_counter.calls == 1


def test_gradients_in_the_parameters_memory_format():
    fused, _ = _pair(CONFIGS[2], seed=7)
    fused = fused.to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    fused(x).square().sum().backward()
    for name, p in fused.named_parameters():
        assert p.grad.stride() == p.stride(), name


def test_nothing_is_cached_across_steps():
    """Swapping a parameter's storage between steps (what FSDP does when it reshards) changes the result."""
    fused, _ = _pair(CONFIGS[0], seed=8)
    x = torch.randn(2, 16, 4, 4)
    first = fused(x)
    with torch.no_grad():
        w = fused.primary_conv[0].weight
        w.data = w.data.clone() * 2.0
    assert fused._fold_cache._entry is None
    assert not torch.allclose(fused(x), first)


def test_compile_fullgraph_training_step(train_op_counter):
    fused, ref = _pair(CONFIGS[3], seed=9)
    compiled_model = copy.deepcopy(fused)
    torch._dynamo.reset()
    # aot_eager: dynamo and AOTAutograd trace the forward and the backward through the ops' fake kernels and the
    # autograd formula (what a graph break or a missing fake would fail) without inductor's code generation.
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 12, 5, 5, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out, expected = compiled(x), fused(x2)
    _assert_close(out, expected, TOL[torch.float32], "compiled output")
    out.sum().backward(), expected.sum().backward()
    _assert_close(x.grad, x2.grad, TOL[torch.float32], "compiled grad x")
    for (name, p), p_ref in zip(compiled_model.named_parameters(), fused.parameters()):
        _assert_close(p.grad, p_ref.grad, TOL[torch.float32], f"compiled grad {name}")
    for (name, b), b_ref in zip(compiled_model.named_buffers(), fused.buffers()):
        assert torch.allclose(b.double(), b_ref.double()), name  # running statistics updated inside the graph


def test_export_training_module():
    fused, _ = _pair(CONFIGS[1], seed=10)
    x = torch.randn(2, 10, 5, 5)
    ep = torch.export.export(copy.deepcopy(fused), (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "ghostkernels.ghost_module_bn_train.default" in targets, targets
    exported = ep.module()
    expected = fused(x)
    _assert_close(exported(x), expected, TOL[torch.float32], "exported output")
    buffers = dict(exported.named_buffers())
    for name, b in fused.named_buffers():  # the exported program updates the running statistics as the module does
        assert torch.allclose(buffers[name].double(), b.double()), name
