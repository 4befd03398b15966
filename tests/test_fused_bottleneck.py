"""FusedGhostBottleneck and fuse()'s bottleneck step: same state_dict as the block it stands for, the op where it
applies (CPU tensors, inference), the block's own forward everywhere else (training, autograd, other backends),
recognition of this package's, the official and timm's bottlenecks, and refusal of look-alikes."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import ghost_testing as gt
import variants
from ghostkernels import FusedGhostBottleneck, FusedGhostModule, fuse, models
from ghostkernels.nn.recognize import inspect_ghost_bottleneck
from ghostkernels.patch import GhostFuseWarning, NotFusableError

# Eval forward against the block run in float64 (BN not folded there): float32 differs by the fold's extra rounding
# of w*s and the op's summation order; bfloat16 by the folded weights' rounding to bfloat16 and its intermediates.
EVAL_TOL = {
    torch.float32: dict(atol=3e-5, rtol=3e-5),
    torch.bfloat16: dict(atol=6e-2, rtol=3e-2),
}

# (in, mid, out, k, stride, se_ratio): GhostNet's kinds of block: identity shortcut, stride 2 with SE, a stride-1
# shortcut (channel change), k=5.
CONFIGS = [(16, 16, 16, 3, 1, 0.0), (16, 48, 24, 3, 2, 0.0), (24, 72, 40, 5, 2, 0.25), (80, 480, 112, 3, 1, 0.25),
           (40, 120, 40, 5, 1, 0.25)]
CONFIG_IDS = [f"{i}-{m}-{o}_k{k}s{s}{'_se' if se else ''}" for i, m, o, k, s, se in CONFIGS]

BUILDERS = {
    "ours": lambda i, m, o, k, s, se: models.GhostBottleneck(i, m, o, k, s, se_ratio=se),
    "official": lambda i, m, o, k, s, se: variants._OfficialBottleneck(i, m, o, k, s, se),
    "timm": lambda i, m, o, k, s, se: variants.TimmStyleBottleneck(i, m, o, k, s, se, drop_path=0.2),
}


def _assert_close(actual, expected, tol, what):
    assert not torch.isnan(actual).any(), f"{what}: NaN"
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual.double(), expected.double(), atol=tol["atol"] * scale, rtol=tol["rtol"],
                               msg=lambda m: f"{what}: {m}")


def _block(kind, config, seed=0):
    torch.manual_seed(seed)
    return variants.randomize_batchnorm(BUILDERS[kind](*config), seed).eval()


@pytest.fixture
def op_calls(monkeypatch):
    """Counts the calls that take the whole-block op (forward reads the op's arguments only then)."""
    return gt.record_method_calls(monkeypatch, FusedGhostBottleneck, "op_arguments")


def test_constructor_has_the_blocks_state_dict():
    for config in CONFIGS:
        ref = models.GhostBottleneck(*config[:5], se_ratio=config[5])
        fused = FusedGhostBottleneck(*config[:5], se_ratio=config[5])
        assert list(fused.state_dict()) == list(ref.state_dict())
        fused.load_state_dict(ref.state_dict(), strict=True)
        ref.load_state_dict(fused.state_dict(), strict=True)
        assert isinstance(fused.ghost1, FusedGhostModule) and isinstance(fused.ghost2, FusedGhostModule)


@pytest.mark.parametrize("dtype", list(EVAL_TOL), ids=str)
@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_inference_runs_the_op_and_matches_the_block(config, kind, dtype, op_calls):
    block = _block(kind, config, seed=3)
    fused = FusedGhostBottleneck.from_module(block)
    assert list(fused.state_dict()) == list(block.state_dict())
    assert all(a is b for a, b in zip(fused.parameters(), block.parameters()))
    x = torch.randn(2, config[0], 13, 11)
    with torch.no_grad():
        expected = copy.deepcopy(block).double()(x.double())
        got = fused.to(dtype)(x.to(dtype))
    assert len(op_calls) == 1 and got.dtype == dtype
    _assert_close(got, expected, EVAL_TOL[dtype], f"{kind} {config} {dtype}")


def test_from_module_leaves_the_block_alone():
    block = _block("official", CONFIGS[2])
    ghost1 = block.ghost1
    FusedGhostBottleneck.from_module(block)
    assert block.ghost1 is ghost1 and not isinstance(block.ghost1, FusedGhostModule)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_autograd_runs_the_blocks_layers(kind, op_calls):
    config = CONFIGS[2]
    block = _block(kind, config, seed=4)
    fused = FusedGhostBottleneck.from_module(copy.deepcopy(block))
    x = torch.randn(2, config[0], 9, 9)
    out = fused(x)  # eval mode, grad enabled, parameters require grad: the block's forward
    assert not op_calls and out.grad_fn is not None
    out.square().sum().backward()
    ref_out = block(x)
    ref_out.square().sum().backward()
    _assert_close(out.detach(), ref_out.detach(), EVAL_TOL[torch.float32], "output")
    for (name, p), q in zip(fused.named_parameters(), block.parameters()):
        assert p.grad is not None, name
        _assert_close(p.grad, q.grad, dict(atol=1e-4, rtol=1e-4), f"grad {name}")


def test_training_mode_matches_the_block_including_running_stats(op_calls):
    config = CONFIGS[3]
    block = _block("ours", config, seed=5).train()
    fused = FusedGhostBottleneck.from_module(copy.deepcopy(block)).train()
    x = torch.randn(4, config[0], 7, 7)
    with torch.no_grad():
        out, ref = fused(x), block(x)
    assert not op_calls
    _assert_close(out, ref, EVAL_TOL[torch.float32], "train-mode output")
    for (name, a), b in zip(fused.named_buffers(), block.buffers()):
        torch.testing.assert_close(a, b, msg=lambda m: f"buffer {name}: {m}")


def test_drop_path_stays_stochastic_in_training():
    block = variants.TimmStyleBottleneck(16, 32, 16, 3, 1, 0.0, drop_path=0.5).train()
    fused = FusedGhostBottleneck.from_module(block).train()
    x = torch.randn(64, 16, 4, 4)
    torch.manual_seed(0)
    with torch.no_grad():
        out = fused(x)
    ghost = fused.ghost2(fused.ghost1(x))
    dropped = [(out[i] - x[i]).abs().max() < 1e-6 for i in range(64)]  # a dropped sample is its shortcut
    assert 10 < sum(dropped) < 54, ghost.shape


def test_other_backends_and_devices_run_the_block(op_calls):
    block = _block("ours", CONFIGS[1])
    fused = FusedGhostBottleneck.from_module(block, backend="eager")
    assert fused.ghost1.backend == "eager" and fused.ghost2.backend == "eager"
    with torch.no_grad():
        fused(torch.randn(1, 16, 8, 8))
    assert not op_calls
    fused.backend = "cpu"
    assert fused.ghost1.backend == "cpu"
    with torch.no_grad():
        fused(torch.randn(1, 16, 8, 8))
    assert len(op_calls) == 1
    with pytest.raises(ValueError, match="unknown backend"):
        fused.backend = "tpu"


def test_folded_weights_follow_parameter_updates(op_calls):
    block = _block("ours", CONFIGS[2], seed=6)
    fused = FusedGhostBottleneck.from_module(block)
    x = torch.randn(2, 24, 10, 10)
    with torch.no_grad():
        first = fused(x)
        block.se.conv_reduce.weight.mul_(1.5)
        block.shortcut[1].running_var.add_(0.5)
        second = fused(x)
        expected = copy.deepcopy(block).double()(x.double())
        block.se.conv_expand.bias = nn.Parameter(torch.randn(block.se.conv_expand.out_channels))  # a new object
        third = fused(x)
        expected_third = copy.deepcopy(block).double()(x.double())
    assert not torch.equal(first, second) and not torch.equal(second, third)
    _assert_close(second, expected, EVAL_TOL[torch.float32], "after the update")
    _assert_close(third, expected_third, EVAL_TOL[torch.float32], "after a new parameter")


def test_compile_fullgraph_and_export(op_calls):
    config = CONFIGS[2]
    fused = FusedGhostBottleneck.from_module(_block("ours", config, seed=7))
    x = torch.randn(2, config[0], 12, 12)
    with torch.no_grad():
        expected = fused(x)
        torch._dynamo.reset()
        got = torch.compile(fused, fullgraph=True)(x)
        program = torch.export.export(fused, (x,))
    _assert_close(got, expected, EVAL_TOL[torch.float32], "torch.compile")
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.ghostkernels.ghost_bottleneck.default) == 1
    _assert_close(program.module()(x), expected, EVAL_TOL[torch.float32], "torch.export")


