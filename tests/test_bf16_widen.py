"""bfloat16 in the generic CPU kernels with the GEMMs and convolutions widened to float32 (csrc/cpu/util_bf16_widen.h,
GHOSTKERNELS_CPU_BF16_WIDEN): both settings on every machine, each op against its float64 reference; the profiler
shows which dtype ATen's GEMMs and convolutions were given; the knob's bad values raise; a frozen GhostNet and a
gated (V2-style) one in bfloat16 widened against float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

import ghost_testing as gt
import ghostkernels
import variants
from ghostkernels.ops.reference import activation, dfc_gate_reference, ghost_module_reference

BF16 = gt.forward_tol("cpu", torch.bfloat16)  # one bfloat16 rounding of the output after float accumulation
WIDEN = ("0", "1")
# Networks: largest error measured 4.6e-3-5.3e-3 of the largest logit, widened or not (eager bfloat16: 4.6e-3-5.7e-3).
NET_TOL = gt.Tol(atol=2e-2, rtol=2e-2)
ATEN_PRODUCTS = ("aten::mm", "aten::addmm", "aten::conv2d")


@pytest.fixture
def generic(monkeypatch):
    """The generic kernels (the ones that call ATen's GEMMs and convolutions) on every machine."""
    monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", "generic")


def _bf16(*ts):
    return [t.to(torch.bfloat16) for t in ts]


def _cases(gen):
    """(name, call, float64 reference) for every generic op that runs a bfloat16 GEMM or convolution."""
    x = torch.randn(2, 24, 13, 11, generator=gen)
    w1, b1 = torch.randn(12, 24, 1, 1, generator=gen) * 0.3, torch.randn(12, generator=gen) * 0.5
    w2, b2 = torch.randn(12, 1, 3, 3, generator=gen) * 0.4, torch.randn(12, generator=gen) * 0.5
    img = torch.randn(2, 3, 17, 15, generator=gen)
    ws, bs = torch.randn(8, 3, 3, 3, generator=gen) * 0.3, torch.randn(8, generator=gen) * 0.5
    wd, bd = torch.randn(24, 1, 5, 5, generator=gen) * 0.3, torch.randn(24, generator=gen) * 0.5
    v = torch.randn(3, 40, generator=gen)
    wl, bl = torch.randn(17, 40, generator=gen) * 0.2, torch.randn(17, generator=gen)
    gate_w = (torch.randn(10, 24, 1, 1, generator=gen) * 0.3, torch.randn(10, generator=gen) * 0.5,
              torch.randn(10, 1, 1, 5, generator=gen) * 0.6, torch.randn(10, generator=gen) * 0.5,
              torch.randn(10, 1, 5, 1, generator=gen) * 0.6, torch.randn(10, generator=gen) * 0.5)
    xb, w1b, b1b, w2b, b2b, imgb, wsb, bsb, wdb, bdb, vb, wlb, blb = _bf16(x, w1, b1, w2, b2, img, ws, bs, wd, bd, v,
                                                                          wl, bl)
    gate_b = _bf16(*gate_w)
    d = lambda t: t.double()  # noqa: E731 - the references take the bfloat16 values exactly
    return [
        ("ghost_module", lambda: torch.ops.ghostkernels.ghost_module(xb, w1b, b1b, w2b, b2b, 20, "relu"),
         lambda: ghost_module_reference(d(xb), d(w1b), d(b1b), d(w2b), d(b2b), 20, "relu")),
        ("conv2d_act 3x3/2", lambda: torch.ops.ghostkernels.conv2d_act(imgb, wsb, bsb, 2, "relu"),
         lambda: F.relu(F.conv2d(d(imgb), d(wsb), d(bsb), 2, 1))),
        ("conv2d_act 1x1", lambda: torch.ops.ghostkernels.conv2d_act(xb, w1b, b1b, 1, "hardswish"),
         lambda: activation("hardswish")(F.conv2d(d(xb), d(w1b), d(b1b)))),
        ("depthwise 5x5/2", lambda: torch.ops.ghostkernels._depthwise_conv2d(xb, wdb, bdb, 2, "identity"),
         lambda: F.conv2d(d(xb), d(wdb), d(bdb), 2, 2, groups=24)),
        ("linear_act", lambda: torch.ops.ghostkernels.linear_act(vb, wlb, blb, "relu"),
         lambda: F.relu(F.linear(d(vb), d(wlb), d(blb)))),
        ("dfc_gate", lambda: torch.ops.ghostkernels.dfc_gate(xb, *gate_b),
         lambda: dfc_gate_reference(d(xb), *[d(t) for t in gate_b])),
    ]


@pytest.mark.parametrize("widen", WIDEN)
def test_widened_and_unwidened_ops_match_float64(widen, generic, monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_BF16_WIDEN", widen)
    for name, call, reference in _cases(torch.Generator().manual_seed(0)):
        got = call()
        assert got.dtype == torch.bfloat16, name
        gt.assert_close_to_reference(got, reference(), BF16, f"{name} (widen={widen})")


@pytest.mark.parametrize("widen", WIDEN)
def test_aten_products_get_the_dtype_the_knob_asks_for(widen, generic, monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_BF16_WIDEN", widen)
    want = "float" if widen == "1" else "c10::BFloat16"  # the profiler's names of the C++ types
    for name, call, _ in _cases(torch.Generator().manual_seed(1)):
        with profile(record_shapes=True) as prof:
            call()
        seen = [e.input_dtypes[0] for e in prof.events() if e.name in ATEN_PRODUCTS]
        assert seen, f"{name}: no ATen GEMM or convolution recorded"
        assert set(seen) == {want}, f"{name}: {seen}"


@pytest.mark.parametrize("bad", ["yes", "2", ""])
def test_bad_widen_knob_raises(bad, generic, monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_BF16_WIDEN", bad)
    x = torch.randn(1, 8, 6, 6).bfloat16()
    w = torch.randn(4, 8, 1, 1).bfloat16()
    with pytest.raises(RuntimeError, match="GHOSTKERNELS_CPU_BF16_WIDEN must be auto, 0 or 1"):
        torch.ops.ghostkernels.conv2d_act(x, w, torch.randn(4).bfloat16(), 1, "relu")


def test_widen_knob_leaves_float32_alone(generic, monkeypatch):
    x, w, b = torch.randn(1, 8, 6, 6), torch.randn(4, 8, 3, 3), torch.randn(4)
    monkeypatch.setenv("GHOSTKERNELS_CPU_BF16_WIDEN", "1")
    with profile(record_shapes=True) as prof:
        got = torch.ops.ghostkernels.conv2d_act(x, w, b, 1, "relu")
    assert {e.input_dtypes[0] for e in prof.events() if e.name == "aten::conv2d"} == {"float"}
    torch.testing.assert_close(got, F.relu(F.conv2d(x, w, b, padding=1)), atol=1e-5, rtol=1e-5)


def _net(kind):
    if kind == "v2":
        return variants.randomize_batchnorm(variants.TimmStyleGhostNet(width=0.5, version="v2"), seed=4).eval()
    return variants.small_ghostnet(kind, seed=4, num_classes=37)


@pytest.mark.parametrize("kind", ["ours", "v2"])
def test_frozen_bfloat16_network_widened_matches_float64(kind, generic, monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_BF16_WIDEN", "1")
    net = _net(kind)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = copy.deepcopy(net).double()(x.bfloat16().double())
    fused = ghostkernels.freeze(ghostkernels.fuse(copy.deepcopy(net), strict=True).to(torch.bfloat16))
    with torch.inference_mode():
        got = fused(x.bfloat16())
    gt.assert_close_to_reference(got, want, NET_TOL, f"frozen {kind} bfloat16, widened")
