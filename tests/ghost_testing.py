"""Shared helpers of the op test suite: backends, cases, the input factory, the float64 reference, tolerances.

Every backend of ``ghostkernels.ops.ghost_module`` is tested the same way: inputs are drawn at the tested dtype,
the reference is ``ghostkernels.ops.reference.ghost_module_reference`` run in float64 on float64 copies of exactly those
(already rounded) inputs, so the comparison measures only the backend's own arithmetic error. Inputs are drawn on
the CPU from a seeded generator and then moved to the backend's device, so a CUDA run sees the same data as a CPU
run and a failure reproduces from its test id.

Data scaling (why it looks the way it does): x ~ N(0, 1); w_primary ~ N(0, 1) * 3/sqrt(C), so the primary
pre-activation z1 has a standard deviation of about 3 whatever C is; w_cheap ~ N(0, 1) * 1.2/k, which keeps the
depthwise pre-activation z2 at about the same scale for every k. With |z| ~ 3 every activation's interesting points
are visited often: relu's 0, relu6's 6 (about 2% of the values lie above it), hardswish's -3 and 3 (a third of the
values lie outside). Nothing is ever zero-filled: a kernel that forgets a term cannot hide behind zeros.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import zlib

import pytest
import torch

import ghostkernels
from ghostkernels.ops.reference import ACTS, activation, ghost_module_reference

# ---------------------------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------------------------

BACKENDS = ("cpu", "cuda", "triton", "eager")

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def cpu_has_avx512() -> bool:
    """Whether this CPU has what the CPU backend's AVX-512 kernel needs (AVX-512 F, BW, VL and DQ)."""
    return {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= cpu_flags()


def has_cuda_device() -> bool:
    return torch.cuda.is_available()


def triton_interpreted() -> bool:
    """The Triton backend runs under the interpreter (on CPU tensors) when there is no CUDA device."""
    return not has_cuda_device()


def backend_device(backend: str) -> torch.device:
    """The device whose tensors the backend is tested with."""
    if backend == "cuda" or (backend == "triton" and not triton_interpreted()):
        return torch.device("cuda")
    return torch.device("cpu")


@functools.lru_cache(maxsize=None)
def backend_skip_reason(backend: str) -> str | None:
    """Why ``backend`` cannot be tested here, or None when it can."""
    if backend in ("cpu", "eager"):
        return None
    if backend == "cuda":
        if not has_cuda_device():
            return "backend 'cuda' needs a CUDA device (none here)"
        if not ghostkernels.ops.cuda_kernels_available():
            return "backend 'cuda': the op library was built without CUDA kernels"
        return None
    if backend == "triton":
        if not os.path.isfile(os.path.join(_REPO_ROOT, "ghostkernels", "triton", "__init__.py")):
            return "backend 'triton': ghostkernels.triton is not written yet"
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return f"backend 'triton': the triton package is not importable ({e})"
        if triton_interpreted() and os.environ.get("TRITON_INTERPRET") != "1":
            return "backend 'triton' without a CUDA device needs TRITON_INTERPRET=1 (tests/conftest.py sets it)"
        # Anything else that goes wrong while importing ghostkernels.triton is a bug and must fail, not skip.
        from ghostkernels.triton import ghost_module_triton  # noqa: F401
        return None
    raise ValueError(f"unknown backend {backend!r}")


def skip_unless_backend(backend: str) -> None:
    reason = backend_skip_reason(backend)
    if reason is not None:
        pytest.skip(reason)


# The dtypes each backend promises (issues 2, 4 and 5). float64 is what gradcheck needs; the CPU kernel has no
# float16 path, the CUDA and Triton kernels have no float64 path, the Triton interpreter computes with numpy, which
# has no bfloat16.
def backend_dtypes(backend: str) -> tuple[torch.dtype, ...]:
    if backend == "cpu":
        return (torch.float64, torch.float32, torch.bfloat16)
    if backend == "eager":  # float64 eager would be the reference compared with itself
        return (torch.float32, torch.bfloat16)
    if backend == "cuda":
        return (torch.float32, torch.float16, torch.bfloat16)
    if backend == "triton":
        if triton_interpreted():
            return (torch.float32, torch.float16)
        return (torch.float32, torch.float16, torch.bfloat16)
    raise ValueError(f"unknown backend {backend!r}")


def backward_dtypes(backend: str) -> tuple[torch.dtype, ...]:
    """The dtypes whose gradients are compared with the float64 reference. Eager bfloat16 is left out: eager rounds
    x1 to bfloat16 before the depthwise conv, so wherever z2 lies within that rounding of a kink the eager mask
    differs from the exact one and the gradient there is off by O(1) (measured: 23% of max|grad x|). That is
    eager's arithmetic, not an error to test for; the fused kernels keep x1 in float."""
    if backend == "eager":
        return (torch.float32,)
    return backend_dtypes(backend)


# Backends with float64 kernels, which torch.autograd.gradcheck needs. (Eager has them too, but its gradients are
# PyTorch's own autograd of conv2d: gradchecking them would test PyTorch.)
FLOAT64_BACKENDS = ("cpu",)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------------------------
# Tolerances. Errors are measured against the float64 reference as
#     |actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|
# i.e. atol is relative to the tensor's largest magnitude: weight gradients are sums over N*H*W pixels and their
# scale grows with the batch, and the rounding error of a low-precision intermediate (x1, z1) is proportional to
# the largest values that flow through it, not to the output element at hand. rtol covers large outputs.
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Tol:
    atol: float
    rtol: float


# Measured over every case of this suite (largest |error| / (max|expected| + |expected|/2)). CPU kernel: float32
# 7.5e-7 forward, 9.1e-7 backward; bfloat16 4.3e-3 forward, 2.5e-3 backward. Eager: bfloat16 3.2e-3 forward.
# Triton kernels under the interpreter (reduced set): float32 1.5e-7 / 3.1e-7, float16 3.9e-4 / 5.0e-4. The CUDA
# entries, and every GPU entry's margin, are estimates from the arithmetic described beside them, to be confirmed
# on a GPU.
_FORWARD_TOL = {
    # CPU kernel: float64 throughout; float32 with a float32 GEMM (sums of up to 960 products); bfloat16 GEMM with
    # float accumulation, but z1 is rounded to bfloat16 (8-bit mantissa, unit roundoff 2^-9 = 2e-3) before the
    # bias, and the output is rounded to bfloat16 once more.
    ("cpu", torch.float64): Tol(atol=1e-12, rtol=1e-12),
    ("cpu", torch.float32): Tol(atol=5e-6, rtol=2.5e-6),
    ("cpu", torch.bfloat16): Tol(atol=1.5e-2, rtol=8e-3),
    # Eager rounds every intermediate (z1, x1, z2) to the working dtype.
    ("eager", torch.float32): Tol(atol=5e-6, rtol=2.5e-6),
    ("eager", torch.bfloat16): Tol(atol=1.5e-2, rtol=8e-3),
    # CUDA kernels: the tests switch TF32 off (see conftest), so float32 is float32 arithmetic in another
    # summation order; float16 has an 11-bit mantissa (unit roundoff 2^-11 = 4.9e-4) with float accumulation on
    # tensor cores (eager float16, which rounds every intermediate, measures 4.7e-4 on the CPU); bfloat16 as on the
    # CPU.
    ("cuda", torch.float32): Tol(atol=1e-5, rtol=5e-6),
    ("cuda", torch.float16): Tol(atol=2.5e-3, rtol=1.2e-3),
    ("cuda", torch.bfloat16): Tol(atol=1.5e-2, rtol=8e-3),
    # Triton kernels: float32 tl.dot with input_precision="ieee" (no TF32), float16/bfloat16 on tensor cores with
    # float accumulation: the same arithmetic as the CUDA kernels.
    ("triton", torch.float32): Tol(atol=1e-5, rtol=5e-6),
    ("triton", torch.float16): Tol(atol=2.5e-3, rtol=1.2e-3),
    ("triton", torch.bfloat16): Tol(atol=1.5e-2, rtol=8e-3),
}

# Gradients go through one more GEMM and a transposed depthwise conv, and a kernel that keeps x1 in float16 or
# bfloat16 may flip a few activation masks that lie within that rounding of a kink (see KINK_MARGIN): low-precision
# gradients get a wider margin than outputs.
_BACKWARD_TOL = {
    ("cpu", torch.float64): Tol(atol=1e-11, rtol=1e-11),
    ("cpu", torch.float32): Tol(atol=1e-5, rtol=5e-6),
    ("cpu", torch.bfloat16): Tol(atol=1.5e-2, rtol=8e-3),
    ("eager", torch.float32): Tol(atol=1e-5, rtol=5e-6),
    ("cuda", torch.float32): Tol(atol=3e-5, rtol=1.5e-5),
    ("cuda", torch.float16): Tol(atol=5e-3, rtol=2.5e-3),
    ("cuda", torch.bfloat16): Tol(atol=3e-2, rtol=1.5e-2),
    ("triton", torch.float32): Tol(atol=3e-5, rtol=1.5e-5),
    ("triton", torch.float16): Tol(atol=5e-3, rtol=2.5e-3),
    ("triton", torch.bfloat16): Tol(atol=3e-2, rtol=1.5e-2),
}


def forward_tol(backend: str, dtype: torch.dtype) -> Tol:
    return _FORWARD_TOL[(backend, dtype)]


def backward_tol(backend: str, dtype: torch.dtype) -> Tol:
    return _BACKWARD_TOL[(backend, dtype)]


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor, tol: Tol, what: str) -> None:
    """Compare against a float64 reference with the scaled tolerance above; NaN anywhere fails."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    got = actual.detach().to("cpu", torch.float64)
    assert not torch.isnan(got).any(), (
        f"{what}: {int(torch.isnan(got).sum())} NaN values (elements never written by the kernel are NaN here)")
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(got, expected, atol=tol.atol * scale, rtol=tol.rtol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------------------

LAYOUTS = ("contiguous", "channels_last", "sliced", "transposed", "channels_last_batch_slice")


@dataclasses.dataclass(frozen=True)
class GhostCase:
    """One call of the op: x is [n, c, h, w]; init primary channels; ratio-1 cheap channels per primary channel."""

    n: int
    c: int
    h: int
    w: int
    init: int
    ratio: int = 2
    k: int = 3
    out_channels: int | None = None  # None: init * ratio (no slice)
    act: str = "relu"
    layout: str = "contiguous"
    label: str = ""
    reduced: bool = False  # part of the reduced set that also runs under the (slow) Triton interpreter

    def __post_init__(self):
        assert self.act in ACTS and self.layout in LAYOUTS, self
        assert 1 <= self.oc <= self.init * self.ratio, self

    @property
    def oc(self) -> int:
        return self.init * self.ratio if self.out_channels is None else self.out_channels

    @property
    def id(self) -> str:
        core = (f"n{self.n}c{self.c}h{self.h}w{self.w}-i{self.init}r{self.ratio}k{self.k}o{self.oc}-{self.act}"
                f"-{self.layout}")
        return f"{self.label}-{core}" if self.label else core

    def elements(self) -> int:
        """Input plus output elements: the cost measure that picks the reduced set of GhostNet shapes."""
        return self.n * self.h * self.w * (self.c + self.oc)

    def replace(self, **kw) -> "GhostCase":
        return dataclasses.replace(self, **kw)


class CallCounter:
    """Wraps a function and counts its calls (tests patch it in with monkeypatch.setattr)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def record_method_calls(monkeypatch, cls: type, method: str) -> list:
    """Patch ``cls.method`` (for the rest of the test) to record the instance of every call; returns that list. For
    counting what cannot be counted at the op: a compiled call traces the op, which must stay the real one."""
    calls = []
    original = getattr(cls, method)

    def recording(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, recording)
    return calls


