"""ghostkernels.fuse: recognition by structure, exact semantics per variant, shared parameters, unchanged
state_dict keys, one warning for what cannot be fused (or an error with strict=True), GhostNet logits."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import ghostkernels
import variants
from ghostkernels import FusedGatedGhostModule, FusedGhostConv, FusedGhostModule, fuse, models
from ghostkernels.patch import GhostFuseWarning, NotFusableError

# Eval-mode outputs after fuse() against before, float32 on the CPU: the BN fold and the op's summation order
# change rounding only. Scaled as |err| <= ATOL * max(1, max|before|) + RTOL * |before|.
FP32_ATOL, FP32_RTOL = 2e-5, 2e-5
# Issue 2's acceptance criterion for whole GhostNets: max|after - before| <= 1e-5 * max|before| (float32, CPU).
GHOSTNET_REL = 1e-5


def _assert_close(actual, expected, what):
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, atol=FP32_ATOL * scale, rtol=FP32_RTOL, msg=lambda m: f"{what}: {m}")


def _fuse_quietly(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", GhostFuseWarning)
        return fuse(model, **kwargs)


def _param_ids(model):
    return {name: id(p) for name, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------------------------
# GhostNet
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ghostnet_050", "ghostnet_100", "ghostnet_130"])
def test_fuse_ghostnet_replaces_32_modules_and_keeps_logits(name):
    torch.manual_seed(0)
    model = variants.randomize_batchnorm(getattr(models, name)(), seed=1).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    keys, params = list(model.state_dict()), _param_ids(model)
    assert _fuse_quietly(model) is model
    assert sum(isinstance(m, FusedGhostModule) for m in model.modules()) == 32
    assert not any(type(m) is models.GhostModule for m in model.modules())
    assert list(model.state_dict()) == keys and _param_ids(model) == params
    with torch.no_grad():
        after = model(x)
    rel = float((after - before).abs().max() / before.abs().max())
    assert rel <= GHOSTNET_REL, f"max relative deviation {rel:.3g}"


def test_fused_ghostnet_trains_like_the_original():
    """A fused GhostNet in train mode (every Ghost module on the batch-statistics op, the bottlenecks' other layers
    eager) against the same network in float64: logits, every parameter's gradient, every running statistic and
    num_batches_tracked. Batch 4 at 64x64, so that even the last stage's BatchNorms average 16 values: at 2x32x32
    they see 2 per channel, and float32 eager itself is 50% off float64 there (a BN of two nearly equal values is
    all rounding)."""
    torch.manual_seed(2)
    ref = variants.randomize_batchnorm(models.ghostnet_050(num_classes=10, dropout=0.0), seed=2).train()
    fused = models.ghostnet_050(num_classes=10, dropout=0.0)
    fused.load_state_dict(ref.state_dict())
    _fuse_quietly(fused.train())
    ref = ref.double()
    x = torch.randn(4, 3, 64, 64)
    out, expected = fused(x), ref(x.double())
    _assert_close(out.double(), expected.detach(), "logits")
    out.sum().backward()
    expected.sum().backward()
    for (name, p), p_ref in zip(fused.named_parameters(), ref.parameters()):
        scale = max(1.0, float(p_ref.grad.abs().max()))
        torch.testing.assert_close(p.grad.double(), p_ref.grad, atol=5e-5 * scale, rtol=5e-5, msg=name)
    for (name, b), b_ref in zip(fused.named_buffers(), ref.buffers()):
        if b.is_floating_point():
            _assert_close(b.double(), b_ref, name)
        else:
            assert torch.equal(b, b_ref), name


def test_compile_fullgraph_of_fused_ghostnet():
    model = variants.randomize_batchnorm(models.ghostnet_050(num_classes=10), seed=3).eval()
    _fuse_quietly(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        torch._dynamo.reset()
        # aot_eager traces the whole model through dynamo and AOTAutograd with the ops' fake kernels (the graph-break
        # check) without inductor's code generation, which would take minutes on two cores for 32 modules.
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        _assert_close(compiled(x), expected, "compiled fused GhostNet")


# ---------------------------------------------------------------------------------------------------------------
# Each variant that must fuse
# ---------------------------------------------------------------------------------------------------------------


def _conv_pair_fused_by_ultralytics(act=True):
    return variants.ultralytics_fuse(variants.randomize_batchnorm(variants.ULGhostConv(6, 12, act=act), seed=4))


FUSABLE = {
    # name: (factory, fused class, out_channels the fused module must slice to, act)
    "ours": (lambda: models.GhostModule(6, 12), FusedGhostModule, 12, "relu"),
    "ours-odd-ratio3-k5-noact": (lambda: models.GhostModule(6, 13, ratio=3, dw_size=5, relu=False),
                                 FusedGhostModule, 13, "identity"),
    "official-relu": (lambda: variants.OfficialGhost(6, 11), FusedGhostModule, 11, "relu"),
    "official-norelu": (lambda: variants.OfficialGhost(6, 12, relu=False), FusedGhostModule, 12, "identity"),
    "official-v2-original": (lambda: variants.OfficialGhostV2(6, 12, mode="original"), FusedGhostModule, 12,
                             "relu"),
    # GhostNetV2's DFC-gated modules (the probe is 7x6, so the 3x3 map upsamples by both index formulas)
    "official-v2-attn": (lambda: variants.OfficialGhostV2(6, 12, mode="attn"), FusedGatedGhostModule, 12, "relu"),
    "ours-v2": (lambda: models.GhostModuleV2(6, 12), FusedGatedGhostModule, 12, "relu"),
    "timm-v2": (lambda: variants.TimmStyleGhostV2(6, 12), FusedGatedGhostModule, 12, "relu"),
    "timm-v2-odd-slice-identity": (lambda: variants.TimmStyleGhostV2(6, 11, use_act=False), FusedGatedGhostModule,
                                   11, "identity"),
    "timm-relu": (lambda: variants.TimmStyleGhost(6, 12), FusedGhostModule, 12, "relu"),
    "timm-identity": (lambda: variants.TimmStyleGhost(6, 9, act_layer=nn.Identity), FusedGhostModule, 9,
                      "identity"),
    "timm-use_act-false": (lambda: variants.TimmStyleGhostUseAct(6, 12, use_act=False), FusedGhostModule, 12,
                           "identity"),
    "timm-hardswish": (lambda: variants.TimmStyleGhost(6, 12, act_layer=nn.Hardswish), FusedGhostModule, 12,
                       "hardswish"),
    # V3 'original' returns cat(x1, x2) without the slice: out_chs 11 gives 12 channels.
    "timm-v3-reparameterized": (lambda: _reparameterized_v3(6, 11), FusedGhostModule, 12, "relu"),
    "timm-v3-reparameterized-identity": (lambda: _reparameterized_v3(6, 12, act_layer=nn.Identity),
                                         FusedGhostModule, 12, "identity"),
    # V3 'shortcut' slices to out_chs and multiplies by the V2-style gate
    "timm-v3-shortcut-reparameterized": (lambda: _reparameterized_v3(6, 11, mode="shortcut"),
                                         FusedGatedGhostModule, 11, "relu"),
    "ultralytics-ghostconv": (lambda: variants.ULGhostConv(6, 12), FusedGhostConv, 12, "silu"),
    "ultralytics-ghostconv-act-false": (lambda: variants.ULGhostConv(6, 10, act=False), FusedGhostConv, 10,
                                        "identity"),
    "ultralytics-ghostconv-after-ultralytics-fuse": (_conv_pair_fused_by_ultralytics, FusedGhostConv, 12, "silu"),
}


def _reparameterized_v3(inp, oup, **kwargs):
    module = variants.randomize_batchnorm(variants.TimmStyleGhostV3(inp, oup, **kwargs), seed=5).eval()
    x = torch.randn(2, inp, 5, 5)
    with torch.no_grad():
        before = module(x)
        module.reparameterize()
        _assert_close(module(x), before, "the V3 replica's own reparameterization")
    return module


@pytest.mark.parametrize("variant", list(FUSABLE))
def test_fuse_variant_in_eval_mode(variant):
    factory, cls, out_channels, act = FUSABLE[variant]
    torch.manual_seed(6)
    ghost = variants.randomize_batchnorm(factory(), seed=6)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), ghost, nn.ReLU()).eval()
    x = torch.randn(2, 3, 7, 6)
    with torch.no_grad():
        before = model(x)
    keys, params = list(model.state_dict()), _param_ids(model)
    _fuse_quietly(model)
    fused = model[1]
    assert type(fused) is cls
    assert (fused.out_channels, fused.act) == (out_channels, act)
    assert list(model.state_dict()) == keys and _param_ids(model) == params
    with torch.no_grad():
        after = model(x)
    assert after.shape == before.shape
    _assert_close(after, before, variant)


@pytest.mark.parametrize("variant", [v for v in FUSABLE if "reparameterized" not in v and "after" not in v])
def test_fuse_variant_in_train_mode_computes_the_original(variant):
    """In train mode (batch statistics) the fused module runs ghost_module_bn_train: the original's output and
    running statistics up to float32 rounding."""
    factory = FUSABLE[variant][0]
    torch.manual_seed(7)
    ghost = variants.randomize_batchnorm(factory(), seed=7).train()
    fused = fuse(nn.Sequential(ghost))[0]
    reference = variants.randomize_batchnorm(factory(), seed=7).train()
    reference.load_state_dict(ghost.state_dict())
    x = torch.randn(2, 6, 5, 5)
    _assert_close(fused(x), reference(x), variant)
    for b, b_ref in zip(fused.buffers(), reference.buffers()):
        if b.is_floating_point():
            _assert_close(b, b_ref, variant)
        else:
            assert torch.equal(b, b_ref)


def test_fused_ghostconv_wrapper_and_frozen_bn_gradients():
    ghost_conv = variants.randomize_batchnorm(variants.ULGhostConv(6, 12), seed=8)
    fused = FusedGhostConv(ghost_conv, backend="cpu").eval()
    assert fused.cv1 is ghost_conv.cv1 and fused.cv2 is ghost_conv.cv2
    x = torch.randn(2, 6, 5, 5)
    fused(x).square().sum().backward()
    for name, p in fused.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="FusedGhostModule.from_module"):
        FusedGhostConv(models.GhostModule(6, 12))


# ---------------------------------------------------------------------------------------------------------------
# What must be left alone
# ---------------------------------------------------------------------------------------------------------------


def _mixed_activations():
    module = variants.OfficialGhost(6, 12)
    module.cheap_operation[2] = nn.Sequential()
    return module


def _bn_without_running_stats():
    module = variants.OfficialGhost(6, 12)
    module.primary_conv[1] = nn.BatchNorm2d(6, track_running_stats=False)
    return module


class _ForwardTakesTwoInputs(variants.OfficialGhost):
    def forward(self, x, scale):
        return super().forward(x) * scale


def _gate_with_even_kernel():
    module = variants.OfficialGhostV2(6, 12, mode="attn")
    module.short_conv[2] = nn.Conv2d(12, 12, (1, 4), padding=(0, 2), groups=12, bias=False)
    return module


NOT_FUSABLE = {
    "v2-gate-with-tanh": (lambda: variants.TanhGatedGhost(6, 12), "times its upsampled DFC map"),
    "v2-gate-even-kernel": (_gate_with_even_kernel, "odd (1, k) and (k, 1) kernels"),
    "v3-not-reparameterized": (lambda: variants.TimmStyleGhostV3(6, 12), "reparameterize()"),
    "primary-kernel-3": (lambda: variants.OfficialGhost(6, 12, kernel_size=3), "kernel_size 3x3"),
    "stride-2": (lambda: variants.TimmStyleGhost(6, 12, stride=2), "stride"),
    "leaky-relu": (lambda: variants.TimmStyleGhost(6, 12, act_layer=nn.LeakyReLU),
                   "LeakyReLU, an activation outside"),
    "mixed-activations": (_mixed_activations, "activations differ"),
    "bn-without-running-stats": (_bn_without_running_stats, "running statistics"),
    "ultralytics-ghostconv-k3": (lambda: variants.ULGhostConv(6, 12, k=3), "kernel_size 3x3"),
    "ultralytics-ghostconv-grouped": (lambda: variants.ULGhostConv(6, 12, g=2), "grouped"),
    "gsconv-shuffle": (lambda: variants.GSConvLike(6, 12), "does not compute"),
    "depthwise-residual-bottleneck": (lambda: variants.DepthwiseResidualBottleneck(6), "does not compute"),
    "forward-fails-on-one-input": (lambda: _ForwardTakesTwoInputs(6, 12), "forward failed"),
}


@pytest.mark.parametrize("variant", list(NOT_FUSABLE))
def test_unfusable_variant_is_left_alone_with_one_warning(variant):
    factory, reason = NOT_FUSABLE[variant]
    torch.manual_seed(9)
    ghost = factory()
    model = nn.Sequential(nn.Identity(), nn.Sequential(ghost))
    flags = [m.training for m in model.modules()]
    with pytest.warns(GhostFuseWarning) as record:
        assert fuse(model) is model
    assert len(record) == 1
    message = str(record[0].message)
    assert "1.0: " in message and reason in message, message
    assert model[1][0] is ghost
    assert [m.training for m in model.modules()] == flags  # the probe restored every training flag

    with pytest.raises(NotFusableError, match="1.0: ") as excinfo:
        fuse(model, strict=True)
    assert reason in str(excinfo.value)


def test_one_warning_names_every_refused_module_and_the_rest_is_fused():
    model = nn.Sequential(variants.TanhGatedGhost(6, 12), variants.OfficialGhost(12, 12),
                          nn.Sequential(variants.OfficialGhost(12, 12, kernel_size=3)))
    with pytest.warns(GhostFuseWarning) as record:
        fuse(model)
    assert len(record) == 1
    message = str(record[0].message)
    assert "2 Ghost module(s)" in message and "\n  0: " in message and "\n  2.0: " in message
    assert isinstance(model[1], FusedGhostModule) and isinstance(model[0], variants.TanhGatedGhost)


def test_strict_raises_before_changing_anything():
    good = variants.OfficialGhost(6, 6)
    model = nn.Sequential(good, variants.OfficialGhost(6, 12, stride=2))
    with pytest.raises(NotFusableError, match="stride"):
        fuse(model, strict=True)
    assert model[0] is good


def test_other_cv1_cv2_modules_are_not_candidates():
    class C2fLike(nn.Module):  # Ultralytics' C2f/C3/Bottleneck: dense cv2
        def __init__(self):
            super().__init__()
            self.cv1 = variants.ULConv(6, 8, 1)
            self.cv2 = variants.ULConv(8, 6, 3)

        def forward(self, x):
            return x + self.cv2(self.cv1(x))

    model = nn.Sequential(C2fLike())
    _fuse_quietly(model)
    assert isinstance(model[0], C2fLike)


# ---------------------------------------------------------------------------------------------------------------
# Walking the model
# ---------------------------------------------------------------------------------------------------------------


def test_shared_module_is_replaced_once_everywhere():
    shared = variants.OfficialGhost(6, 6)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    _fuse_quietly(model)
    assert isinstance(model[0], FusedGhostModule) and model[0] is model[2]


def test_root_ghost_module_returns_the_replacement():
    ghost = models.GhostModule(6, 12).eval()
    fused = _fuse_quietly(ghost)
    assert isinstance(fused, FusedGhostModule) and fused.primary_conv is ghost.primary_conv


def test_fuse_is_idempotent_and_updates_the_backend():
    model = nn.Sequential(models.GhostModule(6, 12))
    _fuse_quietly(model)
    first = model[0]
    _fuse_quietly(model, backend="eager")
    assert model[0] is first and first.backend == "eager"


def test_fuse_does_not_touch_the_global_rng_or_training_flags():
    model = models.ghostnet_050().train()
    model.blocks[0].eval()
    model.blocks[1][0].ghost1.primary_conv[1].eval()  # a frozen BN inside a Ghost module in train mode
    flags = [m.training for m in model.modules()]  # the replacements take their originals' places in this order
    state = torch.get_rng_state()
    _fuse_quietly(model)
    assert torch.equal(torch.get_rng_state(), state)
    assert [m.training for m in model.modules()] == flags


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown backend"):
        fuse(models.GhostModule(4, 8), backend="gpu")
    with pytest.raises(TypeError, match="nn.Module"):
        fuse("ghostnet")


# ---------------------------------------------------------------------------------------------------------------
# Real timm (when importable)
# ---------------------------------------------------------------------------------------------------------------


def _timm_ghostnet():
    try:
        import timm.models.ghostnet as timm_ghostnet
    except ImportError as e:
        pytest.skip(f"timm.models.ghostnet is not importable ({type(e).__name__}: {e}); timm needs torchvision, "
                    f"which has no build for this torch")
    return timm_ghostnet


@pytest.mark.parametrize("name,reparameterize,fused_count,refused_count", [
    ("ghostnet_100", False, 32, 0),
    ("ghostnetv2_100", False, 32, 0),  # 14 of them GhostModuleV2 with the DFC gate
    ("ghostnetv3_100", True, 32, 0),  # after reparameterize(): 14 of them in mode 'shortcut', gated
])
def test_real_timm_models(name, reparameterize, fused_count, refused_count):
    timm_ghostnet = _timm_ghostnet()
    model = variants.randomize_batchnorm(getattr(timm_ghostnet, name)(), seed=10).eval()
    if reparameterize:
        for m in list(model.modules()):
            if m is not model and hasattr(m, "reparameterize"):
                m.reparameterize()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    keys = list(model.state_dict())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fuse(model)
    refused = [str(r.message) for r in record if issubclass(r.category, GhostFuseWarning)]
    assert len(refused) == (1 if refused_count else 0)
    if refused_count:
        assert f"{refused_count} Ghost module(s)" in refused[0]
    assert sum(isinstance(m, FusedGhostModule) for m in model.modules()) == fused_count
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        after = model(x)
    assert float((after - before).abs().max() / before.abs().max()) <= GHOSTNET_REL


def test_package_exports():
    assert ghostkernels.fuse is fuse and ghostkernels.FusedGhostModule is FusedGhostModule
    assert ghostkernels.GhostModule is models.GhostModule and ghostkernels.models is models
