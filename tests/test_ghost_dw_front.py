"""The fused front of a stride-2 bottleneck (csrc/cpu/launch_ghost_dw_front.cpp): ghost1 and conv_dw in one pass,
ghost1's output kept in per-thread scratch, never in memory.

It runs inside ghostkernels::ghost_bottleneck (and _gated) for float32 NCHW on AVX-512 CPUs; the environment
variable GHOSTKERNELS_CPU_FUSED_FRONT=0 (read per call) runs the two-pass path instead, so each case here compares
the fused path with the two-pass one in the same process (bitwise, except the squeeze-excite's plane sums, which a
band cut adds in another order) and with the float64 eager reference. The shapes cut planes into several bands,
ragged 6-channel tiles and odd widths and heights; the squeeze-excite, N > 1, the gated GhostNetV2 block, and one
thread against two (the same result: the cut does not depend on the thread count).
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import ghost_testing as gt
from ghostkernels.ops.reference import ghost_bottleneck_reference
from test_bottleneck_op import BOTTLENECK_TOL, BottleneckCase, call_bottleneck, make_bottleneck, reference_bottleneck

pytestmark = pytest.mark.skipif(not gt.cpu_has_avx512(), reason="the fused front runs on the AVX-512 kernels")

TOL = BOTTLENECK_TOL[torch.float32]
CASES = [
    # 151 x 130 input -> 76 x 65: planes of 3 bands (26 + 26 + 24 rows), 13 primaries (tiles 6 + 6 + 1), odd mid
    # (the last primary has no cheap channel), squeeze-excite.
    BottleneckCase(2, 8, 151, 130, 25, 16, 3, 2, True, "relu", "bands-se"),
    # 5x5 conv_dw, one band, an odd width that ends mid-vector, no squeeze-excite.
    BottleneckCase(3, 12, 23, 37, 36, 20, 5, 2, False, "hardswish", "k5"),
    # 7x7 conv_dw on a tiny image (one output row per plane).
    BottleneckCase(1, 6, 3, 5, 14, 6, 7, 2, True, "relu", "k7-tiny"),
    # A tall narrow image (30 columns) in several bands: the phase split's path for rows of at most 32 columns,
    # cut at the bands' edges.
    BottleneckCase(1, 6, 601, 30, 10, 8, 5, 2, False, "relu", "bands-narrow"),
]


def _front_scopes(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name.split("/")[-1] for e in prof.events() if e.name.startswith("ghostkernels::ghost_bottleneck/")}


def _both_paths(monkeypatch, fn):
    """(fused, two-pass) results of fn(), checking from the profiler's scopes that each path ran."""
    monkeypatch.delenv("GHOSTKERNELS_CPU_FUSED_FRONT", raising=False)
    out = {}
    scopes = _front_scopes(lambda: out.setdefault("fused", fn()))
    assert "ghost1_dw" in scopes and "conv_dw" not in scopes, scopes
    monkeypatch.setenv("GHOSTKERNELS_CPU_FUSED_FRONT", "0")
    scopes = _front_scopes(lambda: out.setdefault("unfused", fn()))
    assert "ghost1_dw" not in scopes and {"ghost1", "conv_dw"} <= scopes, scopes
    monkeypatch.delenv("GHOSTKERNELS_CPU_FUSED_FRONT")
    return out["fused"], out["unfused"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fused_front_matches_two_passes_and_float64(case, seed, monkeypatch):
    x, kw = make_bottleneck(case, torch.float32, seed)
    fused, unfused = _both_paths(monkeypatch, lambda: call_bottleneck(x, kw, case.mid, case.out))
    want = reference_bottleneck(x, kw, case.mid, case.out)
    gt.assert_close_to_reference(fused, want, TOL, f"fused front {case.id}")
    gt.assert_close_to_reference(unfused, want, TOL, f"two passes {case.id}")
    if case.se:
        torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)
    else:
        assert torch.equal(fused, unfused), "without a squeeze-excite the two paths compute the same sums"


def test_fused_front_same_for_one_and_two_threads(seed):
    case = CASES[0]
    x, kw = make_bottleneck(case, torch.float32, seed)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = call_bottleneck(x, kw, case.mid, case.out)
        torch.set_num_threads(2)
        two = call_bottleneck(x, kw, case.mid, case.out)
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(one, two)


