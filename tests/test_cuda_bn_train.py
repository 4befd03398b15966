"""The CUDA kernels of the train-mode BatchNorm passes (csrc/cuda/ghost_bn_kernels.cuh) against the float64 formula of
each pass (bn_train_testing.ref_*):

- without a GPU: the unchanged kernel code and the launchers' own launch sequence (bn_run) on the host emulator
  (modes 4-8 of csrc/cuda/emulation/ghost_cuda_emulator.cpp), outputs and scratch NaN-filled first, every CUDA dtype,
  both layouts, small odd shapes (halos wider than the image, W past one 32-wide tile, a GEMM past one 64-row
  tile, slices in either half) and a large-mean input; each block's threads in reverse order for some cases (a
  missing barrier changes the result);
- with a GPU (skipped here): the same passes as torch ops on CUDA tensors, their opcheck, and ghost_module_bn_train
  forward and backward with backend="cuda" against the float64 layers (bench/gpu/run_gpu_session.sh's bn_train
  step).
Compilation for sm_80/sm_90 is tests/test_cuda_compile.py's (every .cu)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import bn_train_testing as bt
import ghost_testing as gt
from cuda_toolchain import DTYPE_CODE, emulator_or_skip, run_emulator
from ghostkernels.ops.reference import ACTS

# Tolerances (ghost_testing's scaled form: atol relative to the largest expected magnitude), per dtype: the 4-D
# tensors the kernels store in the dtype (z1, out, grad x: float32 arithmetic, one rounding to the dtype, unit
# roundoff 2^-11 for float16 and 2^-9 for bfloat16), and the float32 results (statistics, sums, weight gradients:
# computed in float32 from inputs that are exact in every dtype, partials combined in float64).
STORED_TOL = {torch.float32: gt.Tol(2e-5, 1e-5), torch.float16: gt.Tol(1.5e-3, 1e-3),
              torch.bfloat16: gt.Tol(8e-3, 4e-3)}
FLOAT_TOL = {torch.float32: gt.Tol(3e-5, 1e-5), torch.float16: gt.Tol(3e-5, 1e-5),
             torch.bfloat16: gt.Tol(3e-5, 1e-5)}


@dataclasses.dataclass(frozen=True)
class Case:
    n: int
    c: int
    h: int
    w: int
    init: int
    ratio: int
    k: int
    oc: int
    act: str
    dtype: torch.dtype
    channels_last: bool
    x_mean: float = 0.0
    reverse: bool = False

    @property
    def id(self) -> str:
        return (f"n{self.n}c{self.c}h{self.h}w{self.w}-i{self.init}r{self.ratio}k{self.k}o{self.oc}-{self.act}-"
                f"{gt.dtype_name(self.dtype)}-{'nhwc' if self.channels_last else 'nchw'}"
                + (f"-mean{self.x_mean:g}" if self.x_mean else "") + ("-reverse" if self.reverse else ""))


CASES = [
    Case(2, 6, 5, 7, 5, 2, 3, 10, "relu", torch.float32, False),
    Case(2, 6, 5, 7, 5, 2, 3, 10, "relu", torch.float32, True, reverse=True),
    # W = 37: two tiles across, the second mostly outside; a slice inside the cheap half.
    Case(1, 5, 9, 37, 4, 3, 5, 9, "silu", torch.float16, True),
    # 70 input channels (two 64-wide GEMM tiles, five k slices), k = 7 on 3x3 maps (the halo wider than the image),
    # a slice inside x1 (the cheap half all sliced off).
    Case(3, 70, 3, 3, 3, 2, 7, 2, "hardswish", torch.bfloat16, False, reverse=True),
    Case(2, 4, 6, 5, 3, 3, 3, 7, "relu6", torch.float32, False),
    Case(2, 4, 6, 5, 3, 3, 3, 7, "identity", torch.bfloat16, True),
    # A large mean: |mean(z1)| ~ 10^3 against a standard deviation ~ 3 (kappa > 100).
    Case(2, 8, 6, 6, 4, 2, 1, 8, "relu", torch.float32, True, x_mean=300.0),
    Case(2, 8, 6, 6, 4, 2, 3, 8, "silu", torch.float16, False, x_mean=300.0),
]


def _inputs(case: Case, seed: int) -> dict:
    """Fresh random inputs, the 4-D ones exact in the dtype (float32 copies of the dtype's values), vectors float32."""
    gen = torch.Generator().manual_seed(seed)
    m, dt = case.ratio - 1, case.dtype

    def draw(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=gen) * scale + shift

    return dict(
        x=(draw(case.n, case.c, case.h, case.w) + case.x_mean).to(dt).float(),
        w1=draw(case.init, case.c, 1, 1, scale=3.0 / math.sqrt(case.c)),
        w2=draw(case.init * m, 1, case.k, case.k, scale=1.2 / case.k),
        bn1=(draw(case.init, scale=0.3, shift=1.0), draw(case.init, scale=0.5)),
        bn2=(draw(case.init * m, scale=0.3, shift=1.0), draw(case.init * m, scale=0.5)),
        go=draw(case.n, case.oc, case.h, case.w).to(dt).float(),
        mean_dy=[draw(n, scale=0.3) for n in (case.init, case.init, case.init * m, case.init * m)],
    )


class Emulated:
    """The passes of one case on the host emulator."""

    def __init__(self, exe: str, case: Case, tmp_path):
        self.exe, self.case, self.tmp = exe, case, tmp_path

    def __call__(self, pass_index: int, arrays, sizes):
        c = self.case
        header = (4 + pass_index, DTYPE_CODE[c.dtype], 0, int(c.channels_last), ACTS.index(c.act), c.n, c.c, c.h,
                  c.w, c.init, c.ratio - 1, c.k, c.oc, 0, 0)
        flat, log = run_emulator(self.exe, self.tmp / f"in{pass_index}", self.tmp / f"out{pass_index}", header,
                                 [a.reshape(-1) for a in arrays], reverse=c.reverse)
        assert flat.numel() == sum(math.prod(s) for s in sizes), log
        return [t.reshape(s) for t, s in zip(flat.split([math.prod(s) for s in sizes]), sizes)]


def _run_passes(case: Case, seed: int, run, stored_as):
    """All five passes through ``run(pass_index, float32 arrays, output sizes) -> outputs``, each against its float64
    formula on the same inputs. ``stored_as(t)``: a kernel's 4-D output as the next pass takes it."""
    a = _inputs(case, seed)
    n, c, h, w, i, m, k, oc = case.n, case.c, case.h, case.w, case.init, case.ratio - 1, case.k, case.oc
    st, ft = STORED_TOL[case.dtype], FLOAT_TOL[case.dtype]

    z1, mean1, var1 = run(0, [a["x"], a["w1"]], [(n, i, h, w), (i,), (i,)])
    ref_z1 = bt.ref_conv1x1_stats(a["x"], a["w1"])[0]
    gt.assert_close_to_reference(z1, ref_z1, st, "z1")
    z1 = stored_as(z1)
    stored_mean, stored_var = bt._moments(z1.double())  # the statistics are of z1 as stored
    gt.assert_close_to_reference(mean1, stored_mean, ft, "mean1")
    gt.assert_close_to_reference(var1, stored_var, ft, "var1")

    s1 = bt.stage_vectors(stored_mean.float(), stored_var.float(), *a["bn1"], 1e-5)
    mean2, var2 = run(1, [z1, *s1, a["w2"]], [(i * m,), (i * m,)])
    ref_mean2, ref_var2 = bt.ref_cheap_stats(z1, s1, a["w2"], case.act)
    gt.assert_close_to_reference(mean2, ref_mean2, ft, "mean2")
    gt.assert_close_to_reference(var2, ref_var2, ft, "var2")

    s2 = bt.stage_vectors(ref_mean2.float(), ref_var2.float(), *a["bn2"], 1e-3)
    (out,) = run(2, [z1, *s1, a["w2"], *s2], [(n, oc, h, w)])
    gt.assert_close_to_reference(out, bt.ref_forward_out(z1, s1, a["w2"], s2, oc, case.act), st, "out")

    go = a["go"]
    sums_p, sums_c = run(3, [go, z1, *s1, a["w2"], *s2], [(2, i), (8, i * m)])
    ref_p, ref_c = bt.ref_backward_reduce(go, z1, s1, a["w2"], s2, oc, case.act)
    gt.assert_close_to_reference(sums_p, ref_p, ft, "sums_primary")
    gt.assert_close_to_reference(sums_c, ref_c, ft, "sums_cheap")

    b1 = (*s1, *a["mean_dy"][:2])
    b2 = (*s2, *a["mean_dy"][2:])
    gx, gw1, gw2 = run(4, [go, a["x"], z1, a["w1"], *b1, a["w2"], *b2], [(n, c, h, w), (i, c, 1, 1), (i * m, 1, k, k)])
    ref_gx, ref_gw1, ref_gw2 = bt.ref_backward(go, a["x"], z1, a["w1"], b1, a["w2"], b2, oc, case.act)
    gt.assert_close_to_reference(gx, ref_gx, st, "grad_x")
    gt.assert_close_to_reference(gw1, ref_gw1, ft, "grad_w1")
    gt.assert_close_to_reference(gw2, ref_gw2, ft, "grad_w2")


@pytest.fixture(scope="module")
def emulator() -> str:
    return emulator_or_skip()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bn_train_passes_under_host_emulation(case, emulator, tmp_path, seed):
    _run_passes(case, seed, Emulated(emulator, case, tmp_path), lambda t: t)


# ---------------------------------------------------------------------------------------------------------------
# On a GPU: the ops on CUDA tensors
# ---------------------------------------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not gt.has_cuda_device(), reason="needs a CUDA device")


# Per pass, the positions of its arguments in _run_passes that are activations (x, z1, grad_out: in the case's dtype
# and layout); the others are float32 weights and vectors.
ACTIVATION_ARGS = {0: (0,), 1: (0,), 2: (0,), 3: (0, 1), 4: (0, 1, 2)}


def _on_gpu(case: Case):
    """run() for _run_passes: the torch ops on CUDA tensors of the case's dtype and layout."""
    ops = torch.ops.ghostkernels
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format

    def run(pass_index, arrays, sizes):
        t = [a.cuda() for a in arrays]
        for k in ACTIVATION_ARGS[pass_index]:
            t[k] = t[k].to(case.dtype).contiguous(memory_format=fmt)
        if pass_index == 0:
            outs = ops.ghost_bn_conv1x1_stats(*t)
        elif pass_index == 1:
            outs = ops.ghost_bn_cheap_stats(*t, case.act)
        elif pass_index == 2:
            outs = (ops.ghost_bn_forward_out(*t, case.oc, case.act),)
        elif pass_index == 3:
            outs = ops.ghost_bn_backward_reduce(*t, case.oc, case.act)
        else:
            outs = ops.ghost_bn_backward(*t, case.oc, case.act)
        if pass_index in (0, 2, 4):  # z1, out, grad x: the dtype and memory format of the activations
            assert outs[0].dtype == case.dtype and outs[0].is_contiguous(memory_format=fmt), "output format"
        return [o.float().cpu().reshape(s) for o, s in zip(outs, sizes)]

    return run


@needs_gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bn_train_passes_on_gpu(case, seed):
    import ghostkernels

    assert ghostkernels.ops.bn_train_kernels_available("cuda")
    _run_passes(case, seed, _on_gpu(case), lambda t: t)


@needs_gpu
def test_opcheck_passes_on_gpu(seed):
    """torch.library.opcheck of the five passes on CUDA tensors (schema, fake kernels, no autograd)."""
    case, ops = CASES[0], torch.ops.ghostkernels
    a = {k: (v.cuda() if isinstance(v, torch.Tensor) else [t.cuda() for t in v])
         for k, v in _inputs(case, seed).items()}
    z1, m1, v1 = ops.ghost_bn_conv1x1_stats(a["x"], a["w1"])
    s1 = bt.stage_vectors(m1, v1, *a["bn1"], 1e-5)
    m2, v2 = ops.ghost_bn_cheap_stats(z1, *s1, a["w2"], case.act)
    s2 = bt.stage_vectors(m2, v2, *a["bn2"], 1e-3)
    b1, b2 = (*s1, *a["mean_dy"][:2]), (*s2, *a["mean_dy"][2:])
    calls = {
        "ghost_bn_conv1x1_stats": (a["x"], a["w1"]),
        "ghost_bn_cheap_stats": (z1, *s1, a["w2"], case.act),
        "ghost_bn_forward_out": (z1, *s1, a["w2"], *s2, case.oc, case.act),
        "ghost_bn_backward_reduce": (a["go"], z1, *s1, a["w2"], *s2, case.oc, case.act),
        "ghost_bn_backward": (a["go"], a["x"], z1, a["w1"], *b1, a["w2"], *b2, case.oc, case.act),
    }
    for name, args in calls.items():
        torch.library.opcheck(getattr(ops, name), args)


GPU_OP_CASES = [bt.TrainCase(n=3, c=6, h=5, w=7, init=5, label="base"),
                bt.TrainCase(n=2, c=40, h=9, w=37, init=12, ratio=3, k=5, out_channels=30, act="silu",
                             layout="channels_last", conv_bias=True, label="wide"),
                bt.TrainCase(n=2, c=8, h=6, w=6, init=4, x_mean=300.0, act="relu6", label="large-mean")]


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=gt.dtype_name)
@pytest.mark.parametrize("case", GPU_OP_CASES, ids=lambda c: c.id)
def test_ghost_module_bn_train_on_gpu(case, dtype, seed):
    """The whole op with backend="cuda", forward and backward, against the float64 layers."""
    args = bt.make_inputs(case, dtype, seed, requires_grad=True)
    cuda_args = {k: (v.detach().cuda().requires_grad_() if isinstance(v, torch.Tensor) else v)
                 for k, v in args.items()}
    out, mean1, var1, mean2, var2, count, _ = bt.call(cuda_args, backend="cuda")
    expected = bt.reference(args)
    gt.assert_close_to_reference(out, expected[0], bt.FORWARD_TOL[dtype], "output")
    for name, got, want in zip(("mean1", "var1", "mean2", "var2"), (mean1, var1, mean2, var2), expected[1:]):
        gt.assert_close_to_reference(got, want, bt.FORWARD_TOL[dtype], name)
    if dtype == torch.bfloat16 and case.act not in ("identity", "silu"):
        return  # relu masks flipped by bfloat16's rounding of z1 (see test_train_bn_ops.BACKWARD_PARAMS)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    names = [k for k in bt.TENSOR_INPUTS if args[k] is not None]
    grads = torch.autograd.grad(out, [cuda_args[k] for k in names], grad_out.cuda())
    ref = bt.reference_grads(args, grad_out)
    for name, g in zip(names, grads):
        gt.assert_close_to_reference(g, ref[name], bt.BACKWARD_TOL[dtype], f"grad {name}")


def test_backend_cuda_on_cpu_tensors_raises(seed):
    args = bt.make_inputs(bt.TrainCase(n=2, c=4, h=3, w=3, init=3), torch.float32, seed)
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        bt.call(args, backend="cuda")