# ---------------------------------------------------------------------------------------------------------------
# Recognition
# ---------------------------------------------------------------------------------------------------------------


def _refusals():
    def sigmoid_gate():
        return variants.TimmStyleBottleneck(16, 32, 24, 3, 2, 0.25, se_gate=variants.SigmoidGate), \
            "does not compute a GhostBottleneck"

    def ghost2_with_relu():
        b = models.GhostBottleneck(16, 32, 24, 3, 2)
        b.ghost2 = models.GhostModule(32, 24, relu=True)
        return b, "ghost2 has activation relu"

    def dilated_conv_dw():
        b = models.GhostBottleneck(16, 32, 24, 3, 2)
        b.conv_dw = nn.Conv2d(32, 32, 3, 2, 2, dilation=2, groups=32, bias=False)
        return b, "conv_dw has kernel"

    def extra_layer():
        b = models.GhostBottleneck(16, 32, 16, 3, 1)
        b.norm = nn.BatchNorm2d(16)
        return b, "layers with state besides a GhostBottleneck's: norm"

    def not_a_block():
        return models.GhostModule(8, 16), "not a GhostBottleneck"

    return [sigmoid_gate, ghost2_with_relu, dilated_conv_dw, extra_layer, not_a_block]


@pytest.mark.parametrize("make", _refusals(), ids=lambda f: f.__name__)
def test_look_alikes_are_refused_with_the_reason(make):
    module, reason = make()
    with pytest.raises(NotFusableError, match=reason):
        inspect_ghost_bottleneck(module.eval())