def test_gated_block_through_the_fused_front(seed, monkeypatch):
    # GhostNetV2's block: the kernel multiplies ghost1's DFC map (indexed per image and output channel) into both
    # halves as it stores them into the scratch planes. 45 x 51 input, 5x5 conv_dw, 22 ghost1 channels.
    gen = torch.Generator().manual_seed(seed)
    cin, mid, out, k = 10, 22, 12, 5
    w = lambda *s, scale=0.5: torch.randn(*s, generator=gen) * scale  # noqa: E731
    ghost = lambda c, o: (w(o // 2, c, 1, 1, scale=2 / c ** 0.5), w(o // 2), w(o // 2, 1, 3, 3), w(o // 2))  # noqa
    ghost1, ghost2 = ghost(cin, mid), ghost(mid, out)
    gate = (w(mid, cin, 1, 1, scale=2 / cin ** 0.5), w(mid), w(mid, 1, 1, 5), w(mid), w(mid, 1, 5, 1), w(mid))
    dw, se = (w(mid, 1, k, k), w(mid)), (w(8, mid, 1, 1), w(8), w(mid, 8, 1, 1), w(mid))
    shortcut = (w(cin, 1, k, k), w(cin), w(out, cin, 1, 1), w(out))
    x = torch.randn(2, cin, 45, 51, generator=gen)
    from ghostkernels import ops

    def run():
        return ops.ghost_bottleneck(x, ghost1, mid, ghost2, out, stride=2, dw=dw, se=se, shortcut=shortcut, gate=gate)

    fused, unfused = _both_paths(monkeypatch, run)
    d = lambda g: tuple(t.double() for t in g)  # noqa: E731
    want = ghost_bottleneck_reference(x.double(), d(ghost1), mid, d(ghost2), out, "relu", 2, d(dw), d(se),
                                      d(shortcut), gate=d(gate))
    gt.assert_close_to_reference(fused, want, gt.Tol(2e-5, 1e-5), "gated block, fused front")
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)


# bfloat16 fuses where the CPU has AVX-512 BF16 and ghost1's planes are 56x56 or more (kBf16FrontMinPixels): ghost1
# stays in float in the scratch planes (the two-pass path rounds it to bfloat16 first), so the two paths agree to the
# dtype's tolerance, not bitwise. 8 input channels: the bf16 dot product; 40: AMX tiles where the CPU has them.
BF16_CASES = [
    BottleneckCase(2, 8, 151, 130, 25, 16, 3, 2, True, "relu", "bands-se"),
    BottleneckCase(2, 40, 60, 58, 26, 24, 5, 2, True, "relu", "amx-k5-se"),
]


@pytest.mark.skipif("avx512_bf16" not in gt.cpu_flags(), reason="bfloat16 fuses on CPUs with AVX-512 BF16")
@pytest.mark.parametrize("case", BF16_CASES, ids=lambda c: c.id)
def test_bfloat16_fused_front_matches_float64(case, seed, monkeypatch):
    x, kw = make_bottleneck(case, torch.bfloat16, seed)
    fused, unfused = _both_paths(monkeypatch, lambda: call_bottleneck(x, kw, case.mid, case.out))
    want = reference_bottleneck(x, kw, case.mid, case.out)
    tol = BOTTLENECK_TOL[torch.bfloat16]
    gt.assert_close_to_reference(fused, want, tol, f"bfloat16 fused front {case.id}")
    gt.assert_close_to_reference(unfused, want, tol, f"bfloat16 two passes {case.id}")


def test_bfloat16_small_planes_keep_two_passes(seed):
    # 28x28 ghost1 planes: below kBf16FrontMinPixels, ghost1 and conv_dw run as two passes.
    case = BottleneckCase(1, 40, 28, 28, 26, 24, 3, 2, False, "relu", "28x28")
    x, kw = make_bottleneck(case, torch.bfloat16, seed)
    scopes = _front_scopes(lambda: call_bottleneck(x, kw, case.mid, case.out))
    assert "ghost1_dw" not in scopes and {"ghost1", "conv_dw"} <= scopes, scopes
