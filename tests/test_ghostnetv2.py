"""GhostNetV2 (and GhostNetV3's gated modules) end to end: the reference model's names, parameters and logits
against an independent transcription of timm's network (tests/variants.py: timm cannot be installed here, so the
logits are matched against that replica, not timm itself), fuse() converting every gated Ghost module and
bottleneck, freeze() running the whole network as one chain with ghost_bottleneck_gated steps, and the gated
bottleneck op against its reference."""

from __future__ import annotations

import copy

import pytest
import torch

import variants
from ghost_testing import Tol, assert_close_to_reference

import ghostkernels
from ghostkernels import models, ops
from ghostkernels.nn import FusedGatedGhostModule, FusedGhostBottleneck, FusedGhostModule
from ghostkernels.ops.layouts import CHAIN_STEP_BY_NAME
from ghostkernels.ops.reference import ghost_bottleneck_reference
from ghostkernels.patch.frozen import network_plan

NET_TOL = {torch.float32: 2e-4, torch.bfloat16: 6e-2}  # relative to the largest logit


def _rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def test_reference_ghostnetv2_has_timms_names_sizes_and_gated_positions():
    net = models.ghostnetv2_100()
    replica = variants.TimmStyleGhostNet(version="v2")
    ours = net.state_dict()
    theirs = replica.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert sum(p.numel() for p in net.parameters()) == 6_156_908  # timm's ghostnetv2_100: 6.16M parameters
    gated = [name for name, m in net.named_modules() if isinstance(m, models.GhostModuleV2)]
    blocks = [f"blocks.{i}.{j}" for i, stage in enumerate(net.blocks[:-1]) for j in range(len(stage))]
    assert gated == [f"{b}.ghost1" for b in blocks[2:]]  # layer index > 1: 14 of the 16 bottlenecks