class _Net(nn.Module):
    def __init__(self, *blocks):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(x)


def test_fuse_ghostnet_replaces_every_block_with_the_same_state_dict():
    torch.manual_seed(0)
    ref = variants.randomize_batchnorm(models.ghostnet_100(), seed=1).eval()
    model = copy.deepcopy(ref)
    assert fuse(model, strict=True) is model
    assert sum(isinstance(m, FusedGhostBottleneck) for m in model.modules()) == 16
    assert sum(isinstance(m, FusedGhostModule) for m in model.modules()) == 32
    assert list(model.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        _assert_close(model(x), ref.double()(x.double()), EVAL_TOL[torch.float32], "logits")
    # Training through the fused model: the blocks' own forwards with fused Ghost modules.
    model.train()
    model(x).sum().backward()
    assert model.blocks[3][0].se.conv_reduce.weight.grad is not None


def test_fuse_official_replica_and_blocks_false():
    model = variants.randomize_batchnorm(variants.OfficialGhostNetReplica(), seed=2).eval()
    ghost_only = fuse(copy.deepcopy(model), blocks=False, strict=True)
    assert not any(isinstance(m, FusedGhostBottleneck) for m in ghost_only.modules())
    assert sum(isinstance(m, FusedGhostModule) for m in ghost_only.modules()) == 32
    fused = fuse(model, strict=True)
    assert sum(isinstance(m, FusedGhostBottleneck) for m in fused.modules()) == 16
    # The blocks' own forwards (training, GPU) use the fused Ghost modules.
    assert all(isinstance(b._block.ghost1, FusedGhostModule) for b in fused.modules()
               if isinstance(b, FusedGhostBottleneck))
    again = fuse(fused, backend="eager")  # idempotent; sets the backend
    assert again is fused and all(b.backend == "eager" and b.ghost1.backend == "eager" for b in fused.modules()
                                  if isinstance(b, FusedGhostBottleneck))


def test_fuse_warns_about_a_refused_block_and_strict_raises():
    good = variants.TimmStyleBottleneck(16, 32, 16, 3, 1, 0.25)
    bad = variants.TimmStyleBottleneck(16, 32, 24, 3, 2, 0.25, se_gate=variants.SigmoidGate)
    model = _Net(good, bad).eval()
    with pytest.raises(NotFusableError):
        fuse(copy.deepcopy(model), strict=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fuse(model)
    messages = [str(w.message) for w in caught if issubclass(w.category, GhostFuseWarning)]
    assert len(messages) == 1 and "1 Ghost module(s) or bottleneck(s)" in messages[0]
    assert "blocks.1: (a GhostBottleneck; its Ghost modules are fused)" in messages[0]
    assert isinstance(model.blocks[0], FusedGhostBottleneck)
    assert type(model.blocks[1]) is variants.TimmStyleBottleneck
    assert isinstance(model.blocks[1].ghost1, FusedGhostModule)


def test_a_block_with_an_unfusable_ghost_module_is_reported_once():
    block = models.GhostBottleneck(16, 32, 16, 3, 1)
    block.ghost1 = variants.TanhGatedGhost(16, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fuse(_Net(block).eval())
    messages = [str(w.message) for w in caught if issubclass(w.category, GhostFuseWarning)]
    assert len(messages) == 1 and "1 Ghost module(s)" in messages[0] and "DFC map" in messages[0]


def test_fuse_of_a_lone_block_returns_the_replacement():
    block = _block("ours", CONFIGS[1])
    fused = fuse(block)
    assert isinstance(fused, FusedGhostBottleneck) and fused._block is block
