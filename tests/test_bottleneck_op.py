"""The CPU inference ops beyond the Ghost module: ghostkernels::ghost_bottleneck (GhostNet's whole bottleneck),
the depthwise convolution it runs (reached through the internal op ghostkernels::_depthwise_conv2d), and the CPU
block pool their outputs come from.

As for the Ghost-module op: inputs are drawn at the tested dtype, the reference is the plain-PyTorch contract
(ghostkernels.ops.reference) run in float64 on float64 copies of those inputs, new memory is NaN-filled (conftest), and
every case runs on both CPU kernels: the AVX-512 one where this CPU has it, and the generic one.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
import torch.nn.functional as F

import ghost_testing as gt
from ghostkernels import ops
from ghostkernels.models import ghostnet_100
from ghostkernels.ops.reference import ACTS, activation, ghost_bottleneck_reference

DTYPES = (torch.float64, torch.float32, torch.bfloat16)
KERNELS = ("auto", "generic")

# Errors against the float64 reference as in ghost_testing (atol relative to max|expected|). The bottleneck is two
# Ghost modules, a depthwise conv, a squeeze-excite and a 1x1 conv deep; in bfloat16 its intermediates (y after each
# stage) are rounded to bfloat16 as eager's are, so its error is that of about three chained bfloat16 layers.
# Measured over this file's cases: float32 5.9e-7, bfloat16 4.1e-3 (largest |error| / (max|expected| + |expected|/2)).
BOTTLENECK_TOL = {
    torch.float64: gt.Tol(atol=1e-12, rtol=1e-12),
    torch.float32: gt.Tol(atol=5e-6, rtol=2.5e-6),
    torch.bfloat16: gt.Tol(atol=3e-2, rtol=1.6e-2),
}
# The depthwise conv alone: one rounding of the output in bfloat16 (2^-9 = 2e-3 relative), float accumulation.
DEPTHWISE_TOL = {
    torch.float64: gt.Tol(atol=1e-12, rtol=1e-12),
    torch.float32: gt.Tol(atol=2e-6, rtol=1e-6),
    torch.bfloat16: gt.Tol(atol=8e-3, rtol=4e-3),
}


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", request.param)
    return request.param


# ---------------------------------------------------------------------------------------------------------------
# ghost_bottleneck
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BottleneckCase:
    n: int
    c: int
    h: int
    w: int
    mid: int
    out: int
    k: int = 3
    stride: int = 1
    se: bool = False
    act: str = "relu"
    label: str = ""

    @property
    def id(self) -> str:
        tag = f"{self.c}-{self.mid}-{self.out}_k{self.k}s{self.stride}{'_se' if self.se else ''}_{self.act}"
        return f"{self.label or 'case'}[{tag}@{self.n}x{self.h}x{self.w}]"


def ghostnet_bottleneck_cases(batch: int = 2) -> list[BottleneckCase]:
    """The 16 bottlenecks of GhostNet 1.0x at 224x224, read off the model with forward hooks."""
    model = ghostnet_100().eval()
    seen: list[BottleneckCase] = []

    def hook(block, args, _out):
        x = args[0]
        seen.append(BottleneckCase(batch, x.shape[1], x.shape[2], x.shape[3], block.ghost1.oup, block.ghost2.oup,
                                   block.shortcut[0].kernel_size[0] if len(block.shortcut) else
                                   (block.conv_dw.kernel_size[0] if block.conv_dw is not None else 3),
                                   block.stride, block.se is not None, "relu", f"ghostnet_100.{len(seen)}"))

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m).__name__ == "GhostBottleneck"]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for h in handles:
        h.remove()
    assert len(seen) == 16
    return seen


EDGE_CASES = [
    # 1x1 and 2x3 images, odd widths that end mid-vector, widths over 32 (two vectors per split row), k 5 and 7,
    # init channel counts that are not multiples of 8, ratio-style odd out channels, other activations.
    BottleneckCase(1, 4, 1, 1, 8, 4, 3, 2, False, "relu", "tiny"),
    BottleneckCase(3, 6, 2, 3, 10, 6, 3, 2, True, "relu", "tiny-se"),
    BottleneckCase(2, 8, 5, 7, 12, 10, 5, 2, True, "hardswish", "odd"),
    BottleneckCase(2, 6, 9, 17, 20, 6, 7, 2, False, "silu", "k7"),
    BottleneckCase(1, 12, 15, 33, 24, 16, 3, 2, True, "relu6", "wide"),
    BottleneckCase(2, 8, 13, 11, 14, 12, 7, 1, True, "relu", "k7-s1-shortcut"),
    BottleneckCase(2, 10, 6, 6, 18, 10, 3, 1, True, "identity", "identity"),
]
CASES = ghostnet_bottleneck_cases() + EDGE_CASES


def make_bottleneck(case: BottleneckCase, dtype: torch.dtype, seed: int, channels_last: bool = False):
    """(x, kwargs of ops.ghost_bottleneck) with weights scaled as in ghost_testing (pre-activations around 3)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    def ghost(inp, oup):
        init = -(-oup // 2)
        return (rnd(init, inp, 1, 1, scale=3 / inp ** 0.5), rnd(init), rnd(init, 1, 3, 3, scale=0.4), rnd(init))

    c, mid, out, k = case.c, case.mid, case.out, case.k
    x = rnd(case.n, c, case.h, case.w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    kw = dict(act=case.act, stride=case.stride, ghost1=ghost(c, mid), ghost2=ghost(mid, out))
    kw["dw"] = (rnd(mid, 1, k, k, scale=1.2 / k), rnd(mid)) if case.stride == 2 else None
    r = max(4, mid // 4)
    kw["se"] = (rnd(r, mid, 1, 1, scale=2 / mid ** 0.5), rnd(r), rnd(mid, r, 1, 1, scale=2 / r ** 0.5),
                rnd(mid)) if case.se else None
    identity = c == out and case.stride == 1
    kw["shortcut"] = None if identity else (rnd(c, 1, k, k, scale=1.2 / k), rnd(c), rnd(out, c, 1, 1,
                                                                                        scale=1 / c ** 0.5), rnd(out))
    return x, kw


def call_bottleneck(x, kw, mid, out, backend="cpu"):
    return ops.ghost_bottleneck(x, kw["ghost1"], mid, kw["ghost2"], out, act=kw["act"], stride=kw["stride"],
                                dw=kw["dw"], se=kw["se"], shortcut=kw["shortcut"], backend=backend)


def reference_bottleneck(x, kw, mid, out):
    f64 = lambda g: None if g is None else tuple(t.double() for t in g)  # noqa: E731
    return ghost_bottleneck_reference(x.double(), f64(kw["ghost1"]), mid, f64(kw["ghost2"]), out, kw["act"],
                                      kw["stride"], f64(kw["dw"]), f64(kw["se"]), f64(kw["shortcut"]))


@pytest.mark.parametrize("dtype", DTYPES, ids=gt.dtype_name)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bottleneck_matches_float64_reference(case, dtype, kernel, seed):
    x, kw = make_bottleneck(case, dtype, seed)
    got = call_bottleneck(x, kw, case.mid, case.out)
    assert got.dtype == dtype and got.is_contiguous()
    gt.assert_close_to_reference(got, reference_bottleneck(x, kw, case.mid, case.out), BOTTLENECK_TOL[dtype],
                                 f"ghost_bottleneck {case.id} {gt.dtype_name(dtype)} ({kernel} kernel)")


@pytest.mark.parametrize("case", [CASES[1], EDGE_CASES[2], EDGE_CASES[5]], ids=lambda c: c.id)
def test_bottleneck_keeps_channels_last(case, seed):
    x, kw = make_bottleneck(case, torch.float32, seed, channels_last=True)
    got = call_bottleneck(x, kw, case.mid, case.out)
    gt.assert_memory_format(got, gt.expected_memory_format(x), "ghost_bottleneck output")
    gt.assert_close_to_reference(got, reference_bottleneck(x, kw, case.mid, case.out), BOTTLENECK_TOL[torch.float32],
                                 f"ghost_bottleneck {case.id} channels_last")


def test_eager_backend_is_the_reference(seed):
    case = EDGE_CASES[2]
    x, kw = make_bottleneck(case, torch.float32, seed)
    got = call_bottleneck(x, kw, case.mid, case.out, backend="eager")
    gt.assert_close_to_reference(got, reference_bottleneck(x, kw, case.mid, case.out), BOTTLENECK_TOL[torch.float32],
                                 "eager backend")


# Blocks with every optional group, without squeeze-excite, without a shortcut (absent groups are cast too).
@pytest.mark.parametrize("case", [EDGE_CASES[2], EDGE_CASES[0], EDGE_CASES[6]], ids=lambda c: c.label)
def test_autocast_runs_in_the_autocast_dtype(case, seed):
    x, kw = make_bottleneck(case, torch.float32, seed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = call_bottleneck(x, kw, case.mid, case.out)
    assert got.dtype == torch.bfloat16
    bf16 = lambda g: None if g is None else tuple(t.bfloat16() for t in g)  # noqa: E731
    kw16 = {k: (bf16(v) if isinstance(v, tuple) else v) for k, v in kw.items()}
    gt.assert_close_to_reference(got, reference_bottleneck(x.bfloat16(), kw16, case.mid, case.out),
                                 BOTTLENECK_TOL[torch.bfloat16], "autocast bfloat16")


def test_opcheck(seed):
    case = EDGE_CASES[1]
    x, kw = make_bottleneck(case, torch.float32, seed)
    none2, none4 = (None,) * 2, (None,) * 4
    args = (x, *kw["ghost1"], case.mid, case.act, *(kw["dw"] or none2), case.stride, *(kw["se"] or none4),
            *kw["ghost2"], case.out, *(kw["shortcut"] or none4))
    # No autograd test: the op is inference-only (its backward raises, see test_bottleneck_has_no_backward).
    torch.library.opcheck(torch.ops.ghostkernels.ghost_bottleneck.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_bottleneck_has_no_backward(seed):
    case = EDGE_CASES[0]
    x, kw = make_bottleneck(case, torch.float32, seed)
    x.requires_grad_(True)
    out = call_bottleneck(x, kw, case.mid, case.out)
    with pytest.raises(RuntimeError, match="ghost_bottleneck has no backward: it is an inference op"):
        out.sum().backward()


def test_compile_fullgraph(seed):
    case = EDGE_CASES[2]
    x, kw = make_bottleneck(case, torch.float32, seed)
    fn = torch.compile(lambda t: call_bottleneck(t, kw, case.mid, case.out), fullgraph=True)
    torch._dynamo.reset()
    gt.assert_close_to_reference(fn(x), reference_bottleneck(x, kw, case.mid, case.out),
                                 BOTTLENECK_TOL[torch.float32], "torch.compile")


def _bad_calls():
    """(name, change of the good call's arguments, exception type, message fragment)."""
    def drop(key, i):
        def f(kw):
            g = list(kw[key])
            g[i] = None
            kw[key] = tuple(g)
        return f

    def reshape(key, i, shape):
        def f(kw):
            g = list(kw[key])
            g[i] = torch.randn(*shape)
            kw[key] = tuple(g)
        return f

    return [
        ("stride 3", lambda kw: kw.update(stride=3), ValueError, "stride must be 1 or 2"),
        ("dw at stride 1", lambda kw: kw.update(stride=1), ValueError, "must be given exactly when stride is 2"),
        ("half a group", drop("se", 2), TypeError, "se must be None or 4 tensors"),
        ("se width", reshape("se", 2, (7, 3, 1, 1)), ValueError, "se_expand"),
        ("dw shape", reshape("dw", 0, (12, 1, 4, 4)), ValueError, "conv_dw"),
        ("shortcut kernel", reshape("shortcut", 0, (8, 1, 5, 5)), ValueError, "must match conv_dw"),
        ("shortcut out", reshape("shortcut", 2, (9, 8, 1, 1)), ValueError, "shortcut_pw"),
        ("no shortcut", lambda kw: kw.update(shortcut=None), ValueError, "the identity, which needs"),
        ("ghost2 input", reshape("ghost2", 0, (5, 11, 1, 1)), ValueError, "ghost2"),
        ("dtype", lambda kw: kw.update(se=tuple(t.double() for t in kw["se"])), TypeError, "dtype mismatch"),
        ("act", lambda kw: kw.update(act="gelu"), ValueError, "unknown act"),
    ]


@pytest.mark.parametrize("backend", ("cpu", "eager"))
@pytest.mark.parametrize("name, change, exc, match", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_bad_input_raises_a_clear_error(name, change, exc, match, backend, seed):
    case = BottleneckCase(2, 8, 6, 6, 12, 10, 3, 2, True)
    x, kw = make_bottleneck(case, torch.float32, seed)
    change(kw)
    with pytest.raises(exc, match=match):
        call_bottleneck(x, kw, case.mid, case.out, backend=backend)


@pytest.mark.parametrize("device", ("cpu", "meta"))
def test_op_refuses_half_an_optional_group(device, seed):
    """Through torch.ops (the C++ check) and on the meta device (the fake's check)."""
    case = BottleneckCase(2, 8, 6, 6, 12, 10, 3, 2, True)
    x, kw = make_bottleneck(case, torch.float32, seed)
    args = [x, *kw["ghost1"], case.mid, case.act, *kw["dw"], case.stride, *kw["se"], *kw["ghost2"], case.out,
            *kw["shortcut"]]
    args[11] = None  # se_reduce_b
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(ValueError, match="give all of se_reduce_w, se_reduce_b, se_expand_w, se_expand_b or none"):
        torch.ops.ghostkernels.ghost_bottleneck(*args)


def test_non_cpu_tensors_are_refused(seed):
    case = EDGE_CASES[0]
    x, kw = make_bottleneck(case, torch.float32, seed)
    with pytest.raises(ValueError, match="no kernel for tensors on meta"):
        call_bottleneck(x.to("meta"), kw, case.mid, case.out, backend="auto")
    with pytest.raises(ValueError, match="backend='cpu' needs CPU tensors"):
        call_bottleneck(x.to("meta"), kw, case.mid, case.out, backend="cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        call_bottleneck(x, kw, case.mid, case.out, backend="cuda")


# ---------------------------------------------------------------------------------------------------------------
# The depthwise convolution (internal op)
# ---------------------------------------------------------------------------------------------------------------

# (n, c, h, w): images smaller than a kernel, widths that end mid-vector or span several vectors, tall and wide;
# widths of 32 and 33 (the stride-2 phase split takes a one-load-pair path up to 32 columns). Small maps run on the
# lanes kernel (16 channels per item): channel counts of one, two and three groups, the last one partial.
DW_SHAPES = [(1, 3, 1, 1), (2, 5, 2, 3), (1, 4, 7, 7), (2, 3, 14, 14), (1, 2, 15, 17), (1, 2, 33, 31),
             (2, 4, 16, 16), (1, 3, 5, 40), (1, 3, 40, 5), (1, 2, 9, 32), (1, 2, 6, 33),
             (2, 17, 7, 7), (1, 40, 14, 14), (1, 33, 6, 9), (2, 16, 12, 15)]


@pytest.mark.parametrize("dtype", DTYPES, ids=gt.dtype_name)
@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("k", (1, 3, 5, 7))
@pytest.mark.parametrize("shape", DW_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_depthwise_matches_float64_reference(shape, k, stride, dtype, seed, monkeypatch):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(*shape, generator=gen).to(dtype)
    wt = (torch.randn(c, 1, k, k, generator=gen) * 1.2 / k).to(dtype)
    b = torch.randn(c, generator=gen).to(dtype)
    act = ACTS[seed % len(ACTS)]
    expected = activation(act)(F.conv2d(x.double(), wt.double(), b.double(), stride, k // 2, 1, c))
    for kernel in KERNELS:
        monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", kernel)
        got = torch.ops.ghostkernels._depthwise_conv2d(x, wt, b, stride, act)
        gt.assert_close_to_reference(got, expected, DEPTHWISE_TOL[dtype],
                                     f"depthwise {shape} k{k} s{stride} {act} {gt.dtype_name(dtype)} ({kernel})")


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=gt.dtype_name)
@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("k", (3, 5, 7))
@pytest.mark.parametrize("shape", [(2, 17, 7, 7), (1, 40, 14, 14), (1, 33, 6, 9), (3, 5, 3, 2), (1, 20, 30, 29)],
                         ids=lambda s: "x".join(map(str, s)))
def test_depthwise_lanes_kernel_equals_plane_kernel(shape, k, stride, dtype, seed, monkeypatch):
    """The small-map lanes kernel adds the same terms in the same order as the plane kernel: equal bit for bit."""
    if not gt.cpu_has_avx512():
        pytest.skip("this CPU has no AVX-512")
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(*shape, generator=gen).to(dtype)
    wt = (torch.randn(c, 1, k, k, generator=gen) * 1.2 / k).to(dtype)
    b = torch.randn(c, generator=gen).to(dtype)
    act = ACTS[seed % len(ACTS)]
    got = {}
    for lanes in ("1", "0"):
        monkeypatch.setenv("GHOSTKERNELS_CPU_DEPTHWISE_LANES", lanes)
        got[lanes] = torch.ops.ghostkernels._depthwise_conv2d(x, wt, b, stride, act)
    assert torch.equal(got["1"], got["0"]), f"lanes and plane kernels differ: {shape} k{k} s{stride} {act}"


def test_depthwise_opcheck(seed):
    x = torch.randn(2, 3, 9, 10)
    torch.library.opcheck(torch.ops.ghostkernels._depthwise_conv2d.default,
                          (x, torch.randn(3, 1, 3, 3), torch.randn(3), 2, "relu"),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_avx512_knob_refuses_a_depthwise_kernel_it_lacks(monkeypatch):
    if not gt.cpu_has_avx512():
        pytest.skip("this CPU has no AVX-512")
    monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", "avx512")
    with pytest.raises(RuntimeError, match="GHOSTKERNELS_CPU_KERNEL=avx512, but .*k=9"):
        torch.ops.ghostkernels._depthwise_conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 9, 9), torch.randn(2), 1,
                                                 "relu")


# ---------------------------------------------------------------------------------------------------------------
# The CPU block pool
# ---------------------------------------------------------------------------------------------------------------


def _big_ghost_call():
    """A ghost_module call whose output (1.2 MB) is large enough for the pool."""
    x = torch.randn(2, 16, 56, 56)
    return lambda: ops.ghost_module(x, torch.randn(24, 16, 1, 1), torch.randn(24), torch.randn(24, 1, 3, 3),
                                    torch.randn(24), 48)


def test_pool_reuses_a_freed_block():
    ops.release_cpu_pool()
    call = _big_ghost_call()
    before = ops.cpu_pool_stats()
    out = call()
    nbytes = out.numel() * out.element_size()
    during = ops.cpu_pool_stats()
    assert during["in_use_bytes"] - before["in_use_bytes"] >= nbytes
    del out
    after_free = ops.cpu_pool_stats()
    assert after_free["cached_bytes"] >= nbytes and after_free["in_use_bytes"] == before["in_use_bytes"]
    out = call()
    assert ops.cpu_pool_stats()["hits"] == after_free["hits"] + 1
    del out
    ops.release_cpu_pool()
    assert ops.cpu_pool_stats()["cached_bytes"] == 0


def test_pool_block_freed_on_another_thread_comes_back():
    ops.release_cpu_pool()
    out = _big_ghost_call()()
    holder = [out]
    del out
    t = threading.Thread(target=holder.clear)
    t.start()
    t.join()
    assert ops.cpu_pool_stats()["cached_bytes"] > 0
    ops.release_cpu_pool()


def test_pool_limit_zero_turns_it_off(monkeypatch):
    ops.release_cpu_pool()
    monkeypatch.setenv("GHOSTKERNELS_CPU_POOL_MB", "0")
    before = ops.cpu_pool_stats()
    out = _big_ghost_call()()
    del out
    after = ops.cpu_pool_stats()
    assert after["cached_bytes"] == 0 and after["misses"] == before["misses"] and after["limit_bytes"] == 0


def test_pool_limit_must_be_a_number(monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_POOL_MB", "lots")
    with pytest.raises(ValueError, match="GHOSTKERNELS_CPU_POOL_MB must be a whole number"):
        _big_ghost_call()()


def test_pooled_output_is_an_ordinary_tensor():
    out = _big_ghost_call()()
    copy = out.clone()
    out.add_(1.0)  # writable
    torch.testing.assert_close(out - 1.0, copy)
    assert out.untyped_storage().nbytes() == out.numel() * out.element_size()
    buf = __import__("io").BytesIO()
    torch.save(out, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf), out)


def test_pool_intermediates_may_take_larger_blocks_but_the_output_does_not():
    """ghost_bottleneck's intermediates die inside the call, so they may take an idle pool block up to 4x their
    size (util_tensor_pool.h, TransientAllocationScope); its output gets a block of its own size."""
    if ops.cpu_pool_stats()["limit_bytes"] < (64 << 20):
        pytest.skip("the CPU block pool is off or small (GHOSTKERNELS_CPU_POOL_MB)")
    if not gt.cpu_has_avx512():
        pytest.skip("without AVX-512 the 1x1 convolutions are ATen's, whose outputs do not come from the block pool")
    case = BottleneckCase(1, 16, 64, 64, 80, 16, label="pool")  # ghost1's output: 80 x 64 x 64 floats, 1.25 MB
    x, kw = make_bottleneck(case, torch.float32, seed=3)
    ops.release_cpu_pool()
    big_w, big_b = torch.randn(256, 16, 1, 1), torch.randn(256)  # 256 x 64 x 64 floats: 4 MB outputs
    big = [torch.ops.ghostkernels.conv2d_act(x, big_w, big_b, 1, "relu") for _ in range(2)]
    del big  # two idle 4 MB blocks: more than a quarter larger than anything the call below asks for
    before = ops.cpu_pool_stats()
    out = call_bottleneck(x, kw, case.mid, case.out)
    after = ops.cpu_pool_stats()
    assert after["hits"] - before["hits"] >= 1  # ghost1's output, in a 4 MB block
    assert after["in_use_bytes"] - before["in_use_bytes"] == out.numel() * out.element_size()
    torch.testing.assert_close(out.double(), reference_bottleneck(x, kw, case.mid, case.out), atol=1e-3, rtol=1e-3)
    del out
    ops.release_cpu_pool()
