"""ghostkernels::ghost_module_bn_train (the Ghost module with batch-statistics BatchNorm) and its passes: forward,
statistics and gradients against the float64 layers, in float64, float32 and bfloat16, on both CPU kernels
(GHOSTKERNELS_CPU_KERNEL=generic and the AVX-512 ones), with large means, and as PyTorch sees the ops (opcheck,
gradcheck, bad input)."""

from __future__ import annotations

import pytest
import torch

import bn_train_testing as bt
import ghost_testing as gt
import ghostkernels
from ghostkernels.ops import train_bn

KERNELS = ["generic"] + (["avx512"] if gt.cpu_has_avx512() else [])
DTYPES = (torch.float64, torch.float32, torch.bfloat16)
# (dtype, CPU kernel) pairs of the per-case tests: the AVX-512 kernels compute in float (float32 and bfloat16 inputs)
# and float64 always runs the generic one, so float64 x avx512 would repeat float64 x generic; the generic kernel
# is one template for every accumulation type, so float32 covers its bfloat16 path's arithmetic too.
DTYPE_KERNELS = [(torch.float64, "generic"), (torch.float32, "generic")] + (
    [(torch.float32, "avx512"), (torch.bfloat16, "avx512")] if gt.cpu_has_avx512() else [(torch.bfloat16, "generic")])