def record_op_calls(monkeypatch, op: str) -> list:
    """Patch torch.ops.ghostkernels.<op>.default (for the rest of the test) to record the shape of its first
    argument on every call; returns the list the shapes go to."""
    calls = []
    packet = getattr(torch.ops.ghostkernels, op)
    original = packet.default

    def recording(*args):
        calls.append(tuple(args[0].shape))
        return original(*args)

    monkeypatch.setattr(packet, "default", recording)
    return calls


def seed_from(text: str) -> int:
    """A stable seed from a test id (Python's hash() is salted per process; crc32 is not)."""
    return zlib.crc32(text.encode())


def _make_x(case: GhostCase, gen: torch.Generator, dtype: torch.dtype, device) -> torch.Tensor:
    """x with the case's layout. Each non-contiguous layout is a view into a larger random tensor, taken after the
    dtype/device conversion (.to() would densify a strided view)."""
    n, c, h, w = case.n, case.c, case.h, case.w

    def draw(*size):
        return torch.randn(*size, generator=gen).to(device=device, dtype=dtype)

    if case.layout == "contiguous":
        return draw(n, c, h, w)
    if case.layout == "channels_last":
        return draw(n, c, h, w).contiguous(memory_format=torch.channels_last)
    if case.layout == "sliced":  # every other channel, an inner window of rows and columns: no dense layout
        return draw(n, 2 * c, h + 2, w + 3)[:, ::2, 1:h + 1, 2:w + 2]
    if case.layout == "transposed":  # H and W strides swapped
        return draw(n, c, w, h).transpose(2, 3)
    if case.layout == "channels_last_batch_slice":  # still channels_last-contiguous, but at a storage offset
        return draw(n + 1, c, h, w).contiguous(memory_format=torch.channels_last)[1:]
    raise AssertionError(case.layout)