@torch.no_grad()
def test_reference_ghostnetv2_logits_match_the_timm_replica():
    replica = variants.randomize_batchnorm(variants.TimmStyleGhostNet(version="v2"), seed=1).eval()
    net = models.ghostnetv2_100().eval()
    net.load_state_dict(replica.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    assert _rel(net(x), replica(x)) <= 1e-6


def _fused_and_frozen(net, x):
    """(eager logits, fuse() logits, fuse()+freeze() logits, the fused network) for a float32 net."""
    with torch.no_grad():
        want = net(x)
    ghostkernels.fuse(net, strict=True)
    with torch.no_grad():
        fused = net(x)
    ghostkernels.freeze(net)
    with torch.inference_mode():
        frozen = net(x)
    return want, fused, frozen, net


def test_fuse_and_freeze_ghostnetv2_100():
    net = variants.randomize_batchnorm(models.ghostnetv2_100(), seed=2).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    want, fused, frozen, net = _fused_and_frozen(net, x)
    assert sum(isinstance(m, FusedGatedGhostModule) for m in net.modules()) == 14
    assert sum(isinstance(m, FusedGhostModule) for m in net.modules()) == 32
    blocks = [m for m in net.modules() if isinstance(m, FusedGhostBottleneck)]
    assert len(blocks) == 16 and sum(b.gated for b in blocks) == 14
    plan = network_plan(net)
    assert plan is not None, "freeze() did not install the whole-network chain"
    assert plan.program.count(CHAIN_STEP_BY_NAME["ghost_bottleneck_gated"].opcode) >= 14
    assert _rel(fused, want) <= NET_TOL[torch.float32]
    assert _rel(frozen, want) <= NET_TOL[torch.float32]


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_fuse_and_freeze_the_timm_replicas(version):
    net = variants.randomize_batchnorm(variants.TimmStyleGhostNet(width=0.5, version=version), seed=3).eval()
    if version == "v3":
        net.reparameterize()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    want, fused, frozen, net = _fused_and_frozen(net, x)
    assert sum(isinstance(m, FusedGatedGhostModule) for m in net.modules()) == 14
    assert sum(isinstance(m, FusedGhostBottleneck) for m in net.modules()) == 16
    assert network_plan(net) is not None
    assert _rel(fused, want) <= NET_TOL[torch.float32]
    assert _rel(frozen, want) <= NET_TOL[torch.float32]


def test_fused_ghostnetv2_in_bfloat16():
    net = variants.randomize_batchnorm(models.ghostnetv2_100(), seed=4).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = net.double()(x.double())
    ghostkernels.fuse(net.float(), strict=True)
    ghostkernels.freeze(net.bfloat16())
    with torch.inference_mode():
        got = net(x.bfloat16())
    assert network_plan(net) is not None
    assert _rel(got, want) <= NET_TOL[torch.bfloat16]


def test_gated_blocks_train_through_the_fused_ops():
    """Training with frozen BatchNorms: the gated module's fused path (dfc_gate + ghost_module_gated, both with a
    backward) must give autograd's gradients of the original layers."""
    block = variants.randomize_batchnorm(models.GhostBottleneck(8, 16, 8, mode="attn"), seed=5).eval()
    ref = copy.deepcopy(block)
    x = torch.randn(2, 8, 9, 9, generator=torch.Generator().manual_seed(5))
    fused = torch.nn.Sequential(block)
    ghostkernels.fuse(fused)
    assert isinstance(fused[0], FusedGhostBottleneck) and isinstance(fused[0].ghost1, FusedGatedGhostModule)
    out = fused(x)
    want = ref(x)
    grads = torch.autograd.grad(out.sum(), list(fused.parameters()))
    ref_grads = torch.autograd.grad(want.sum(), list(ref.parameters()))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def _bottleneck_args(cin, mid, out, k, stride, se, gen):
    def w(*shape, scale=0.5):
        return torch.randn(*shape, generator=gen) * scale

    ghost = lambda c, o: (w(o // 2, c, 1, 1, scale=2 / c ** 0.5), w(o // 2), w(o // 2, 1, 3, 3), w(o // 2))  # noqa
    gate = (w(mid, cin, 1, 1, scale=2 / cin ** 0.5), w(mid), w(mid, 1, 1, 5), w(mid), w(mid, 1, 5, 1), w(mid))
    dw = (w(mid, 1, k, k), w(mid)) if stride == 2 else None
    rd = max(4, mid // 4)
    se_w = (w(rd, mid, 1, 1), w(rd), w(mid, rd, 1, 1), w(mid)) if se else None
    shortcut = None if (cin == out and stride == 1) else (w(cin, 1, k, k), w(cin), w(out, cin, 1, 1), w(out))
    return ghost(cin, mid), gate, dw, se_w, ghost(mid, out), shortcut


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", [(16, 32, 16, 3, 1, False, 14), (24, 72, 40, 5, 2, True, 28),
                                 (40, 64, 40, 3, 1, True, 7)], ids=["s1", "s2-se", "7x7-se"])
def test_gated_bottleneck_op_matches_the_reference(cfg, dtype):
    cin, mid, out, k, stride, se, hw = cfg
    gen = torch.Generator().manual_seed(hw)
    ghost1, gate, dw, se_w, ghost2, shortcut = _bottleneck_args(cin, mid, out, k, stride, se, gen)
    x = torch.randn(2, cin, hw, hw, generator=gen)
    cast = lambda g: None if g is None else tuple(t.to(dtype) for t in g)  # noqa: E731
    got = ops.ghost_bottleneck(x.to(dtype), cast(ghost1), mid, cast(ghost2), out, stride=stride, dw=cast(dw),
                               se=cast(se_w), shortcut=cast(shortcut), gate=cast(gate))
    d = lambda g: None if g is None else tuple(t.to(dtype).double() for t in g)  # noqa: E731
    want = ghost_bottleneck_reference(x.to(dtype).double(), d(ghost1), mid, d(ghost2), out, "relu", stride, d(dw),
                                      d(se_w), d(shortcut), gate=d(gate))
    tol = Tol(2e-5, 1e-5) if dtype == torch.float32 else Tol(3e-2, 2e-2)
    assert_close_to_reference(got, want, tol, "ghost_bottleneck_gated")
