"""ghostkernels.freeze / unfreeze: with autograd off a frozen model uses its folded weights without checking their
sources (the documented contract: weights changed while frozen are not seen until unfreeze() or freeze() again);
with autograd on it still checks and folds inside the graph."""

from __future__ import annotations

import copy

import torch

import ghostkernels
import variants
from ghostkernels.nn.folding import FoldCache


def _fused_network():
    net = variants.small_ghostnet("ours", seed=3)
    return net, ghostkernels.fuse(copy.deepcopy(net), strict=True)


def _caches(model):
    return [v for m in model.modules() for v in vars(m).values() if isinstance(v, FoldCache)]


def test_freeze_marks_every_fold_cache_and_returns_the_model():
    _, fused = _fused_network()
    caches = _caches(fused)
    assert len(caches) >= 16 + 2  # the bottlenecks, the stem, the last ConvBnAct (and the Ghost modules)
    assert ghostkernels.freeze(fused) is fused and all(c.frozen for c in caches)
    assert ghostkernels.unfreeze(fused) is fused and not any(c.frozen for c in caches)


def test_frozen_model_matches_and_keeps_its_folds_until_unfrozen():
    net, fused = _fused_network()
    x = torch.randn(2, 3, 64, 64)
    ghostkernels.freeze(fused)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), atol=3e-5, rtol=3e-5)
        torch.testing.assert_close(fused(x), net(x), atol=3e-5, rtol=3e-5)  # from the frozen folds
        bn = fused.blocks[1][0].ghost1.primary_conv[1]
        before = fused(x)
        bn.running_var.mul_(4.0)  # not seen while frozen (the contract)
        torch.testing.assert_close(fused(x), before)
        ghostkernels.unfreeze(fused)
        after = fused(x)
    reference = copy.deepcopy(fused)
    for m in reference.modules():
        if hasattr(m, "backend"):
            m.backend = "eager"
    with torch.no_grad():
        torch.testing.assert_close(after, reference(x), atol=3e-5, rtol=3e-5)
    assert not torch.allclose(before, after)


def test_freeze_refolds_weights_changed_before_it():
    _, fused = _fused_network()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fused(x)  # caches folds of the current weights
        fused.conv_stem.weight.mul_(0.5)
        expected = fused(x)  # unfrozen: the change is seen
        fused.conv_stem.weight.mul_(2.0)
        ghostkernels.freeze(fused)
        got = fused(x)
        ghostkernels.unfreeze(fused)
        torch.testing.assert_close(got, fused(x))
    assert not torch.allclose(got, expected)


def test_frozen_model_with_autograd_on_still_gets_gradients():
    _, fused = _fused_network()
    ghostkernels.freeze(fused)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused(x)  # a frozen fold exists
    fused(x).square().mean().backward()  # eval mode, autograd on: the folds are redone inside the graph
    conv = fused.blocks[1][0].ghost1.primary_conv[0]
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