def make_inputs(case: GhostCase, dtype: torch.dtype, device, seed: int, requires_grad: bool = False,
                kink_margin: float = 0.0):
    """(x, w_primary, b_primary, w_cheap, b_cheap) for ``case``: drawn on the CPU, rounded to dtype, moved to
    device. With requires_grad every one of them is a leaf that requires grad. With kink_margin > 0, x is redrawn
    where needed so that no pre-activation lies within kink_margin of its activation's kinks (see below)."""
    gen = torch.Generator().manual_seed(seed)
    x = _make_x(case, gen, dtype, device)
    m = case.ratio - 1
    params = [
        torch.randn(case.init, case.c, 1, 1, generator=gen) * (3.0 / math.sqrt(case.c)),  # w_primary
        torch.randn(case.init, generator=gen) * 0.5,  # b_primary
        torch.randn(case.init * m, 1, case.k, case.k, generator=gen) * (1.2 / case.k),  # w_cheap
        torch.randn(case.init * m, generator=gen) * 0.5,  # b_cheap
    ]
    out = [x] + [t.to(device=device, dtype=dtype) for t in params]
    if kink_margin > 0:
        _move_away_from_kinks(out, case.act, kink_margin, gen)
    if requires_grad:
        out = [t.requires_grad_() for t in out]
    return tuple(out)


