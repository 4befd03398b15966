"""The Triton train-mode BatchNorm (ghostkernels.triton.bn_train_kernels, registered in bn_train_op):
ghostkernels.ops.ghost_module_bn_train(backend="triton") with its backward, and each of its five passes, against the
float64 layers and the float64 formulas of the passes' schemas.

Without a CUDA device the kernels run under Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1), which is slow: a few small cases (odd widths, images that span several pixel blocks and end in
a partial one, halos at every edge, k = 5, ratio 3, both slices, large means), float32 and float16, NCHW and
channels_last. Every test runs with fill_uninitialized_memory on (conftest), so every output the kernels allocate
starts as NaN and an element they never write fails the comparison. On a GPU the same tests run compiled, plus
bfloat16 and torch.compile with Inductor; without one, the kernels are also compiled for sm_90 (compile_check).
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import pytest
import torch

import bn_train_testing as bt
import ghost_testing as gt

pytest.importorskip("triton")
if not gt.has_cuda_device() and os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("tests/test_triton_bn_train.py: no CUDA device and TRITON_INTERPRET is not 1 "
                       "(tests/conftest.py sets it before triton is imported)")

import ghostkernels  # noqa: E402
import ghostkernels.triton as gtriton  # noqa: E402
from ghostkernels.ops import train_bn  # noqa: E402
from ghostkernels.triton import bn_train_op  # noqa: E402

gtriton.load_op()
DEVICE = gt.backend_device("triton")
OPS = torch.ops.ghostkernels

# Tolerances against float64 (ghost_testing's scaled form: atol relative to max|expected|). float32: float32
# arithmetic in other summation orders; the BN divides by the batch standard deviation (~1 here) and the BN
# backward's centred gradients are differences of terms as large as the uncentred ones (as bn_train_testing's CPU
# tolerances); measured under the interpreter <= 6e-7 of max|expected| forward and backward. float16: z1 and the
# output are rounded to float16 (unit roundoff 2^-11 = 4.9e-4; everything between is float32), grad x once more;
# measured <= 6.4e-4 forward, 5.7e-4 backward.
FORWARD_TOL = {torch.float32: gt.Tol(atol=2e-5, rtol=1e-5), torch.float16: gt.Tol(atol=3e-3, rtol=2e-3),
               torch.bfloat16: gt.Tol(atol=3e-2, rtol=1.6e-2)}
BACKWARD_TOL = {torch.float32: gt.Tol(atol=5e-5, rtol=2e-5), torch.float16: gt.Tol(atol=4e-3, rtol=2e-3),
                torch.bfloat16: gt.Tol(atol=6e-2, rtol=3e-2)}
# The passes on their own (inputs given, so no error carried over from the earlier passes): float32 and float16
# alike, since z1 is an input here and everything computed from it is float32; the output pass rounds once.
PASS_TOL = {torch.float32: gt.Tol(atol=1e-5, rtol=5e-6), torch.float16: gt.Tol(atol=1e-3, rtol=1e-3),
            torch.bfloat16: gt.Tol(atol=8e-3, rtol=8e-3)}
DTYPES = (torch.float32, torch.float16) + ((torch.bfloat16,) if gt.has_cuda_device() else ())


def _on_device(args: dict) -> dict:
    out = dict(args)
    for name in bt.TENSOR_INPUTS:
        t = args[name]
        if t is not None:
            moved = t.detach().to(DEVICE)
            out[name] = moved.requires_grad_(t.requires_grad)
    return out


def _cpu(args: dict) -> dict:
    """The arguments on the CPU, for the float64 reference."""
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def test_outputs_start_poisoned():
    """The comparisons' premise: what the kernels' outputs start as (torch.empty) is NaN, not plausible numbers."""
    assert torch.utils.deterministic.fill_uninitialized_memory
    assert torch.isnan(torch.empty(8, device=DEVICE)).all()


# The whole op, forward and backward. x has a non-zero mean everywhere (x_mean); silu for float16 gradients (a
# float16 pre-activation within rounding of a kink would take the other derivative there).
OP_CASES = [
    pytest.param(bt.TrainCase(n=2, c=6, h=5, w=7, init=5, out_channels=8, act="hardswish", conv_bias=True,
                              x_mean=0.7, label="slice-in-x2-odd-w"), torch.float32, id="slice-in-x2-odd-w-f32"),
    pytest.param(bt.TrainCase(n=1, c=5, h=4, w=5, init=4, ratio=3, k=5, out_channels=11, act="silu",
                              layout="channels_last", x_mean=-0.5, label="ratio3-k5-cl"), torch.float16,
                 id="ratio3-k5-channels_last-f16"),
    pytest.param(bt.TrainCase(n=2, c=6, h=3, w=5, init=4, ratio=3, act="relu", layout="channels_last",
                              affine=False, x_mean=0.3, label="noaffine-cl"), torch.float32,
                 id="noaffine-channels_last-f32"),
]


def _check_op(case: bt.TrainCase, dtype: torch.dtype, seed: int, scale: float = 1.0) -> None:
    args = _on_device(bt.make_inputs(case, dtype, seed, requires_grad=True))
    out, mean1, var1, mean2, var2, count, saved_z1 = bt.call(args, backend="triton")
    expected = bt.reference(_cpu(args))
    tol = gt.Tol(FORWARD_TOL[dtype].atol * scale, FORWARD_TOL[dtype].rtol * scale)
    assert out.dtype == dtype and out.device.type == DEVICE.type
    gt.assert_memory_format(out, gt.expected_memory_format(args["x"]), "output")
    gt.assert_close_to_reference(out, expected[0], tol, "output")
    for name, got, want in zip(("mean1", "var1", "mean2", "var2"), (mean1, var1, mean2, var2), expected[1:]):
        assert got.dtype == torch.float32, name
        gt.assert_close_to_reference(got, want, tol, name)
    assert float(count) == case.n * case.h * case.w
    assert saved_z1.dim() == (4 if train_bn.keep_z1(case.c) else 1)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE, dtype)
    names = [k for k in bt.TENSOR_INPUTS if args[k] is not None]
    grads = torch.autograd.grad(out, [args[k] for k in names], grad_out)
    ref = bt.reference_grads(_cpu(args), grad_out.cpu())
    btol = gt.Tol(BACKWARD_TOL[dtype].atol * scale, BACKWARD_TOL[dtype].rtol * scale)
    for name, g in zip(names, grads):
        assert g.dtype == args[name].dtype and g.shape == args[name].shape, name
        gt.assert_close_to_reference(g, ref[name], btol, f"grad {name}")
    gt.assert_memory_format(grads[0], gt.expected_memory_format(args["x"]), "grad x")


@pytest.mark.parametrize("case,dtype", OP_CASES)
def test_op_forward_backward_matches_float64_layers(case, dtype, seed):
    _check_op(case, dtype, seed)


def test_large_mean_statistics_keep_their_precision(seed):
    """x of mean 300: z1's mean is ~100 standard deviations (kappa). The statistics are held to float32's plain
    precision (E[z^2] - E[z]^2 would lose the variance: 1e4 * 1e4 in a 24-bit mantissa); the output and gradients
    to the float32 tolerance times kappa, as for the CPU kernels (any computation in float32, the reference's
    included, rounds z1 at ~kappa standard deviations before centring it). c = 32: z1 is kept for the backward;
    out_channels < init: the depthwise half is sliced off (its statistics are still computed)."""
    case = bt.TrainCase(n=2, c=32, h=3, w=5, init=4, out_channels=3, act="identity", x_mean=300.0,
                        label="large-mean")
    args = _on_device(bt.make_inputs(case, torch.float32, seed))
    with torch.no_grad():
        z1 = torch.nn.functional.conv2d(args["x"].cpu().double(), args["w_primary"].cpu().double())
    kappa = float((z1.mean((0, 2, 3)).abs() / z1.std((0, 2, 3))).max())
    assert kappa > 30
    z1_stored, mean1, var1 = OPS.ghost_bn_conv1x1_stats_triton(args["x"], args["w_primary"].float())
    stored = z1_stored.cpu().double()
    torch.testing.assert_close(mean1.cpu().double(), stored.mean((0, 2, 3)), atol=0.0, rtol=2e-6)
    torch.testing.assert_close(var1.cpu().double(), stored.var((0, 2, 3), unbiased=False), atol=0.0, rtol=2e-5)
    _check_op(case, torch.float32, seed, scale=kappa)


def test_entry_point_is_the_triton_op_and_deterministic(seed):
    case = OP_CASES[0].values[0]
    args = _on_device(bt.make_inputs(case, torch.float32, seed))
    via_ops = bt.call(args, backend="triton")
    direct = OPS.ghost_module_bn_train_triton(*ghostkernels.ops.layouts.GhostModuleBnTrainArgs(**args, group=""))
    for a, b in zip(via_ops, direct):
        assert torch.equal(a, b)  # the same kernels, fixed reduction orders: bit for bit


def test_fused_ghost_module_trains_through_the_triton_op(monkeypatch, seed):
    """FusedGhostModule(backend="triton") in train mode: one ghost_module_bn_train call on the Triton backend, the
    output, grad x and the running statistics of the float64 GhostModule layers."""
    import variants
    from ghostkernels import FusedGhostModule, GhostModule

    counter = gt.CallCounter(gtriton.ghost_module_bn_train_triton)
    monkeypatch.setattr(gtriton, "ghost_module_bn_train_triton", counter)
    torch.manual_seed(seed)
    ref = variants.randomize_batchnorm(GhostModule(6, 8, ratio=2, dw_size=3, relu=True), seed).train()
    fused = FusedGhostModule.from_module(ref.to(DEVICE), backend="triton").train()
    ref = copy.deepcopy(ref).cpu().double()
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, 6, 4, 5, generator=gen) + 0.5).to(DEVICE).requires_grad_()
    x_ref = x.detach().cpu().double().requires_grad_()
    out, expected = fused(x), ref(x_ref)
    assert counter.calls == 1
    gt.assert_close_to_reference(out, expected.detach(), FORWARD_TOL[torch.float32], "output")
    grad_out = torch.randn(expected.shape, generator=gen)
    out.backward(grad_out.to(DEVICE))
    expected.backward(grad_out.double())
    gt.assert_close_to_reference(x.grad, x_ref.grad, BACKWARD_TOL[torch.float32], "grad x")
    for (name, b), b_ref in zip(fused.named_buffers(), ref.buffers()):
        if b.is_floating_point():
            gt.assert_close_to_reference(b, b_ref, FORWARD_TOL[torch.float32], name)


# ---------------------------------------------------------------------------------------------------------------
# The passes on their own
# ---------------------------------------------------------------------------------------------------------------

PASS_CASE = bt.TrainCase(n=2, c=5, h=6, w=5, init=3, ratio=3, out_channels=7, act="silu", x_mean=0.5)


@pytest.mark.parametrize("dtype,layout", [(torch.float32, "contiguous"), (torch.float16, "channels_last")],
                         ids=["f32-nchw", "f16-channels_last"])
def test_each_pass_against_its_definition(dtype, layout, seed):
    """Each pass on given inputs (the previous passes' outputs) against the float64 formula of its schema."""
    case = PASS_CASE.replace(layout=layout)
    a = _on_device(bt.make_inputs(case, dtype, seed))
    x, w1, w2 = a["x"], a["w_primary"].float(), a["w_cheap"].float()
    s = {k: a[k].float() for k in ("bn_weight_primary", "bn_bias_primary", "bn_weight_cheap", "bn_bias_cheap")}
    z1, m1, v1 = OPS.ghost_bn_conv1x1_stats_triton(x, w1)
    s1 = bt.stage_vectors(m1, v1, s["bn_weight_primary"], s["bn_bias_primary"], 1e-5)
    m2, v2 = OPS.ghost_bn_cheap_stats_triton(z1, *s1, w2, case.act)
    s2 = bt.stage_vectors(m2, v2, s["bn_weight_cheap"], s["bn_bias_cheap"], 1e-3)
    out = OPS.ghost_bn_forward_out_triton(z1, *s1, w2, *s2, case.oc, case.act)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)
    sums_p, sums_c = OPS.ghost_bn_backward_reduce_triton(go, z1, *s1, w2, *s2, case.oc, case.act)
    gen = torch.Generator().manual_seed(seed + 1)
    mdy = [torch.randn(n, generator=gen).to(DEVICE) for n in (3, 3, 6, 6)]
    gx, gw1, gw2 = OPS.ghost_bn_backward_triton(go, x, z1, w1, *s1, mdy[0], mdy[1], w2, *s2, mdy[2], mdy[3],
                                               case.oc, case.act)
    d = lambda t: t.detach().cpu().double()  # noqa: E731
    want = bt.pass_definitions(d(x), d(w1), d(z1), [d(t) for t in s1], d(w2), [d(t) for t in s2], d(go),
                               [d(t) for t in mdy], case.act, case.oc)
    got = dict(z1=z1, mean1=m1, var1=v1, mean2=m2, var2=v2, out=out, sums_primary=sums_p, sums_cheap=sums_c,
               grad_x=gx, grad_w_primary=gw1, grad_w_cheap=gw2)
    fmt = gt.expected_memory_format(x)
    for name in ("z1", "out", "grad_x"):
        assert got[name].dtype == dtype, name
        gt.assert_memory_format(got[name], fmt, name)
    for name, value in got.items():
        if name not in ("z1", "out", "grad_x"):
            assert value.dtype == torch.float32, name
        gt.assert_close_to_reference(value, want[name], PASS_TOL[dtype], name)
    # Deterministic: a second run gives the same bits (per-item partials reduced in a fixed order, no atomics).
    again = OPS.ghost_bn_backward_reduce_triton(go, z1, *s1, w2, *s2, case.oc, case.act)
    assert torch.equal(again[0], sums_p) and torch.equal(again[1], sums_c)


