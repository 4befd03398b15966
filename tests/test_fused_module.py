"""FusedGhostModule: GhostModule's state_dict, the fused op in eval mode (BN folded differentiably, cached), training
with frozen BatchNorms, from_module, torch.compile, bad arguments (train mode with batch statistics:
test_fused_module_train.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ghostkernels
import ghost_testing as gt
import variants
from ghostkernels import FusedGhostModule, GhostModule
from ghostkernels.nn import activations, folding

# (inp, oup, ratio, dw_size, relu): an even GhostNet-like shape, odd oup (slice inside x2), ratio 3 with k 5, and
# a ghost2-style module without activation.
CONFIGS = [(16, 24, 2, 3, True), (10, 13, 2, 3, True), (8, 11, 3, 5, True), (12, 16, 2, 3, False)]
CONFIG_IDS = [f"{i}to{o}-r{r}k{k}-{'relu' if a else 'noact'}" for i, o, r, k, a in CONFIGS]

# Eval-mode forward and gradients of FusedGhostModule (BN folded, then the CPU op) against GhostModule run in
# float64 autograd on the same (rounded) parameters. Scaled like tests/ghost_testing.py:
# |err| <= atol * max(1, max|expected|) + rtol * |expected|.
EVAL_TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),  # float64 throughout
    torch.float32: dict(atol=2e-5, rtol=2e-5),  # the fold rounds w*s once more than conv-then-BN does
    torch.bfloat16: dict(atol=4e-2, rtol=2e-2),  # folded weights rounded to bfloat16 (unit roundoff 2^-9)
}


def _pair(config, seed):
    """A GhostModule with random BN state and a FusedGhostModule loaded from its state_dict."""
    inp, oup, ratio, dw, relu = config
    torch.manual_seed(seed)
    ref = variants.randomize_batchnorm(GhostModule(inp, oup, ratio=ratio, dw_size=dw, relu=relu), seed)
    fused = FusedGhostModule(inp, oup, ratio=ratio, dw_size=dw, relu=relu)
    fused.load_state_dict(ref.state_dict(), strict=True)
    return ref, fused


def _assert_close(actual, expected, tol, what):
    expected = expected.detach().double()
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual.detach().double(), expected, atol=tol["atol"] * scale, rtol=tol["rtol"],
                               msg=lambda m: f"{what}: {m}")


@pytest.fixture
def fold_counter(monkeypatch):
    counter = gt.CallCounter(folding.fold_conv_bn)
    monkeypatch.setattr(folding, "fold_conv_bn", counter)
    return counter


@pytest.fixture
def op_counter(monkeypatch):
    counter = gt.CallCounter(ghostkernels.ops.ghost_module)
    monkeypatch.setattr(ghostkernels.ops, "ghost_module", counter)
    return counter


# ---------------------------------------------------------------------------------------------------------------
# state_dict
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_round_trips_both_ways(config):
    ref, fused = _pair(config, seed=1)
    assert list(fused.state_dict()) == list(ref.state_dict())
    assert [(n, b.shape) for n, b in fused.named_buffers()] == [(n, b.shape) for n, b in ref.named_buffers()]
    back = GhostModule(*config[:2], ratio=config[2], dw_size=config[3], relu=config[4])
    back.load_state_dict(fused.state_dict(), strict=True)
    for (name, a), b in zip(ref.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name
    assert (fused.oup, fused.init_channels, fused.new_channels) == (ref.oup, ref.init_channels, ref.new_channels)


def test_loads_official_and_timm_state_dicts():
    for source in (variants.OfficialGhost(8, 12), variants.TimmStyleGhost(8, 12),
                   variants.TimmStyleGhost(8, 12, act_layer=nn.Identity)):
        FusedGhostModule(8, 12).load_state_dict(source.state_dict(), strict=True)


# ---------------------------------------------------------------------------------------------------------------
# eval mode: the fused op on folded weights
# ---------------------------------------------------------------------------------------------------------------


def _eval_pair(config, dtype, seed):
    """(fused at dtype, float64 GhostModule with exactly the fused module's rounded parameters), both in eval."""
    ref, fused = _pair(config, seed)
    fused = fused.to(dtype).eval()
    ref = ref.double().eval()
    with torch.no_grad():
        for p_ref, p in zip(ref.state_dict().values(), fused.state_dict().values()):
            p_ref.copy_(p)
    return fused, ref


@pytest.mark.parametrize("dtype", list(EVAL_TOL), ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_eval_forward_matches_float64_reference(config, dtype, op_counter):
    fused, ref = _eval_pair(config, dtype, seed=2)
    x = torch.randn(2, config[0], 7, 6).to(dtype)
    with torch.no_grad():
        out = fused(x)
        expected = ref(x.double())
    assert op_counter.calls == 1 and out.dtype == dtype
    _assert_close(out, expected, EVAL_TOL[dtype], "output")


# Gradients in bfloat16 only where the activation has no kink: the folded bfloat16 weights move every
# pre-activation by ~2^-9 relative, and where that crosses relu's kink the derivative flips (an O(1) difference
# per element, not a rounding error). The op's own bfloat16 gradients around kinks are tested in the op tests.
GRAD_PARAMS = [pytest.param(c, d, id=f"{i}-{d}") for c, i in zip(CONFIGS, CONFIG_IDS) for d in EVAL_TOL
               if not (d == torch.bfloat16 and c[4])]


@pytest.mark.parametrize("config,dtype", GRAD_PARAMS)
def test_eval_backward_matches_float64_reference(config, dtype):
    fused, ref = _eval_pair(config, dtype, seed=3)
    x = torch.randn(2, config[0], 7, 6).to(dtype).requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    out, expected = fused(x), ref(x_ref)
    grad_out = torch.randn(expected.shape).to(dtype)
    out.backward(grad_out)
    expected.backward(grad_out.double())
    _assert_close(x.grad, x_ref.grad, EVAL_TOL[dtype], "grad x")
    for (name, p), p_ref in zip(fused.named_parameters(), ref.parameters()):
        assert p.grad is not None, name  # conv weights and BN affine parameters all get gradients
        _assert_close(p.grad, p_ref.grad, EVAL_TOL[dtype], f"grad {name}")


@pytest.mark.parametrize("act", ["relu6", "silu", "hardswish"])
def test_other_activations(act):
    fused = FusedGhostModule(6, 10, ratio=2, dw_size=3, act=act)
    variants.randomize_batchnorm(fused, seed=3).eval()
    assert type(fused.primary_conv[2]) is type(activations.activation_module(act))
    ref = copy.deepcopy(fused).double()
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        _assert_close(fused(x), ref._unfused_forward(x.double()), EVAL_TOL[torch.float32], act)


def test_eval_backends_agree():
    _, fused = _pair(CONFIGS[1], seed=4)
    fused.eval()
    x = torch.randn(2, CONFIGS[1][0], 6, 6)
    with torch.no_grad():
        out_cpu = fused(x)
        fused.backend = "eager"
        _assert_close(out_cpu, fused(x), EVAL_TOL[torch.float32], "cpu vs eager backend")


def test_channels_last_input_keeps_its_format():
    _, fused = _pair(CONFIGS[0], seed=5)
    x = torch.randn(2, CONFIGS[0][0], 6, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = fused.eval()(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


# ---------------------------------------------------------------------------------------------------------------
# train mode
# ---------------------------------------------------------------------------------------------------------------


# Train mode with batch statistics (ghost_module_bn_train): tests/test_fused_module_train.py.


def test_training_with_frozen_batchnorm_runs_the_op_and_trains_conv_and_bn_affine(op_counter):
    config = CONFIGS[1]
    ref, fused = _pair(config, seed=7)
    for model in (ref, fused):
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()  # frozen statistics, trainable affine parameters
    stats_before = [b.clone() for b in fused.buffers()]
    opt = torch.optim.SGD(fused.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    x = torch.randn(2, config[0], 5, 6)
    for step in range(2):  # the second step must see the first step's in-place parameter update
        out, expected = fused(x), ref(x)
        _assert_close(out, expected, EVAL_TOL[torch.float32], f"step {step} output")
        loss, loss_ref = out.square().mean(), expected.square().mean()
        opt.zero_grad(), opt_ref.zero_grad()
        loss.backward(), loss_ref.backward()
        for (name, p), p_ref in zip(fused.named_parameters(), ref.parameters()):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            _assert_close(p.grad, p_ref.grad, EVAL_TOL[torch.float32], f"step {step} grad {name}")
        opt.step(), opt_ref.step()
    assert op_counter.calls == 2
    for a, b in zip(fused.buffers(), stats_before):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# the fold cache
# ---------------------------------------------------------------------------------------------------------------


def test_second_inference_forward_does_no_folding(fold_counter, op_counter):
    _, fused = _pair(CONFIGS[0], seed=8)
    fused.eval()
    x = torch.randn(1, CONFIGS[0][0], 4, 4)
    with torch.no_grad():
        first = fused(x)
        cached = fused._fold_cache._entry[2]
        assert fold_counter.calls == 2  # primary and cheap
        second = fused(x)
    assert fold_counter.calls == 2 and op_counter.calls == 2
    assert all(a is b for a, b in zip(fused._fold_cache._entry[2], cached))
    assert torch.equal(first, second)
    with torch.inference_mode():
        fused(x)
        fused(x)
    assert fold_counter.calls == 4  # inference mode keeps its own fold (inference tensors), once


def _changes():
    """Ways a parameter or buffer can change after the fold was cached."""

    def in_place_weight(m):
        with torch.no_grad():
            m.primary_conv[0].weight.mul_(1.5)

    def in_place_running_var(m):
        m.cheap_operation[1].running_var.add_(0.5)

    def load_state_dict(m):
        src = variants.randomize_batchnorm(copy.deepcopy(m), seed=99)
        m.load_state_dict(src.state_dict())

    def new_parameter(m):
        m.cheap_operation[1].bias = nn.Parameter(torch.randn(m.cheap_operation[1].num_features))

    def eps(m):
        m.primary_conv[1].eps = 0.5

    def optimizer_step(m):
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        m(torch.randn(1, m.primary_conv[0].in_channels, 3, 3)).sum().backward()
        opt.step()

    return [in_place_weight, in_place_running_var, load_state_dict, new_parameter, eps, optimizer_step]


@pytest.mark.parametrize("change", _changes(), ids=lambda f: f.__name__)
def test_parameter_or_buffer_change_invalidates_the_cache(change, fold_counter):
    _, fused = _pair(CONFIGS[1], seed=9)
    fused.eval()
    x = torch.randn(2, CONFIGS[1][0], 5, 5)
    with torch.no_grad():
        before = fused(x)
    change(fused)
    calls = fold_counter.calls
    with torch.no_grad():
        after = fused(x)
        expected = copy.deepcopy(fused).double()._unfused_forward(x.double())
    assert fold_counter.calls == calls + 2
    assert not torch.equal(after, before)
    _assert_close(after, expected, EVAL_TOL[torch.float32], "after the change")


def test_dtype_change_invalidates_the_cache():
    _, fused = _pair(CONFIGS[0], seed=10)
    fused.eval()
    x = torch.randn(2, CONFIGS[0][0], 4, 4)
    with torch.no_grad():
        fused(x)
        fused.double()
        out = fused(x.double())
    assert out.dtype == torch.float64


def test_no_cached_graph_when_autograd_records(fold_counter):
    _, fused = _pair(CONFIGS[0], seed=11)
    fused.eval()
    x = torch.randn(1, CONFIGS[0][0], 4, 4)
    for _ in range(2):
        out = fused(x)
        assert out.grad_fn is not None
        out.sum().backward()  # a reused graph would fail here the second time ("backward through the graph a
        # second time")
    assert fold_counter.calls == 4  # folded on every call
    assert fused._fold_cache._entry is None
    grad = fused.primary_conv[1].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_cache_is_not_state():
    _, fused = _pair(CONFIGS[0], seed=12)
    with torch.no_grad():
        fused.eval()(torch.randn(1, CONFIGS[0][0], 3, 3))
    assert fused._fold_cache._entry is not None
    assert list(fused.state_dict()) == list(GhostModule(*CONFIGS[0][:2]).state_dict())


# ---------------------------------------------------------------------------------------------------------------
# from_module
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: GhostModule(8, 12),
    lambda: GhostModule(8, 11, ratio=3, dw_size=5, relu=False),
    lambda: variants.OfficialGhost(8, 12, relu=False),
    lambda: variants.TimmStyleGhost(8, 13),
    lambda: variants.OfficialGhostV2(8, 12, mode="original"),
], ids=["ours", "ours-r3k5-noact", "official", "timm-odd", "official-v2-original"])
def test_from_module_shares_parameters(make):
    torch.manual_seed(13)
    source = variants.randomize_batchnorm(make(), seed=13).eval()
    fused = FusedGhostModule.from_module(source)
    assert not fused.training
    src_params = dict(source.named_parameters())
    for name, p in fused.named_parameters():
        assert p is src_params[name], name
    for name, b in fused.named_buffers():
        assert b is dict(source.named_buffers())[name], name
    x = torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        expected = source(x)
        _assert_close(fused(x), expected, EVAL_TOL[torch.float32], "from_module output")
        next(iter(source.parameters())).mul_(2.0)  # shared: the fused module sees the update
        _assert_close(fused(x), source(x), EVAL_TOL[torch.float32], "after updating the source")


def test_from_module_refuses_what_the_op_cannot_compute():
    with pytest.raises(ValueError, match="kernel_size 3x3"):
        FusedGhostModule.from_module(GhostModule(8, 12, kernel_size=3))
    with pytest.raises(ValueError, match="not a Ghost module"):
        FusedGhostModule.from_module(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="FusedGhostConv"):
        FusedGhostModule.from_module(variants.ULGhostConv(8, 12))


# ---------------------------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------------------------


def test_compile_fullgraph_eval_forward():
    _, fused = _pair(CONFIGS[1], seed=14)
    fused.eval()
    x = torch.randn(2, CONFIGS[1][0], 5, 6)
    with torch.no_grad():
        expected = fused(x)
        torch._dynamo.reset()
        compiled = torch.compile(fused, fullgraph=True)
        _assert_close(compiled(x), expected, EVAL_TOL[torch.float32], "compiled")
        fused.cheap_operation[1].running_mean.add_(0.3)  # buffers are graph inputs, not baked-in constants
        _assert_close(compiled(x), fused(x), EVAL_TOL[torch.float32], "compiled after a buffer update")


# ---------------------------------------------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_size=3), "kernel_size=3"),
    (dict(stride=2), "stride=2"),
    (dict(ratio=1), "ratio"),
    (dict(dw_size=4), "dw_size=4 must be odd"),
    (dict(act="gelu"), "unknown act 'gelu'"),
    (dict(backend="tpu"), "unknown backend 'tpu'"),
    (dict(oup=0), "oup"),
    (dict(inp=2.5), "inp"),
])
def test_bad_constructor_arguments_raise(kwargs, match):
    args = dict(inp=8, oup=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        FusedGhostModule(**args)


def test_bad_backend_assignment_and_wrong_device_raise():
    fused = FusedGhostModule(4, 8).eval()
    with pytest.raises(ValueError, match="unknown backend"):
        fused.backend = "gpu"
    fused.backend = "cuda"
    with torch.no_grad(), pytest.raises(ValueError, match="needs CUDA tensors"):
        fused(torch.randn(1, 4, 3, 3))


def test_bad_input_raises_clearly():
    fused = FusedGhostModule(4, 8).eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match="channel mismatch"):
            fused(torch.randn(1, 5, 3, 3))
        with pytest.raises(TypeError, match="dtype mismatch"):
            fused(torch.randn(1, 4, 3, 3, dtype=torch.float64))