# Where each activation's derivative jumps.
KINKS = {"identity": (), "relu": (0.0,), "relu6": (0.0, 6.0), "silu": (), "hardswish": (-3.0, 3.0)}


# The margin the gradient tests keep between pre-activations and kinks: 300x the float32 error of z (|z| ~ 3,
# sums of up to 960 products). A kernel that rounds x1 to float16/bfloat16 before the depthwise conv has z2 errors
# of ~1e-2 and may still flip a few masks; its backward tolerances have to absorb that.
KINK_MARGIN = 1e-3


def _near_kink(z: torch.Tensor, act: str, margin: float) -> torch.Tensor:
    near = torch.zeros_like(z, dtype=torch.bool)
    for kink in KINKS[act]:
        near |= (z - kink).abs() < margin
    return near


def _move_away_from_kinks(inputs, act: str, margin: float, gen: torch.Generator, max_rounds: int = 50) -> None:
    """Redraw x, in place, at every pixel where some pre-activation (z1 or z2, at any channel) lies within
    ``margin`` of a kink of ``act``, until none does.

    Why: at a kink the derivative jumps (relu's 0, relu6's 0 and 6, hardswish's -3 and 3). A backend whose z is off
    by a rounding error from the float64 reference's z takes the other side's derivative there, and its gradient
    differs by O(1) at that pixel: a correct kernel would fail. Redrawing the pixel's x changes z1 at the pixel and
    z2 through the depthwise kernel's centre tap. Values still come as close as ``margin`` to every kink."""
    if not KINKS[act] or inputs[0].numel() == 0:
        return
    x = inputs[0]
    x64 = _f64(x)
    params = [_f64(t) for t in inputs[1:]]
    for _ in range(max_rounds):
        with single_thread():
            z1, z2 = _pre_activations(x64, *params, act)
        bad = (_near_kink(z1, act, margin).any(dim=1) | _near_kink(z2, act, margin).any(dim=1))  # [N, H, W]
        if not bad.any():
            x.copy_(x64.to(x.dtype))
            return
        n_bad = int(bad.sum())
        fresh = torch.randn(n_bad, x64.shape[1], generator=gen).to(x.dtype).double()  # rounded like x
        x64.permute(0, 2, 3, 1)[bad] = fresh
    raise AssertionError(f"could not keep the pre-activations {margin} away from the kinks of {act}")