def test_plain_pytorch_path_matches_the_definitions(seed):
    """bn_train_math, the passes' body where the kernels cannot run (fake tensors while tracing; CPU tensors without
    the interpreter), against the same float64 formulas: float32 CPU tensors, channels_last."""
    from ghostkernels.triton import bn_train_math as bm

    case = PASS_CASE.replace(layout="channels_last", act="hardswish")
    a = bt.make_inputs(case, torch.float32, seed)
    x, w1, w2 = a["x"], a["w_primary"], a["w_cheap"]
    z1, m1, v1 = bm.conv1x1_stats(x, w1)
    s1 = bt.stage_vectors(m1, v1, a["bn_weight_primary"], a["bn_bias_primary"], 1e-5)
    m2, v2 = bm.cheap_stats(z1, s1, w2, case.act)
    s2 = bt.stage_vectors(m2, v2, a["bn_weight_cheap"], a["bn_bias_cheap"], 1e-3)
    out = bm.forward_out(z1, s1, w2, s2, case.oc, case.act)
    gen = torch.Generator().manual_seed(seed)
    go = torch.randn(out.shape, generator=gen)
    mdy = [torch.randn(n, generator=gen) for n in (3, 3, 6, 6)]
    sums_p, sums_c = bm.backward_reduce(go, z1, s1, w2, s2, case.act)
    gx, gw1, gw2 = bm.backward(go, x, z1, w1, s1, mdy[0], mdy[1], w2, s2, mdy[2], mdy[3], case.act)
    d = lambda t: t.detach().double()  # noqa: E731
    want = bt.pass_definitions(d(x), d(w1), d(z1), [d(t) for t in s1], d(w2), [d(t) for t in s2], d(go),
                               [d(t) for t in mdy], case.act, case.oc)
    got = dict(z1=z1, mean1=m1, var1=v1, mean2=m2, var2=v2, out=out, sums_primary=sums_p, sums_cheap=sums_c,
               grad_x=gx, grad_w_primary=gw1, grad_w_cheap=gw2)
    for name, value in got.items():
        gt.assert_close_to_reference(value, want[name], PASS_TOL[torch.float32], name)
    for name in ("z1", "out", "grad_x"):
        gt.assert_memory_format(got[name], torch.channels_last, name)