@pytest.fixture(params=KERNELS)
def cpu_kernel(request, monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", request.param)
    return request.param


def _use_kernel(monkeypatch, kernel: str) -> None:
    monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", kernel)


def _check_forward(case: bt.TrainCase, dtype: torch.dtype, seed: int) -> None:
    args = bt.make_inputs(case, dtype, seed)
    out, mean1, var1, mean2, var2, count, saved_z1 = bt.call(args)
    expected = bt.reference(args)
    tol = bt.FORWARD_TOL[dtype]
    assert out.dtype == dtype and out.shape == expected[0].shape
    gt.assert_close_to_reference(out, expected[0], tol, "output")
    gt.assert_memory_format(out, gt.expected_memory_format(args["x"]), "output")
    for name, got, want in zip(("mean1", "var1", "mean2", "var2"), (mean1, var1, mean2, var2), expected[1:]):
        assert got.dtype == train_bn.stats_dtype(dtype), name
        gt.assert_close_to_reference(got, want, tol, name)
    assert float(count) == case.n * case.h * case.w
    assert saved_z1.dim() == (4 if train_bn.keep_z1(case.c) else 1)


@pytest.mark.parametrize("dtype,kernel", DTYPE_KERNELS, ids=lambda v: gt.dtype_name(v) if isinstance(v, torch.dtype)
                         else v)
@pytest.mark.parametrize("case", bt.op_cases(), ids=lambda c: c.id)
def test_forward_matches_float64_layers(case, dtype, kernel, seed, monkeypatch):
    _use_kernel(monkeypatch, kernel)
    _check_forward(case, dtype, seed)


def _check_backward(case: bt.TrainCase, dtype: torch.dtype, seed: int) -> None:
    args = bt.make_inputs(case, dtype, seed, requires_grad=True)
    out = bt.call(args)[0]
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    names = [k for k in bt.TENSOR_INPUTS if args[k] is not None]
    grads = torch.autograd.grad(out, [args[k] for k in names], grad_out)
    expected = bt.reference_grads(args, grad_out)
    for name, g in zip(names, grads):
        t = args[name]
        assert g.dtype == t.dtype and g.shape == t.shape, name
        gt.assert_close_to_reference(g, expected[name], bt.BACKWARD_TOL[dtype], f"grad {name}")
    gt.assert_memory_format(grads[0], gt.expected_memory_format(args["x"]), "grad x")


# bfloat16 gradients on the smooth activations only: z1 rounded to bfloat16 moves pre-activations by ~2^-9 of their
# size, and a relu mask flipped by that is an O(1) difference at that element, not an arithmetic error.
BACKWARD_PARAMS = [pytest.param(c, d, k, id=f"{c.id}-{gt.dtype_name(d)}-{k}") for c in bt.op_cases()
                   for d, k in DTYPE_KERNELS if d != torch.bfloat16 or c.act in ("identity", "silu")]


@pytest.mark.parametrize("case,dtype,kernel", BACKWARD_PARAMS)
def test_backward_matches_float64_layers(case, dtype, kernel, seed, monkeypatch):
    _use_kernel(monkeypatch, kernel)
    _check_backward(case, dtype, seed)


# x with mean 1000 (300) and standard deviation 1: z1's mean is ~1000 x (the sum of a row of w_primary), its
# deviation ~3. Statistics from plain float32 sums of z and z^2 lose the variance here (1e6 - 1e6 in a 24-bit
# mantissa: errors of the order of the variance itself); the passes' shifted two-pass moments do not, so the
# statistics are held to the dtype's plain tolerance. The outputs and gradients are not: any computation in the
# dtype, the float64 reference's included, rounds z1 at ~3000 and centres it, and sums dz1 * x over x of ~1000 for
# grad w_primary (sum(dz1) = 0), so their errors grow with kappa = max |mean(z)| / std(z).
LARGE_MEAN = [bt.TrainCase(n=4, c=8, h=6, w=6, init=6, x_mean=1000.0, label="large-mean"),
              bt.TrainCase(n=2, c=40, h=9, w=9, init=8, x_mean=300.0, act="identity", label="large-mean")]
STATS_RTOL = {torch.float64: 1e-10, torch.float32: 2e-5}


@pytest.mark.parametrize("case", LARGE_MEAN, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=gt.dtype_name)
def test_large_mean_inputs(case, dtype, cpu_kernel, seed):
    args = bt.make_inputs(case, dtype, seed, requires_grad=True)
    out, mean1, var1, mean2, var2, _, _ = bt.call(args)
    expected = bt.reference(args)
    with torch.no_grad():
        z1 = torch.nn.functional.conv2d(args["x"].double(), args["w_primary"].double())
    kappa = float((z1.mean((0, 2, 3)).abs() / z1.std((0, 2, 3))).max())
    assert kappa > 50  # the case is what it says
    # BN1's statistics to the dtype's precision: the mean within a few roundings of z1 itself (eps * |mean|, i.e.
    # eps * kappa standard deviations, per rounding: z1 is a dot product of C terms in the op and in the reference,
    # whose own conv rounds as well; 8 of them), the variance relative to itself. (BN2's come from x1, which carries
    # the kappa-sized error of the normalization.)
    std1 = expected[2].sqrt()
    mean_err = float(((mean1.double() - expected[1]).abs() / std1).max())
    assert mean_err <= 8 * torch.finfo(dtype).eps * kappa, f"mean1 off by {mean_err:.3g} standard deviations"
    # The variance: to the dtype's plain precision against that of z1 as the op stores it (the values its BN
    # normalizes, which is what eager's BN does with its own conv output), and within the effect of z1's rounding
    # (eps * kappa of the standard deviation per value) against the exact one.
    z1_stored = torch.ops.ghostkernels.ghost_bn_conv1x1_stats(args["x"].detach(),
                                                               args["w_primary"].detach().to(mean1.dtype))[0]
    torch.testing.assert_close(var1.double(), z1_stored.double().var((0, 2, 3), unbiased=False), atol=0.0,
                               rtol=STATS_RTOL[dtype], msg="var1 of z1 as stored")
    torch.testing.assert_close(var1.double(), expected[2], atol=0.0, rtol=4 * torch.finfo(dtype).eps * kappa,
                               msg="var1")
    scaled = lambda t: gt.Tol(t.atol * kappa, t.rtol * kappa)  # noqa: E731
    for name, got, want in (("mean2", mean2, expected[3]), ("var2", var2, expected[4])):
        gt.assert_close_to_reference(got, want, scaled(bt.FORWARD_TOL[dtype]), name)
    gt.assert_close_to_reference(out, expected[0], scaled(bt.FORWARD_TOL[dtype]), "output")
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    names = [k for k in bt.TENSOR_INPUTS if args[k] is not None]
    grads = torch.autograd.grad(out, [args[k] for k in names], grad_out)
    ref = bt.reference_grads(args, grad_out)
    for name, g in zip(names, grads):
        gt.assert_close_to_reference(g, ref[name], scaled(bt.BACKWARD_TOL[dtype]), f"grad {name}")


def test_gradcheck_float64(seed):
    case = bt.TrainCase(n=2, c=3, h=3, w=4, init=2, ratio=3, out_channels=5, act="silu", conv_bias=True)
    args = bt.make_inputs(case, torch.float64, seed, requires_grad=True)
    names = [k for k in bt.TENSOR_INPUTS if args[k] is not None]

    def f(*tensors):
        a = dict(args, **dict(zip(names, tensors)))
        return bt.call(a)[0]

    assert torch.autograd.gradcheck(f, [args[k] for k in names], eps=1e-6, atol=1e-7, rtol=1e-5)


def test_conv_biases_move_the_means_and_get_zero_gradients(seed):
    case = bt.TrainCase(n=2, c=6, h=4, w=5, init=4, conv_bias=True)
    args = bt.make_inputs(case, torch.float32, seed, requires_grad=True)
    out, mean1, _, mean2, _, _, _ = bt.call(args)
    no_bias = bt.call(dict(args, b_primary=None, b_cheap=None))
    torch.testing.assert_close(out, no_bias[0])  # the biases cancel in the normalization
    torch.testing.assert_close(mean1 - no_bias[1], args["b_primary"].detach())
    torch.testing.assert_close(mean2 - no_bias[3], args["b_cheap"].detach())
    gb1, gb2 = torch.autograd.grad(out, (args["b_primary"], args["b_cheap"]), torch.randn_like(out))
    assert torch.count_nonzero(gb1) == 0 and torch.count_nonzero(gb2) == 0


def test_one_value_per_channel_raises_like_batchnorm():
    args = bt.make_inputs(bt.TrainCase(n=1, c=4, h=1, w=1, init=3), torch.float32, 0)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bt.call(args)


def test_statistics_outputs_are_not_differentiable(seed):
    args = bt.make_inputs(bt.TrainCase(n=2, c=4, h=3, w=3, init=3), torch.float32, seed, requires_grad=True)
    out, *stats = bt.call(args)
    assert out.requires_grad and not any(t.requires_grad for t in stats)


def test_saved_tensors_are_x_and_only_z1_where_kept(seed):
    """What autograd keeps per call: x, the layers' own tensors and per-channel statistics; z1 (init channels) only
    for wide inputs, never anything of the output's size."""
    for c, kept in ((8, False), (train_bn.KEEP_Z1_MIN_CHANNELS, True)):
        case = bt.TrainCase(n=2, c=c, h=6, w=6, init=5)
        args = bt.make_inputs(case, torch.float32, seed, requires_grad=True)
        big = []

        def pack(t):
            if t.dim() == 4 and t.shape[0] == 2 and t.shape[2:] == (6, 6):  # an activation, not a weight
                big.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            bt.call(args)
        expected = [(2, c, 6, 6)] + ([(2, 5, 6, 6)] if kept else [])
        assert sorted(big) == sorted(expected), (c, big)


# ---------------------------------------------------------------------------------------------------------------
# The passes on their own
# ---------------------------------------------------------------------------------------------------------------


def test_each_pass_against_its_definition(cpu_kernel, seed):
    """Every pass against the formula of its schema in float64 (csrc/ghost_module.cpp)."""
    case = bt.TrainCase(n=2, c=5, h=6, w=5, init=3, ratio=3, out_channels=7, act="hardswish")
    a = bt.float64_copy(bt.make_inputs(case, torch.float64, seed))
    ops = torch.ops.ghostkernels
    x, w1, w2 = a["x"], a["w_primary"], a["w_cheap"]
    z1, m1, v1 = ops.ghost_bn_conv1x1_stats(x, w1)
    s1 = bt.stage_vectors(m1, v1, a["bn_weight_primary"], a["bn_bias_primary"], 1e-5)
    m2, v2 = ops.ghost_bn_cheap_stats(z1, *s1, w2, case.act)
    s2 = bt.stage_vectors(m2, v2, a["bn_weight_cheap"], a["bn_bias_cheap"], 1e-3)
    out = ops.ghost_bn_forward_out(z1, *s1, w2, *s2, case.oc, case.act)
    go = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    sums_p, sums_c = ops.ghost_bn_backward_reduce(go, z1, *s1, w2, *s2, case.oc, case.act)
    mdy = [torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
           for n, s in ((3, 1), (3, 2), (6, 3), (6, 4))]
    gx, gw1, gw2 = ops.ghost_bn_backward(go, x, z1, w1, *s1, mdy[0], mdy[1], w2, *s2, mdy[2], mdy[3], case.oc,
                                         case.act)
    want = bt.pass_definitions(x, w1, z1, s1, w2, s2, go, mdy, case.act, case.oc)
    got = dict(z1=z1, mean1=m1, var1=v1, mean2=m2, var2=v2, out=out, sums_primary=sums_p, sums_cheap=sums_c,
               grad_x=gx, grad_w_primary=gw1, grad_w_cheap=gw2)
    for name, value in got.items():
        torch.testing.assert_close(value, want[name], msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------------------------
# As PyTorch sees the ops
# ---------------------------------------------------------------------------------------------------------------


def _pass_arguments(seed: int):
    return bt.pass_arguments(train_bn.native_passes(), seed)


@pytest.mark.parametrize("op", ["ghost_bn_conv1x1_stats", "ghost_bn_cheap_stats", "ghost_bn_forward_out",
                                "ghost_bn_backward_reduce", "ghost_bn_backward"])
def test_opcheck_passes(op, seed):
    torch.library.opcheck(getattr(torch.ops.ghostkernels, op), _pass_arguments(seed)[op])


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_train_op(requires_grad, seed):
    case = bt.TrainCase(n=2, c=4, h=4, w=5, init=3, ratio=3, out_channels=7, conv_bias=True)
    a = bt.make_inputs(case, torch.float32, seed, requires_grad=requires_grad)
    args = ghostkernels.ops.layouts.GhostModuleBnTrainArgs(**a, group="")
    torch.library.opcheck(torch.ops.ghostkernels.ghost_module_bn_train, tuple(args))


def test_opcheck_train_backward_op(seed):
    case = bt.TrainCase(n=2, c=40, h=4, w=5, init=3, out_channels=5, affine=False)
    a = bt.make_inputs(case, torch.float32, seed)
    fwd = torch.ops.ghostkernels.ghost_module_bn_train(*ghostkernels.ops.layouts.GhostModuleBnTrainArgs(**a, group=""))
    args = ghostkernels.ops.layouts.GhostModuleBnTrainBackwardArgs(
        grad_out=torch.randn_like(fwd[0]), **{k: v for k, v in a.items()}, mean_primary=fwd[1], var_primary=fwd[2],
        mean_cheap=fwd[3], var_cheap=fwd[4], count=fwd[5], saved_z1=fwd[6], group="")
    torch.library.opcheck(torch.ops.ghostkernels.ghost_module_bn_train_backward, tuple(args))


@pytest.mark.parametrize("op,index,bad,match", [
    ("ghost_bn_conv1x1_stats", 1, lambda t: t.double(), "w_primary must be .*statistics' dtype"),
    ("ghost_bn_cheap_stats", 1, lambda t: t[:2], r"mean_primary must have shape \[3\]"),
    ("ghost_bn_cheap_stats", 5, lambda t: t[:, :, :2], "w_cheap must be a depthwise weight"),
    ("ghost_bn_forward_out", 10, lambda t: 9, "out_channels=9 is outside"),
    ("ghost_bn_backward_reduce", 0, lambda t: t[:, :4], r"grad_out must be \[2, 5, 4, 5\]"),
    ("ghost_bn_backward", 2, lambda t: t.double(), "dtype mismatch: x is .* but z1 is"),
])
def test_bad_input_names_the_problem(op, index, bad, match, seed):
    args = list(_pass_arguments(seed)[op])
    args[index] = bad(args[index])
    fn = getattr(torch.ops.ghostkernels, op)
    with pytest.raises((ValueError, TypeError), match=match):
        fn(*args)
    with pytest.raises((ValueError, TypeError), match=match):  # the fake kernel's checks say the same
        with torch._subclasses.FakeTensorMode() as mode:
            fn(*(mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in args))


def test_the_passes_have_no_autograd(seed):
    x, w1 = _pass_arguments(seed)["ghost_bn_conv1x1_stats"]
    z1 = torch.ops.ghostkernels.ghost_bn_conv1x1_stats(x, w1.requires_grad_())[0]
    with pytest.raises(RuntimeError, match="pass of ghostkernels::ghost_module_bn_train"):
        z1.sum().backward()


# ---------------------------------------------------------------------------------------------------------------
# ghost_bn_train_local: the composition in one C++ call (no process group, CPU)
# ---------------------------------------------------------------------------------------------------------------


def _local_and_composed(case: bt.TrainCase, dtype: torch.dtype, seed: int):
    """ghost_module_bn_train's forward and backward by the local op pair and by train_bn's Python composition of the
    same passes, on the same inputs."""
    a = bt.make_inputs(case, dtype, seed)
    args = tuple(ghostkernels.ops.layouts.GhostModuleBnTrainArgs(**a, group=""))
    passes = train_bn.native_passes()
    fwd_local, fwd_composed = train_bn.native_forward(*args), train_bn.forward(passes, *args)
    grad_out = torch.randn_like(fwd_local[0])
    bwd = [(grad_out, *args[:-3], *fwd[1:], *args[-3:]) for fwd in (fwd_local, fwd_composed)]
    return (fwd_local, train_bn.native_backward(*bwd[0])), (fwd_composed, train_bn.backward(passes, *bwd[1]))


@pytest.mark.parametrize("case,dtype", [
    (bt.TrainCase(n=2, c=40, h=6, w=5, init=4, ratio=3, out_channels=9, conv_bias=True), torch.float32),
    (bt.TrainCase(n=1, c=8, h=7, w=7, init=4, out_channels=7, act="silu", affine=False), torch.bfloat16),
], ids=["keep_z1-bias-f32", "recompute-affine_free-bf16"])
def test_local_op_is_the_composition(case, dtype, seed):
    """The C++ composition computes the Python one's formulas: the forward bitwise equal (its only per-channel
    arithmetic, 1 / sqrt(var + eps), is correctly rounded either way), the backward to rounding (its per-channel
    loops may fuse a multiply and an add where ATen rounds twice)."""
    local, composed = _local_and_composed(case, dtype, seed)
    # Backward, relative to each output's largest value: float32 a few units in the last place; bfloat16 one unit of
    # its 8-bit mantissa (a float difference of an ulp may round a bfloat16 value the other way).
    tol = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7}[dtype]
    for direction, outs_l, outs_c in (("forward", local[0], composed[0]), ("backward", local[1], composed[1])):
        assert len(outs_l) == len(outs_c)
        for i, (l, c) in enumerate(zip(outs_l, outs_c)):
            assert l.dtype == c.dtype and l.shape == c.shape and l.stride() == c.stride(), (direction, i)
            if direction == "forward":
                assert torch.equal(l, c), (direction, i)
            else:
                scale = max(1.0, float(c.abs().max())) if c.numel() else 1.0
                torch.testing.assert_close(l.double(), c.double(), atol=tol * scale, rtol=tol,
                                           msg=lambda m: f"{direction} output {i}: {m}")


def test_opcheck_local_ops(seed):
    case = bt.TrainCase(n=2, c=4, h=4, w=5, init=3, ratio=3, out_channels=7, conv_bias=True)
    a = bt.make_inputs(case, torch.float32, seed)
    args = tuple(ghostkernels.ops.layouts.GhostModuleBnTrainArgs(**a, group=""))[:-1]
    ops = torch.ops.ghostkernels
    for keep in (False, True):
        torch.library.opcheck(ops.ghost_bn_train_local, args + (keep,))
    fwd = ops.ghost_bn_train_local(*args, False)
    torch.library.opcheck(ops.ghost_bn_train_local_backward,
                          (torch.randn_like(fwd[0]), *args[:-2], *fwd[1:], *args[-2:]))


# ghost_bn_update_running_stats against nn.BatchNorm2d's own update. Relative to the values' size: float32 and
# float64 buffers within a few float32 roundings (the op computes in double and rounds once, BatchNorm2d rounds each
# product in float32); bfloat16 buffers within one bfloat16 rounding.
UPDATE_TOL = {torch.float64: 1e-6, torch.float32: 1e-6, torch.bfloat16: 2 ** -8}


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("buffer_dtype", list(UPDATE_TOL), ids=gt.dtype_name)
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_update_running_stats_is_batchnorms(buffer_dtype, momentum, strided, seed):
    """Three updates in a row, each from a real batch's statistics, against nn.BatchNorm2d fed the same batches; a
    strided buffer runs the op's ATen path instead of its CPU loop."""
    gen = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm2d(6, momentum=momentum).to(buffer_dtype).train()
    bn.running_mean.copy_(torch.randn(6, generator=gen))
    bn.running_var.copy_(torch.rand(6, generator=gen) + 0.5)
    store = torch.zeros(6, 2, dtype=buffer_dtype)
    rm, rv = (store[:, 0].clone(), store[:, 1].clone()) if not strided else (store[:, 0], store[:, 1])
    rm.copy_(bn.running_mean), rv.copy_(bn.running_var)
    assert rm.is_contiguous() != strided
    tracked = torch.zeros((), dtype=torch.long)
    for _ in range(3):
        x = (torch.randn(3, 6, 4, 5, generator=gen) * 2 + 1).to(buffer_dtype)
        xf = x.float()
        mean, var = xf.mean((0, 2, 3)), xf.var((0, 2, 3), unbiased=False)
        count = torch.tensor(float(3 * 4 * 5))
        torch.ops.ghostkernels.ghost_bn_update_running_stats(rm, rv, tracked, mean, var, count, momentum)
        bn(x)
        tol = UPDATE_TOL[buffer_dtype]
        for got, want in ((rm, bn.running_mean), (rv, bn.running_var)):
            assert got.dtype == buffer_dtype
            torch.testing.assert_close(got.double(), want.double(), atol=tol * max(1.0, float(want.abs().max())),
                                       rtol=tol)
        assert int(tracked) == int(bn.num_batches_tracked)


def test_update_running_stats_bad_input():
    rm, rv, tracked = torch.zeros(4), torch.ones(4), torch.zeros((), dtype=torch.long)
    stats = (torch.zeros(4), torch.ones(4), torch.tensor(8.0))
    update = torch.ops.ghostkernels.ghost_bn_update_running_stats
    with pytest.raises(ValueError, match="same number of channels"):
        update(rm, rv, tracked, torch.zeros(5), stats[1], stats[2], 0.1)
    with pytest.raises(ValueError, match="num_batches_tracked must be one int64"):
        update(rm, rv, torch.zeros(()), *stats, 0.1)
    with pytest.raises(TypeError, match="floating point"):
        update(rm, rv, tracked, torch.zeros(4, dtype=torch.long), stats[1], stats[2], 0.1)
    assert int(tracked) == 0 and torch.equal(rm, torch.zeros(4))  # nothing updated by a call that raised


def test_opcheck_update_running_stats():
    args = (torch.randn(5), torch.rand(5) + 1, torch.zeros((), dtype=torch.long), torch.randn(5), torch.rand(5),
            torch.tensor(12.0), 0.1)
    torch.library.opcheck(torch.ops.ghostkernels.ghost_bn_update_running_stats, args)


@pytest.mark.parametrize("c", [train_bn.KEEP_Z1_MIN_CHANNELS - 1, train_bn.KEEP_Z1_MIN_CHANNELS])
def test_autograd_kernel_keeps_z1_where_train_bn_says(c, seed):
    """On the CPU the C++ autograd kernel (csrc/bn_train_autograd.cpp) calls ghost_bn_train_local itself and decides
    keep_z1 there; the fake kernel's shapes come from train_bn.keep_z1: the two thresholds must agree."""
    args = bt.make_inputs(bt.TrainCase(n=2, c=c, h=3, w=4, init=3), torch.float32, seed, requires_grad=True)
    saved_z1 = bt.call(args)[-1]
    assert saved_z1.dim() == (4 if train_bn.keep_z1(c) else 1)
    with torch._subclasses.FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        assert bt.call(fake)[-1].shape == saved_z1.shape