def make_grad_out(case: GhostCase, dtype: torch.dtype, device, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(case.n, case.oc, case.h, case.w, generator=gen).to(device=device, dtype=dtype)


def expected_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The contract's rule, written out independently of the package: channels_last iff x is
    channels_last-contiguous and not contiguous (a tensor that is both, e.g. C == 1 or H == W == 1, counts as
    contiguous)."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def assert_memory_format(t: torch.Tensor, fmt: torch.memory_format, what: str) -> None:
    assert t.is_contiguous(memory_format=fmt), (
        f"{what}: expected {fmt} (strides of a dense tensor in that format), got strides {t.stride()} "
        f"for shape {tuple(t.shape)}")


# ---------------------------------------------------------------------------------------------------------------
# The float64 reference
# ---------------------------------------------------------------------------------------------------------------

def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


@contextlib.contextmanager
def single_thread():
    """Run the reference on one thread. float64 convolutions take ATen's slow path, which opens one parallel region
    per small step; on a busy 2-core machine every region waits for a descheduled OpenMP thread (measured: 0.3 s
    instead of 50 us for one depthwise conv), and these tensors are too small to gain from threads anyway."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def reference_forward(inputs, out_channels: int, act: str) -> torch.Tensor:
    with single_thread():
        return ghost_module_reference(*[_f64(t) for t in inputs], out_channels, act)


def reference_grads(inputs, grad_out: torch.Tensor, out_channels: int, act: str):
    """Gradients of (x, w_primary, b_primary, w_cheap, b_cheap) by float64 eager autograd."""
    with single_thread():
        leaves = [_f64(t).requires_grad_() for t in inputs]
        out = ghost_module_reference(*leaves, out_channels, act)
        return torch.autograd.grad(out, leaves, _f64(grad_out))


def _pre_activations(x, w_primary, b_primary, w_cheap, b_cheap, act):
    """(z1, z2): the inputs of the two activations, computed like the reference."""
    k = w_cheap.shape[-1]
    z1 = torch.nn.functional.conv2d(x, w_primary, b_primary)
    x1 = activation(act)(z1)
    z2 = torch.nn.functional.conv2d(x1, w_cheap, b_cheap, padding=k // 2, groups=w_primary.shape[0])
    return z1, z2


# ---------------------------------------------------------------------------------------------------------------
# GhostNet 1.0x shapes
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GhostShape:
    """One Ghost module of a GhostNet at its real input resolution."""

    name: str
    inp: int
    oup: int
    h: int
    w: int
    ratio: int
    k: int
    act: str  # "relu" (ghost1) or "identity" (ghost2)

    @property
    def init(self) -> int:
        return math.ceil(self.oup / self.ratio)


def _make_divisible(v: float, divisor: int = 4) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


# GhostNet's configuration: one list per stage, rows [k, exp, out, se_ratio, stride] (see shared/ghostnet-facts.md).
_GHOSTNET_CFG = [
    [[3, 16, 16, 0, 1]],
    [[3, 48, 24, 0, 2]],
    [[3, 72, 24, 0, 1]],
    [[5, 72, 40, 0.25, 2]],
    [[5, 120, 40, 0.25, 1]],
    [[3, 240, 80, 0, 2]],
    [[3, 200, 80, 0, 1], [3, 184, 80, 0, 1], [3, 184, 80, 0, 1], [3, 480, 112, 0.25, 1], [3, 672, 112, 0.25, 1]],
    [[5, 672, 160, 0.25, 2]],
    [[5, 960, 160, 0, 1], [5, 960, 160, 0.25, 1], [5, 960, 160, 0, 1], [5, 960, 160, 0.25, 1]],
]


def ghost_shapes_from_config(width: float = 1.0, resolution: int = 224) -> list[GhostShape]:
    """The Ghost modules of GhostNet, walked from the configuration table (fallback while no model exists)."""
    shapes = []
    size = (resolution + 1) // 2  # the stem's stride-2 3x3 conv, padding 1
    inp = _make_divisible(16 * width)
    for i, stage in enumerate(_GHOSTNET_CFG):
        for j, (k, exp, out, _se, stride) in enumerate(stage):
            mid, oup = _make_divisible(exp * width), _make_divisible(out * width)
            shapes.append(GhostShape(f"blocks.{i}.{j}.ghost1", inp, mid, size, size, 2, 3, "relu"))
            if stride > 1:  # conv_dw: k x k, stride 2, padding (k-1)//2
                size = (size + 2 * ((k - 1) // 2) - k) // stride + 1
            shapes.append(GhostShape(f"blocks.{i}.{j}.ghost2", mid, oup, size, size, 2, 3, "identity"))
            inp = oup
    return shapes


def ghost_shapes_from_model(resolution: int = 224) -> list[GhostShape]:
    """The Ghost modules of ``ghostkernels.models.ghostnet_100()``, recorded with forward hooks."""
    from ghostkernels import models

    model = models.ghostnet_100().eval()
    names = {m: name for name, m in model.named_modules()}
    shapes: list[GhostShape] = []

    def record(module, args, output):
        x = args[0]
        primary, cheap = module.primary_conv[0], module.cheap_operation[0]
        init = primary.out_channels
        has_act = any(isinstance(m, torch.nn.ReLU) for m in module.primary_conv)
        shapes.append(GhostShape(names[module], x.shape[1], output.shape[1], x.shape[2], x.shape[3],
                                 cheap.out_channels // init + 1, cheap.kernel_size[0],
                                 "relu" if has_act else "identity"))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, models.GhostModule)]
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, resolution, resolution))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def models_available() -> bool:
    return os.path.isfile(os.path.join(_REPO_ROOT, "ghostkernels", "models.py")) or os.path.isfile(
        os.path.join(_REPO_ROOT, "ghostkernels", "models", "__init__.py"))


@functools.lru_cache(maxsize=None)
def ghostnet_100_shapes() -> tuple[GhostShape, ...]:
    """Every Ghost module of GhostNet 1.0x at 224x224: from the model when ghostkernels.models exists."""
    if models_available():
        return tuple(ghost_shapes_from_model())
    return tuple(ghost_shapes_from_config())


# The tests keep every channel count but divide the spatial size by 4 (112 -> 28, ..., 7 -> 2): the channel
# counts decide the kernels' blocking and slicing, the spatial size mostly the run time.
SPATIAL_DIVISOR = 4
GHOSTNET_BATCH = 2


# The reduced set keeps the cheapest few shapes: real channel counts (C = 672 and 80, init 80 and 92), tiny images.
GHOSTNET_REDUCED_COUNT = 2


def ghostnet_cases() -> list[GhostCase]:
    cases = [GhostCase(n=GHOSTNET_BATCH, c=s.inp, h=math.ceil(s.h / SPATIAL_DIVISOR),
                       w=math.ceil(s.w / SPATIAL_DIVISOR), init=s.init, ratio=s.ratio, k=s.k, out_channels=s.oup,
                       act=s.act, label=f"{i:02d}-{s.inp}to{s.oup}")
             for i, s in enumerate(ghostnet_100_shapes())]
    cheapest = sorted(range(len(cases)), key=lambda i: cases[i].elements())[:GHOSTNET_REDUCED_COUNT]
    return [c.replace(reduced=True) if i in cheapest else c for i, c in enumerate(cases)]


# ---------------------------------------------------------------------------------------------------------------
# Edge cases: every axis of the contract, each varied on its own around a small base case
# ---------------------------------------------------------------------------------------------------------------

_BASE = GhostCase(n=2, c=8, h=7, w=6, init=5, ratio=2, k=3, act="relu")


def edge_cases() -> list[GhostCase]:
    b = _BASE
    r = dict(reduced=True)
    cases = [
        b.replace(label="base", **r),
        # H or W of 1, both 1, and images smaller than the depthwise kernel
        b.replace(h=1, w=9, label="h1"),
        b.replace(h=9, w=1, label="w1"),
        b.replace(h=1, w=1, label="hw1", **r),
        b.replace(h=2, w=3, k=7, label="kernel-larger-than-image", **r),
        # odd sizes everywhere, including odd init
        b.replace(c=7, h=13, w=11, init=7, label="odd"),
        # out_channels: the slice falls inside x1, exactly at its end, inside x2, one short of the full width
        b.replace(out_channels=1, label="oc1"),
        b.replace(out_channels=3, label="oc-inside-x1"),
        b.replace(out_channels=5, label="oc-equals-init"),
        b.replace(out_channels=7, label="oc-inside-x2", **r),
        b.replace(out_channels=9, label="oc-full-minus-1"),
        # ratio 3 and 4: cheap channel j reads primary channel j // (ratio - 1)
        b.replace(init=4, ratio=3, label="ratio3"),
        b.replace(init=4, ratio=3, out_channels=7, label="ratio3-oc-inside-x2"),
        b.replace(init=4, ratio=3, out_channels=11, label="ratio3-oc-odd", **r),
        b.replace(init=3, ratio=4, k=5, out_channels=10, label="ratio4"),
        # depthwise kernel sizes
        b.replace(k=1, label="k1", **r),
        b.replace(k=5, label="k5"),
        b.replace(k=7, h=9, w=10, label="k7"),
        # tall and wide images: the CPU kernel cuts rows into bands whose halos must meet exactly
        b.replace(n=1, c=4, h=37, w=5, init=3, k=5, label="tall-k5"),
        b.replace(n=1, c=4, h=41, w=3, init=3, k=7, label="tall-k7"),
        b.replace(n=1, c=4, h=3, w=70, init=3, label="wide"),
        # batch sizes, and channel counts that exercise the GEMM's blocking
        b.replace(n=1, label="n1"),
        b.replace(n=5, h=4, w=4, label="n5"),
        b.replace(c=96, init=20, h=5, w=5, out_channels=37, label="wide-channels"),
        b.replace(c=1, label="c1"),
        # N = 0
        b.replace(n=0, label="n0", **r),
        b.replace(n=0, layout="channels_last", label="n0"),
    ]
    # every activation, on a case with a slice inside x2, ratio 3 and k 5
    act_base = b.replace(init=4, ratio=3, k=5, out_channels=10)
    cases += [act_base.replace(act=a, label="act") for a in ACTS]
    cases.append(b.replace(h=4, w=5, out_channels=7, act="hardswish", label="act-small", **r))
    # every layout, on the base case and on a ratio-3 case with a slice
    for layout in LAYOUTS[1:]:
        cases.append(b.replace(layout=layout, label="layout", reduced=layout in ("channels_last", "sliced")))
        cases.append(act_base.replace(layout=layout, act="hardswish", label="layout"))
    cases.append(b.replace(c=1, layout="channels_last", label="layout-ambiguous"))  # C == 1: also contiguous
    cases.append(b.replace(h=1, w=1, layout="channels_last", label="layout-ambiguous"))  # also contiguous
    return cases


# ---------------------------------------------------------------------------------------------------------------
# Parametrization
# ---------------------------------------------------------------------------------------------------------------

def op_params(cases: list[GhostCase], backends=BACKENDS, backward: bool = False) -> list:
    """pytest params (backend, dtype, case) for every backend and each dtype it promises (for ``backward``: each
    dtype whose gradients are compared); under the Triton interpreter only a reduced set of small cases."""
    params = []
    for backend in backends:
        chosen = cases
        if backend == "triton" and triton_interpreted():  # it executes every program in numpy: seconds per call
            chosen = [c for c in cases if c.reduced]
        for dtype in (backward_dtypes if backward else backend_dtypes)(backend):
            for case in chosen:
                params.append(pytest.param(backend, dtype, case, id=f"{backend}-{dtype_name(dtype)}-{case.id}"))
    return params


def call_op(backend: str, inputs, out_channels: int, act: str) -> torch.Tensor:
    return ghostkernels.ops.ghost_module(*inputs, out_channels, act, backend=backend)