# ---------------------------------------------------------------------------------------------------------------
# As PyTorch sees the ops
# ---------------------------------------------------------------------------------------------------------------

_PASSES = ("ghost_bn_conv1x1_stats", "ghost_bn_cheap_stats", "ghost_bn_forward_out", "ghost_bn_backward_reduce",
           "ghost_bn_backward", "ghost_module_bn_train", "ghost_module_bn_train_backward")


def _strip_return_names(schema: str) -> str:
    head, _, returns = schema.partition(" -> ")
    return head + " -> " + re.sub(r"(Tensor)\s+\w+", r"\1", returns)


def test_schemas_match_the_cpp_ops():
    """Same arguments as the C++ passes and op (the return names aside), so train_bn composes either."""
    ghostkernels.load_library()
    for name in _PASSES:
        theirs = str(getattr(OPS, name).default._schema)
        twin = name.replace("_backward", "_triton_backward") if name.endswith("train_backward") else name + "_triton"
        ours = str(getattr(OPS, twin).default._schema).replace(twin, name, 1)
        assert _strip_return_names(ours) == _strip_return_names(theirs), name


_SMALL = bt.TrainCase(n=2, c=4, h=3, w=3, init=3, out_channels=5, act="relu", x_mean=0.4)


def _small_pass_arguments(seed: int):
    return bt.pass_arguments(bn_train_op.passes(), seed, DEVICE)


