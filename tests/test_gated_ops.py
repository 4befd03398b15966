"""GhostNetV2's gate ops on the CPU: ghostkernels::dfc_gate (the DFC attention map), ghostkernels::ghost_module_gated
(the Ghost module with the upsampled map multiplied into both halves) and their backward ops, against the float64
eager reference (ops.reference), on the AVX-512 and the generic kernels, both memory formats and the image sizes
where the index formula of nearest upsampling differs (even sizes: i >> 1; odd ones: 7 -> 3 reads rows
0, 0, 0, 1, 1, 2, 2; maps of other sizes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ghost_testing import Tol, assert_close_to_reference, cpu_has_avx512, seed_from

from ghostkernels import ops
from ghostkernels.ops.reference import dfc_gate_reference, ghost_module_gated_reference, upsample_nearest

# Map values are sigmoids (within (0, 1)), so their errors are absolute; the Ghost-module output keeps the Ghost
# module's tolerances (tests/ghost_testing.py) since the map's own error is a few float ulps.
GATE_TOL = {torch.float64: Tol(1e-12, 1e-12), torch.float32: Tol(2e-6, 2e-6), torch.bfloat16: Tol(8e-3, 8e-3)}
GATED_TOL = {torch.float64: Tol(1e-12, 1e-12), torch.float32: Tol(5e-6, 2.5e-6), torch.bfloat16: Tol(1.5e-2, 8e-3)}


# The distinct CPU paths, (kernel, channels_last, dtype): the AVX-512 kernels take float32/bfloat16 NCHW only, so
# float64 and channels_last run the generic kernel under either setting and are tested once (CI is over budget).
VARIANTS = [("avx512", False, torch.float32), ("avx512", False, torch.bfloat16),
            ("generic", False, torch.float32), ("generic", False, torch.bfloat16), ("generic", False, torch.float64),
            ("generic", True, torch.float32), ("generic", True, torch.bfloat16)]


@pytest.fixture(params=VARIANTS, ids=lambda v: f"{v[0]}-{'cl' if v[1] else 'nchw'}-{str(v[2])[6:]}")
def variant(request, monkeypatch):
    kernel, channels_last, dtype = request.param
    if kernel == "avx512" and not cpu_has_avx512():
        pytest.skip("this CPU has no AVX-512")
    monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", kernel)
    return channels_last, dtype


def _gate_weights(c: int, o: int, gen: torch.Generator, kh: int = 5, kv: int = 5):
    return (torch.randn(o, c, 1, 1, generator=gen) * (2.0 / c ** 0.5), torch.randn(o, generator=gen) * 0.5,
            torch.randn(o, 1, 1, kh, generator=gen) * 0.6, torch.randn(o, generator=gen) * 0.5,
            torch.randn(o, 1, kv, 1, generator=gen) * 0.6, torch.randn(o, generator=gen) * 0.5)


def _ghost_weights(c: int, init: int, ratio: int, k: int, gen: torch.Generator):
    m = ratio - 1
    return (torch.randn(init, c, 1, 1, generator=gen) * (3.0 / c ** 0.5), torch.randn(init, generator=gen) * 0.5,
            torch.randn(init * m, 1, k, k, generator=gen) * (1.2 / k), torch.randn(init * m, generator=gen) * 0.5)


def _to(ts, dtype, channels_last=False):
    out = [t.to(dtype) for t in ts]
    if channels_last:
        out[0] = out[0].contiguous(memory_format=torch.channels_last)
    return out


GATE_CASES = {  # (n, c, h, w, o, kh, kv)
    "56-like": (1, 8, 12, 12, 24, 5, 5),
    "7x7-pools-to-3x3": (2, 16, 7, 7, 40, 5, 5),
    "odd-rect": (2, 5, 9, 5, 7, 5, 5),
    "2x2-to-1x1": (3, 4, 2, 2, 6, 5, 5),
    "wide-row-k3-k7": (1, 6, 6, 70, 18, 3, 7),
    "batch-many-blocks": (4, 12, 14, 14, 30, 5, 5),
    # The AVX-512 kernel's 1x1 conv takes as many images as fit 128 pooled pixels side by side (launch_dfc_gate.cpp):
    # 17 images of 3x3 maps are groups of 14 and 3; an odd C pads its last channel pair.
    "ragged-image-groups-odd-c": (17, 7, 7, 7, 13, 5, 5),
    # More than 256 input channels: the 1x1 conv's GEMM sums K in blocks (bfloat16: 151 channel pairs).
    "k-blocked-gemm": (1, 301, 4, 4, 10, 3, 3),
}


@pytest.mark.parametrize("case", GATE_CASES, ids=str)
def test_dfc_gate_matches_the_reference(variant, case):
    channels_last, dtype = variant
    n, c, h, w, o, kh, kv = GATE_CASES[case]
    gen = torch.Generator().manual_seed(seed_from(case))
    args = _to([torch.randn(n, c, h, w, generator=gen), *_gate_weights(c, o, gen, kh, kv)], dtype, channels_last)
    got = ops.dfc_gate(*args)
    want = dfc_gate_reference(*[t.double() for t in args])
    assert got.dtype == dtype and got.shape == (n, o, h // 2, w // 2)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close_to_reference(got, want, GATE_TOL[dtype], f"dfc_gate {case}")


GATED_CASES = {  # (n, c, h, w, init, ratio, k, out_channels, act, map size or None for (h // 2, w // 2))
    "ghostnetv2-56-like": (1, 24, 16, 16, 36, 2, 3, 72, "relu", None),
    "7x7-map-3x3": (2, 40, 7, 7, 30, 2, 3, 60, "relu", None),
    "14x14-two-images-per-vector": (3, 16, 14, 14, 20, 2, 3, 40, "relu", None),
    "odd-sizes-sliced": (2, 6, 9, 11, 7, 2, 3, 13, "hardswish", None),
    "primary-only-slice": (1, 8, 6, 6, 10, 2, 3, 7, "relu6", None),
    "ratio3-k5": (2, 9, 10, 13, 6, 3, 5, 17, "silu", None),
    "map-wider-than-the-window": (1, 5, 4, 80, 6, 2, 3, 12, "identity", (2, 60)),
    "map-of-another-size": (2, 7, 9, 5, 8, 2, 3, 16, "relu", (4, 3)),
    "one-pixel-map": (2, 4, 5, 5, 4, 2, 3, 8, "relu", (1, 1)),
}


def _gated_inputs(case, dtype, channels_last=False):
    n, c, h, w, init, ratio, k, oc, act, size = GATED_CASES[case]
    gen = torch.Generator().manual_seed(seed_from(case))
    hg, wg = size or (h // 2, w // 2)
    x = torch.randn(n, c, h, w, generator=gen)
    gate = torch.rand(n, oc, hg, wg, generator=gen) * 1.5 + 0.05  # a map of any values, not only sigmoids
    ts = _to([x, *_ghost_weights(c, init, ratio, k, gen), gate], dtype, channels_last)
    return ts[:5], oc, act, ts[5]


@pytest.mark.parametrize("case", GATED_CASES, ids=str)
def test_ghost_module_gated_matches_the_reference(variant, case):
    channels_last, dtype = variant
    args, oc, act, gate = _gated_inputs(case, dtype, channels_last)
    got = ops.ghost_module_gated(*args, oc, act, gate)
    want = ghost_module_gated_reference(*[t.double() for t in args], oc, act, gate.double())
    assert got.dtype == dtype
    assert_close_to_reference(got, want, GATED_TOL[dtype], f"ghost_module_gated {case}")


def test_upsampling_index_formula_of_a_7x7_output():
    # The contract's rows for a 3-row map under a 7-row output (PyTorch's nearest: floor(i * 3 / 7)).
    gate = torch.arange(3.0).reshape(1, 1, 3, 1).expand(1, 1, 3, 3).contiguous()
    rows = upsample_nearest(gate, (7, 7))[0, 0, :, 0].tolist()
    assert rows == [0, 0, 0, 1, 1, 2, 2]
    x = torch.zeros(1, 2, 7, 7)
    w1, b1 = torch.zeros(1, 2, 1, 1), torch.ones(1)  # x1 = relu(0 + 1) = 1 everywhere
    w2, b2 = torch.zeros(1, 1, 3, 3), torch.ones(1)
    out = ops.ghost_module_gated(x, w1, b1, w2, b2, 2, "relu", gate[:, :1].expand(1, 2, 3, 3).contiguous())
    assert out[0, 0, :, 0].tolist() == [0, 0, 0, 1, 1, 2, 2] and out[0, 1, :, 3].tolist() == rows


def test_gate_op_gradients_in_float64():
    gen = torch.Generator().manual_seed(3)
    args = [t.double().requires_grad_() for t in [torch.randn(2, 3, 7, 6, generator=gen), *_gate_weights(3, 4, gen)]]
    assert torch.autograd.gradcheck(lambda *a: ops.dfc_gate(*a), args, eps=1e-6, atol=1e-7)


def test_gated_module_gradients_in_float64():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 7, 5, generator=gen)
    ts = [x, *_ghost_weights(3, 3, 2, 3, gen), torch.rand(2, 5, 3, 2, generator=gen) + 0.1]
    args = [t.double().requires_grad_() for t in ts]
    # ReLU's kink: gradcheck's finite differences need pre-activations away from 0, which these inputs have.
    fn = lambda x, w1, b1, w2, b2, g: ops.ghost_module_gated(x, w1, b1, w2, b2, 5, "silu", g)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_gated_gradients_match_autograd_of_the_reference(dtype):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 9, 10, generator=gen)
    ghost, gate = _ghost_weights(8, 6, 2, 3, gen), _gate_weights(8, 12, gen)
    leaves = [t.to(dtype).requires_grad_() for t in (x, *ghost, *gate)]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]

    def run(fn_gate, fn_mod, ts):
        m = fn_gate(ts[0], *ts[5:])
        return fn_mod(*ts[:5], 12, "silu", m)

    out = run(ops.dfc_gate, ops.ghost_module_gated, leaves)
    ref = run(dfc_gate_reference, ghost_module_gated_reference, ref_leaves)
    grad = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad(out, leaves, grad.to(dtype))
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())
    tol = Tol(1e-5, 5e-6) if dtype == torch.float32 else Tol(3e-2, 2e-2)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert_close_to_reference(g, r, tol, f"gradient {i}")


def test_fake_kernels_trace_with_torch_compile():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 8, 7, 7, generator=gen)
    ghost, gate = _ghost_weights(8, 6, 2, 3, gen), _gate_weights(8, 12, gen)

    def f(x):
        return ops.ghost_module_gated(x, *ghost, 12, "relu", ops.dfc_gate(x, *gate))

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x))


@pytest.mark.parametrize("op", ["dfc_gate", "ghost_module_gated"])
def test_opcheck(op):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 6, 7, 9, generator=gen, requires_grad=True)
    if op == "dfc_gate":
        args = (x, *[t.requires_grad_() for t in _gate_weights(6, 5, gen)])
    else:
        args = (x, *[t.requires_grad_() for t in _ghost_weights(6, 4, 2, 3, gen)], 8, "relu",
                torch.rand(2, 8, 3, 4, generator=gen).requires_grad_())
    torch.library.opcheck(getattr(torch.ops.ghostkernels, op), args)


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(1, 4, 6, 6)
    gen = torch.Generator().manual_seed(8)
    gw = _gate_weights(4, 8, gen)
    with pytest.raises(ValueError, match="at least 2x2"):
        ops.dfc_gate(torch.randn(1, 4, 1, 6), *gw)
    with pytest.raises(ValueError, match=r"w_h must be a depthwise \(1, k\) weight"):
        ops.dfc_gate(x, gw[0], gw[1], torch.randn(8, 1, 1, 4), gw[3], gw[4], gw[5])
    with pytest.raises(ValueError, match=r"w_reduce must be \[O, 4, 1, 1\]"):
        ops.dfc_gate(x, torch.randn(8, 3, 1, 1), *gw[1:])
    with pytest.raises(TypeError, match="dtype mismatch"):
        ops.dfc_gate(x, gw[0].double(), *gw[1:])
    ghost = _ghost_weights(4, 4, 2, 3, gen)
    with pytest.raises(ValueError, match=r"gate must be \[1, 8, Hg, Wg\]"):
        ops.ghost_module_gated(x, *ghost, 8, "relu", torch.rand(1, 7, 3, 3))
    with pytest.raises(ValueError, match="out_channels=9"):
        ops.ghost_module_gated(x, *ghost, 9, "relu", torch.rand(1, 9, 3, 3))
    with pytest.raises(ValueError, match="gate must be"):
        torch.ops.ghostkernels.ghost_module_gated(x, *ghost, 8, "relu", torch.rand(1, 8, 0, 3))
    with pytest.raises(TypeError, match="dtype mismatch"):
        ops.ghost_module_gated(x, *ghost, 8, "relu", torch.rand(1, 8, 3, 3, dtype=torch.float64))


def test_eager_backend_is_the_reference():
    args, oc, act, gate = _gated_inputs("odd-sizes-sliced", torch.float32)
    torch.testing.assert_close(ops.ghost_module_gated(*args, oc, act, gate, backend="eager"),
                               ghost_module_gated_reference(*args, oc, act, gate))
    x = args[0]
    gw = _gate_weights(x.shape[1], 5, torch.Generator().manual_seed(9))
    torch.testing.assert_close(ops.dfc_gate(x, *gw, backend="eager"), dfc_gate_reference(x, *gw))


def test_autocast_runs_in_bfloat16():
    args, oc, act, gate = _gated_inputs("7x7-map-3x3", torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.ghost_module_gated(*args, oc, act, gate)
    assert out.dtype == torch.bfloat16
    want = ghost_module_gated_reference(*[t.bfloat16().double() for t in args], oc, act, gate.bfloat16().double())
    assert_close_to_reference(out, want, GATED_TOL[torch.bfloat16], "autocast")


def test_the_map_of_dfc_gate_feeds_the_gated_module_like_eager():
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 12, 28, 28, generator=gen)
    ghost, gate = _ghost_weights(12, 18, 2, 3, gen), _gate_weights(12, 36, gen)
    got = ops.ghost_module_gated(x, *ghost, 36, "relu", ops.dfc_gate(x, *gate))
    xd = x.double()
    res = F.conv2d(F.avg_pool2d(xd, 2, 2), gate[0].double(), gate[1].double())
    res = F.conv2d(res, gate[2].double(), gate[3].double(), padding=(0, 2), groups=36)
    res = F.conv2d(res, gate[4].double(), gate[5].double(), padding=(2, 0), groups=36)
    from ghostkernels.ops.reference import ghost_module_reference

    want = ghost_module_reference(xd, *[t.double() for t in ghost], 36, "relu") * F.interpolate(
        torch.sigmoid(res), size=(28, 28), mode="nearest")
    assert_close_to_reference(got, want, GATED_TOL[torch.float32], "dfc_gate -> ghost_module_gated")
