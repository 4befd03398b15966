"""The AVX-512 Ghost-module forward's small-map GEMM orders (kernel_ghost_forward_avx512.cpp, gemm_blocking;
bench/NOTES.md entries 54 and 63): dot tiles for an image's last HW % 16 pixels where that is 1-4, 8 x 3 tiles and
groups of tiles for items of at most 256 pixels, in float32 and in bfloat16 (on the bf16 dot product where the CPU
has AVX-512 BF16, else widened to float, which keeps the plain tiles). Against the float64 reference, outputs
NaN-poisoned (conftest), fresh random data per case; channel counts not a multiple of 6, 8 or 16 (odd ones: a
zero-padded last channel pair), odd maps, N > 1, every activation, the gated variant, and the same bits at one and
two threads (which pixels take the dot tiles never depends on the cut)."""

from __future__ import annotations

import pytest
import torch

import ghost_testing as gt
from ghostkernels import ops
from ghostkernels.ops.reference import ghost_module_gated_reference

pytestmark = pytest.mark.skipif(not gt.cpu_has_avx512(), reason="the AVX-512 kernel needs a CPU with AVX-512")

# (n, c, h, w, init, k, out_channels, act): 7x7 (49 = 3 x 16 + 1), 14x14 (196 = 12 x 16 + 4), 9x9 (81: rest 1),
# 10x10 (rest 4), 13x13 (rest 9: no dot tile), 5x7 (35: rest 3, one strip), 17x17 (more than 256 pixels: 6 x 4
# tiles, plus the dot tile).
CASES = [
    gt.GhostCase(n=2, c=37, h=7, w=7, init=53, k=3, out_channels=101, act="relu", label="7x7-odd-channels"),
    gt.GhostCase(n=1, c=161, h=7, w=7, init=29, k=5, act="hardswish", label="7x7-wide-c"),
    gt.GhostCase(n=3, c=19, h=14, w=14, init=45, k=3, out_channels=83, act="identity", label="14x14-n3"),
    gt.GhostCase(n=1, c=70, h=14, w=14, init=38, k=7, act="relu6", label="14x14-k7"),
    gt.GhostCase(n=2, c=11, h=9, w=9, init=17, k=3, act="silu", label="9x9"),
    gt.GhostCase(n=1, c=24, h=10, w=10, init=33, k=3, out_channels=50, act="relu", label="10x10"),
    gt.GhostCase(n=2, c=13, h=13, w=13, init=9, k=5, act="relu", label="13x13-no-dot"),
    gt.GhostCase(n=2, c=21, h=5, w=7, init=14, k=3, act="hardswish", label="5x7"),
    gt.GhostCase(n=1, c=18, h=17, w=17, init=23, k=3, act="relu", label="17x17-6x4-tiles"),
]


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.label) for c in CASES])
def test_small_map_forward_matches_float64(case, dtype):
    inputs = gt.make_inputs(case, dtype, torch.device("cpu"), gt.seed_from(case.label))
    with torch.no_grad():
        out = ops.ghost_module(*inputs, case.oc, case.act)
    expected = gt.reference_forward(inputs, case.oc, case.act)
    gt.assert_close_to_reference(out, expected, gt.forward_tol("cpu", dtype), f"{case.label} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,h,w", [(2, 7, 7), (2, 14, 14), (1, 7, 7), (1, 14, 14)])
def test_small_map_gated_forward_matches_float64(n, h, w, dtype):
    gen = torch.Generator().manual_seed(gt.seed_from(f"gated-{n}-{h}"))
    c, init, oc = 27, 43, 85
    x = torch.randn(n, c, h, w, generator=gen).to(dtype)
    w1 = (torch.randn(init, c, 1, 1, generator=gen) / c**0.5).to(dtype)
    b1 = torch.randn(init, generator=gen).to(dtype)
    w2 = (torch.randn(init, 1, 3, 3, generator=gen) / 3).to(dtype)
    b2 = torch.randn(init, generator=gen).to(dtype)
    gate = (torch.rand(n, oc, (h + 1) // 2, (w + 1) // 2, generator=gen) * 1.5 + 0.05).to(dtype)
    with torch.no_grad():
        got = ops.ghost_module_gated(x, w1, b1, w2, b2, oc, "relu", gate)
    want = ghost_module_gated_reference(*[t.double() for t in (x, w1, b1, w2, b2)], oc, "relu", gate.double())
    gt.assert_close_to_reference(got, want, gt.forward_tol("cpu", dtype), f"gated {n}x{h}x{w} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("h", [7, 14])
def test_small_map_forward_is_the_same_at_one_and_two_threads(h, dtype):
    """Batch 1 is cut into channel blocks and row bands by the thread count (util_tile_balance.h); every output must
    be the same sum in the same order whatever item computes it, the dot tiles' pixels included."""
    case = gt.GhostCase(n=1, c=40, h=h, w=h, init=60, k=3, act="relu", label=f"threads-{h}")
    inputs = gt.make_inputs(case, dtype, torch.device("cpu"), gt.seed_from(case.label))
    saved = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                outs.append(ops.ghost_module(*inputs, case.oc, case.act))
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(outs[0], outs[1])