def test_opcheck_passes(seed):
    """Schema, fake kernel (the same function, on its plain-PyTorch path for fake tensors) and dispatch of every
    pass; the autograd tests are left out: the passes have no backward of their own (the composite's covers them)."""
    for name, args in _small_pass_arguments(seed).items():
        torch.library.opcheck(getattr(OPS, name + "_triton"), args,
                              test_utils=("test_schema", "test_faketensor"))


def test_opcheck_train_op_with_autograd(seed):
    """The composite op with its fake kernel and autograd formula (the backward op), traced by AOTAutograd."""
    a = _on_device(bt.make_inputs(_SMALL.replace(conv_bias=True), torch.float32, seed, requires_grad=True))
    args = ghostkernels.ops.layouts.GhostModuleBnTrainArgs(**a, group="")
    torch.library.opcheck(OPS.ghost_module_bn_train_triton, tuple(args),
                          test_utils=("test_schema", "test_autograd_registration", "test_aot_dispatch_dynamic"))


def test_the_passes_and_the_backward_op_have_no_autograd(seed):
    x, w1 = _small_pass_arguments(seed)["ghost_bn_conv1x1_stats"]
    z1 = OPS.ghost_bn_conv1x1_stats_triton(x, w1.clone().requires_grad_())[0]
    with pytest.raises(RuntimeError, match="ghost_bn_conv1x1_stats_triton has no backward: it is a pass"):
        z1.sum().backward()


