"""ghostkernels.models: parameter counts of the paper's table, official/timm state_dict key names and logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import variants
from ghostkernels import models

WIDTHS = {"ghostnet_050": 0.5, "ghostnet_100": 1.0, "ghostnet_130": 1.3}

# The paper's table (Table 7 of arXiv 1911.11907 and the official README), 1000 classes.
PAPER_PARAMS = {"ghostnet_050": 2_587_292, "ghostnet_100": 5_182_508, "ghostnet_130": 7_358_820}

# Ghost modules of GhostNet 1.0x at 224x224: (inp, oup, input resolution), ghost1 then ghost2 of each bottleneck.
GHOSTNET_100_MODULES = [
    (16, 16, 112), (16, 16, 112), (16, 48, 112), (48, 24, 56), (24, 72, 56), (72, 24, 56), (24, 72, 56),
    (72, 40, 28), (40, 120, 28), (120, 40, 28), (40, 240, 28), (240, 80, 14), (80, 200, 14), (200, 80, 14),
    (80, 184, 14), (184, 80, 14), (80, 184, 14), (184, 80, 14), (80, 480, 14), (480, 112, 14), (112, 672, 14),
    (672, 112, 14), (112, 672, 14), (672, 160, 7), (160, 960, 7), (960, 160, 7), (160, 960, 7), (960, 160, 7),
    (160, 960, 7), (960, 160, 7), (160, 960, 7), (960, 160, 7),
]


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_parameter_count_equals_paper(name):
    model = getattr(models, name)()
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS[name]


def test_num_classes():
    model = models.ghostnet_050(num_classes=10).eval()
    assert model.classifier.out_features == 10
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_state_dict_key_names():
    keys = set(models.ghostnet_100().state_dict())
    expected = {
        "conv_stem.weight", "bn1.running_var", "bn1.num_batches_tracked",
        "blocks.0.0.ghost1.primary_conv.0.weight", "blocks.0.0.ghost1.primary_conv.1.running_mean",
        "blocks.0.0.ghost1.cheap_operation.0.weight", "blocks.0.0.ghost1.cheap_operation.1.bias",
        "blocks.0.0.ghost2.primary_conv.1.weight", "blocks.0.0.ghost2.cheap_operation.1.running_var",
        "blocks.1.0.conv_dw.weight", "blocks.1.0.bn_dw.running_mean",
        "blocks.1.0.shortcut.0.weight", "blocks.1.0.shortcut.1.weight", "blocks.1.0.shortcut.2.weight",
        "blocks.1.0.shortcut.3.running_var",
        "blocks.3.0.se.conv_reduce.weight", "blocks.3.0.se.conv_reduce.bias", "blocks.3.0.se.conv_expand.bias",
        "blocks.9.0.conv.weight", "blocks.9.0.bn1.weight", "blocks.9.0.bn1.running_mean",
        "conv_head.weight", "conv_head.bias", "classifier.weight", "classifier.bias",
    }
    assert expected <= keys, sorted(expected - keys)
    # No activation holds state; stride-1 blocks have no conv_dw; the stage of identical shapes has no shortcut conv.
    assert not any(".primary_conv.2" in k or ".cheap_operation.2" in k for k in keys)
    assert not any(k.startswith("blocks.0.0.conv_dw") or k.startswith("blocks.0.0.shortcut.") for k in keys)
    assert len([k for k in keys if k.endswith("primary_conv.0.weight")]) == 32


def test_ghost_module_official_layout():
    with_relu = models.GhostModule(8, 11, relu=True)
    without = models.GhostModule(8, 11, ratio=3, dw_size=5, relu=False)
    assert isinstance(with_relu.primary_conv[2], nn.ReLU) and with_relu.primary_conv[2].inplace
    assert isinstance(with_relu.cheap_operation[2], nn.ReLU)
    assert type(without.primary_conv[2]) is nn.Sequential and len(without.primary_conv[2]) == 0
    assert (with_relu.oup, with_relu.init_channels, with_relu.new_channels) == (11, 6, 6)
    assert (without.oup, without.init_channels, without.new_channels) == (11, 4, 8)
    assert without.cheap_operation[0].groups == 4 and without.cheap_operation[0].kernel_size == (5, 5)
    with torch.no_grad():
        assert with_relu.eval()(torch.randn(2, 8, 5, 6)).shape == (2, 11, 5, 6)  # odd oup: sliced


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("oup,ratio,dw_size", [(16, 2, 3), (11, 2, 3), (13, 3, 5)])
def test_ghost_module_matches_official_replica(relu, oup, ratio, dw_size):
    ours = models.GhostModule(6, oup, ratio=ratio, dw_size=dw_size, relu=relu)
    official = variants.OfficialGhost(6, oup, ratio=ratio, dw_size=dw_size, relu=relu)
    assert list(ours.state_dict()) == list(official.state_dict())
    variants.randomize_batchnorm(official, seed=oup)
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(3, 6, 7, 5)
    for mode in (False, True):  # eval, then train (batch statistics, running-stat updates)
        ours.train(mode), official.train(mode)
        assert torch.equal(ours(x), official(x))
    for a, b in zip(ours.buffers(), official.buffers()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(WIDTHS))
def test_official_replica_state_dict_loads_strict_and_gives_same_logits(name):
    torch.manual_seed(0)
    official = variants.randomize_batchnorm(variants.OfficialGhostNetReplica(width=WIDTHS[name]), seed=1).eval()
    ours = getattr(models, name)().eval()
    assert list(ours.state_dict()) == list(official.state_dict())
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), official(x))
    official.load_state_dict(ours.state_dict(), strict=True)  # and back


def test_ghost_module_shapes_of_ghostnet_100():
    model = models.ghostnet_100().eval()
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append((args[0].shape[1], out.shape[1],
                                                                          args[0].shape[2])))
             for m in model.modules() if isinstance(m, models.GhostModule)]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert seen == GHOSTNET_100_MODULES


def test_width_rounding():
    # make_divisible(v, 4): nearest multiple of 4, at least 4, never more than 10% below v.
    assert [models.make_divisible(v) for v in (8.0, 10.0, 21.6, 1.0, 62.4, 87.36)] == [8, 12, 20, 4, 64, 88]
    m130 = models.ghostnet_130()
    assert m130.conv_stem.out_channels == 20 and m130.blocks[9][0].conv.out_channels == 1248
    # init channels that are not multiples of 8 at width 1.3 (facts file)
    inits = [m.init_channels for m in m130.modules() if isinstance(m, models.GhostModule)]
    assert {10, 26, 46, 78} <= set(inits)


def test_train_mode_uses_dropout_and_batch_statistics():
    model = models.ghostnet_050()
    mean_before = model.bn1.running_mean.clone()
    model.train()
    model(torch.randn(2, 3, 32, 32))
    assert not torch.equal(model.bn1.running_mean, mean_before)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("make,match", [
    (lambda: models.GhostModule(8, 16, ratio=1), "ratio"),
    (lambda: models.GhostModule(8, 0), "oup"),
    (lambda: models.GhostModule(8, 16, dw_size=0), "dw_size"),
    (lambda: models.GhostNet(width=0.0), "width"),
    (lambda: models.GhostNet(num_classes=0), "num_classes"),
    (lambda: models.GhostNet(dropout=1.0), "dropout"),
    (lambda: models.GhostNet(cfgs=()), "cfgs"),
])
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _timm_ghostnet():
    try:
        import timm.models.ghostnet as timm_ghostnet
    except ImportError as e:
        pytest.skip(f"timm.models.ghostnet is not importable ({type(e).__name__}: {e}); timm needs torchvision, "
                    f"which has no build for this torch")
    return timm_ghostnet


@pytest.mark.parametrize("name", list(WIDTHS))
def test_real_timm_state_dict_loads_strict_and_gives_same_logits(name):
    timm_ghostnet = _timm_ghostnet()
    theirs = variants.randomize_batchnorm(getattr(timm_ghostnet, name)(), seed=2).eval()
    ours = getattr(models, name)().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    assert sum(p.numel() for p in theirs.parameters()) == PAPER_PARAMS[name]