@pytest.mark.skipif(not gt.has_cuda_device(), reason="Inductor compiling the Triton kernels needs a GPU")
def test_torch_compile_fullgraph_forward_backward_on_gpu(seed):
    case = OP_CASES[0].values[0]
    args = _on_device(bt.make_inputs(case, torch.float32, seed, requires_grad=True))
    torch._dynamo.reset()
    fn = torch.compile(lambda *t: bt.call(dict(args, **dict(zip(bt.TENSOR_INPUTS, t))), backend="triton")[0],
                       fullgraph=True)
    tensors = [args[k] for k in bt.TENSOR_INPUTS]
    out = fn(*tensors)
    gt.assert_close_to_reference(out, bt.reference(_cpu(args))[0], FORWARD_TOL[torch.float32], "compiled output")
    names = [k for k in bt.TENSOR_INPUTS if args[k] is not None]
    go = torch.randn_like(out)
    grads = torch.autograd.grad(out, [args[k] for k in names], go)
    ref = bt.reference_grads(_cpu(args), go.cpu())
    for name, g in zip(names, grads):
        gt.assert_close_to_reference(g, ref[name], BACKWARD_TOL[torch.float32], f"compiled grad {name}")


@pytest.mark.skipif(not gt.has_cuda_device(), reason="bfloat16 needs a GPU (the interpreter has no bfloat16)")
def test_bfloat16_on_gpu(seed):
    case = OP_CASES[1].values[0]
    _check_op(case, torch.bfloat16, seed)


def test_float64_and_interpreted_bfloat16_are_refused(seed):
    args = _on_device(bt.make_inputs(_SMALL, torch.float64, seed))
    with pytest.raises(TypeError, match="support float16, bfloat16 and float32, got torch.float64"):
        bt.call(args, backend="triton")
    if gtriton.interpreted():
        args = _on_device(bt.make_inputs(_SMALL, torch.bfloat16, seed))
        with pytest.raises(TypeError, match="bfloat16 cannot run under TRITON_INTERPRET=1"):
            bt.call(args, backend="triton")


def test_bad_pass_input_names_the_problem(seed):
    args = list(_small_pass_arguments(seed)["ghost_bn_cheap_stats"])
    args[1] = args[1][:2]
    with pytest.raises(ValueError, match=r"mean_primary must have shape \[3\]"):
        OPS.ghost_bn_cheap_stats_triton(*args)


# ---------------------------------------------------------------------------------------------------------------
# Compiled for sm_90 without a GPU
# ---------------------------------------------------------------------------------------------------------------


def test_kernels_compile_for_sm90_without_spills():
    """The six kernels, compiled for an H100 by compile_check (a child process without TRITON_INTERPRET, triton's
    own ptxas) for the case with the most registers (bfloat16 channels_last, k = 5, ratio 3): every one compiles
    and none spills (STACK:0)."""
    if gt.has_cuda_device():
        pytest.skip("on a GPU the kernels are compiled by the tests themselves")
    import importlib.util

    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if importlib.util.find_spec("triton.backends.nvidia") is None or not os.path.isfile(ptxas):
        pytest.skip("this triton cannot compile for an NVIDIA target here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    env["GHOSTKERNELS_DEFER_LOAD"] = "1"
    cmd = [sys.executable, "-m", "ghostkernels.triton.compile_check", "--arch", "90", "--kernels", "bn",
           "--case", "bf16-cl-k5-ratio3-28"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ok   sm_90")]
    assert len(lines) == 6, proc.stdout
    for line in lines:
        assert "STACK:0 " in line, f"spills: {line}"
