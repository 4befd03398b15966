"""ghostkernels::conv2d_act (a convolution with its BatchNorm folded in and an activation, CPU inference) and
fuse()'s conv -> BN -> act steps (ghostkernels.nn.conv_bn_act, ghostkernels.patch.stem): the op against a float64 reference on both CPU
kernels, its contract (opcheck, bad input); the fused stem: same state_dict, the op inside the network's forward in
CPU inference, the plain layers everywhere else (a direct call of conv_stem, training, autograd, hooks,
torch.compile), refusal of look-alikes whose forward differs; FusedConvBnAct likewise."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ghost_testing as gt
import variants
from ghostkernels import fuse, models
from ghostkernels.patch import GhostFuseWarning
from ghostkernels.ops.reference import ACTS, activation
from ghostkernels.nn import BatchNormAfterFusedStem, FusedConvBnAct, FusedStemConv, ReLUAfterFusedStem
from ghostkernels.patch import StemNotFusable, fuse_stem

KERNELS = ("auto", "generic")
# One rounding of the output in bfloat16 (2^-9 relative), float accumulation of at most 4 * 49 products; for longer
# sums (up to 160 * 49 products below) see conv_tol.
CONV_TOL = {
    torch.float64: gt.Tol(atol=1e-12, rtol=1e-12),
    torch.float32: gt.Tol(atol=4e-6, rtol=2e-6),
    torch.bfloat16: gt.Tol(atol=8e-3, rtol=4e-3),
}

# (n, ci, h, w, co): GhostNet's stem (3 -> 16 at 224 is in test_stem_fused_network_matches), output channel counts
# that leave a partial block of 4, images smaller than a kernel, widths that end mid-vector, 5 input channels (the
# ATen path of the AVX-512 kernel choice); wide channels (k = 1: the 1x1 GEMM, in bfloat16 the Ghost-module kernel's
# bf16 GEMM; an odd input count pads the bf16 pairs; GhostNet's 160 -> 960 ConvBnAct scaled down).
SHAPES = [(1, 3, 32, 32, 16), (2, 3, 17, 23, 5), (1, 1, 1, 1, 2), (2, 4, 9, 8, 7), (1, 2, 33, 31, 6),
          (3, 3, 6, 40, 1), (1, 5, 10, 10, 4), (2, 37, 7, 9, 30), (1, 160, 7, 7, 96)]


def conv_tol(dtype: torch.dtype, products: int) -> gt.Tol:
    """CONV_TOL, with float32's atol grown as 4 u sqrt(products) (u = 2^-24) past 4e-6: ATen's convolution (the
    generic kernel, and every kernel on CPUs without AVX-512) sums in its own blocked order; measured 7.7e-6 of the
    largest output for 160 * 49 products on an AVX2 CPU, against 2.1e-5 allowed."""
    tol = CONV_TOL[dtype]
    if dtype != torch.float32:
        return tol
    return gt.Tol(atol=max(tol.atol, 4 * 2.0 ** -24 * products ** 0.5), rtol=tol.rtol)


@pytest.mark.parametrize("dtype", list(CONV_TOL), ids=gt.dtype_name)
@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("k", (1, 3, 5, 7))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv2d_act_matches_float64_reference(shape, k, stride, dtype, seed, monkeypatch):
    gen = torch.Generator().manual_seed(seed)
    n, ci, h, w, co = shape
    x = torch.randn(n, ci, h, w, generator=gen).to(dtype)
    wt = (torch.randn(co, ci, k, k, generator=gen) / k).to(dtype)
    b = torch.randn(co, generator=gen).to(dtype)
    act = ACTS[seed % len(ACTS)]
    expected = activation(act)(F.conv2d(x.double(), wt.double(), b.double(), stride, k // 2))
    for kernel in KERNELS:
        monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", kernel)
        got = torch.ops.ghostkernels.conv2d_act(x, wt, b, stride, act)
        gt.assert_close_to_reference(got, expected, conv_tol(dtype, ci * k * k),
                                     f"conv2d_act {shape} k{k} s{stride} {act} {gt.dtype_name(dtype)} ({kernel})")


# 3x3 stride 2 with at most 4 input channels runs on the stem kernel (kernel_stem_conv_avx512.h): output rows in
# tiles of two vectors x 8 channels and a last vector x 16 channels, channel blocks of 16, split input rows kept
# between output rows. Shapes: GhostNet's stem at 224 (7 vectors per row: three pairs and a last one); an odd H and a
# width whose rows end mid-pair (Wo = 34: a pair, then a vector of 2); more than one block of channels with a partial
# one (33); rows of one partial vector; every activation in both dtypes over them.
STEM_SHAPES = [(1, 3, 224, 224, 16), (2, 3, 35, 67, 16), (3, 4, 13, 50, 33), (2, 1, 5, 3, 9)]


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=gt.dtype_name)
@pytest.mark.parametrize("shape", STEM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_stem_kernel_matches_float64_reference(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    n, ci, h, w, co = shape
    x = torch.randn(n, ci, h, w, generator=gen).to(dtype)
    wt = (torch.randn(co, ci, 3, 3, generator=gen) / 3).to(dtype)
    b = torch.randn(co, generator=gen).to(dtype)
    for act in ACTS:
        expected = activation(act)(F.conv2d(x.double(), wt.double(), b.double(), 2, 1))
        got = torch.ops.ghostkernels.conv2d_act(x, wt, b, 2, act)
        gt.assert_close_to_reference(got, expected, CONV_TOL[dtype], f"stem kernel {shape} {act} {gt.dtype_name(dtype)}")


def test_stem_kernel_is_deterministic_across_threads():
    """Each output is one thread's sum in a fixed order, however the rows are cut: 1 and 2 threads agree bitwise."""
    gen = torch.Generator().manual_seed(7)
    x, w, b = torch.randn(3, 3, 41, 38, generator=gen), torch.randn(16, 3, 3, 3, generator=gen), torch.randn(16)
    saved = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(torch.ops.ghostkernels.conv2d_act(x, w, b, 2, "relu"))
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(outs[0], outs[1])


def test_conv2d_act_reads_strided_inputs():
    x = torch.randn(2, 3, 20, 22).transpose(2, 3)
    w, b = torch.randn(8, 3, 3, 3), torch.randn(8)
    got = torch.ops.ghostkernels.conv2d_act(x, w, b, 2, "relu")
    torch.testing.assert_close(got, F.relu(F.conv2d(x, w, b, 2, 1)), atol=1e-5, rtol=1e-5)


def test_conv2d_act_opcheck():
    torch.library.opcheck(torch.ops.ghostkernels.conv2d_act.default,
                          (torch.randn(2, 3, 11, 12), torch.randn(5, 3, 3, 3), torch.randn(5), 2, "relu"),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_conv2d_act_has_no_backward():
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    y = torch.ops.ghostkernels.conv2d_act(x, torch.randn(4, 3, 3, 3), torch.randn(4), 1, "relu")
    with pytest.raises(RuntimeError, match="conv2d_act has no backward.*FusedStemConv"):
        y.sum().backward()


@pytest.mark.parametrize("args,match", [
    ((torch.randn(3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4), 1, "relu"), "x must be 4-D"),
    ((torch.randn(1, 3, 8, 8), torch.randn(4, 2, 3, 3), torch.randn(4), 1, "relu"), r"w must be \[out, 3, k, k\]"),
    ((torch.randn(1, 3, 8, 8), torch.randn(4, 3, 2, 2), torch.randn(4), 1, "relu"), "must be odd"),
    ((torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(5), 1, "relu"), r"b must be \[4\]"),
    ((torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4), 3, "relu"), "stride must be 1 or 2"),
    ((torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4), 1, "gelu"), "gelu"),
    ((torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3).double(), torch.randn(4), 1, "relu"), "dtype mismatch"),
    ((torch.randn(1, 3, 8, 8).half(), torch.randn(4, 3, 3, 3).half(), torch.randn(4).half(), 1, "relu"),
     "supported dtypes"),
    ((torch.randn(1, 3, 8, 8), torch.randn(0, 3, 3, 3), torch.randn(0), 1, "relu"), "at least one output channel"),
])
def test_conv2d_act_rejects_bad_input(args, match):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        torch.ops.ghostkernels.conv2d_act(*args)


def test_avx512_knob_refuses_a_conv_it_lacks(monkeypatch):
    if not gt.cpu_has_avx512():
        pytest.skip("this CPU has no AVX-512")
    monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", "avx512")
    with pytest.raises(RuntimeError, match="GHOSTKERNELS_CPU_KERNEL=avx512, but .*5 input channels"):
        torch.ops.ghostkernels.conv2d_act(torch.randn(1, 5, 8, 8), torch.randn(2, 5, 3, 3), torch.randn(2), 1, "relu")


# ---------------------------------------------------------------------------------------------------------------
# The stem step of fuse()
# ---------------------------------------------------------------------------------------------------------------

NETWORKS = variants.SMALL_GHOSTNETS
_network = variants.small_ghostnet


@pytest.fixture
def op_calls(monkeypatch):
    """The shapes of x of the conv2d_act calls (FusedStemConv, FusedConvBnAct)."""
    return gt.record_op_calls(monkeypatch, "conv2d_act")


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_stem_fused_network_matches(kind, op_calls):
    net = _network(kind)
    keys = {k: v.clone() for k, v in net.state_dict().items()}
    fused = fuse(copy.deepcopy(net), strict=True)
    assert isinstance(fused.conv_stem, FusedStemConv) and isinstance(fused.conv_stem, nn.Conv2d)
    assert isinstance(fused.bn1, BatchNormAfterFusedStem) and isinstance(fused.act1, ReLUAfterFusedStem)
    state = fused.state_dict()
    assert list(state) == list(keys) and all(torch.equal(state[k], keys[k]) for k in keys)
    x = torch.randn(2, 3, 224, 224)
    op_calls.clear()
    with torch.no_grad():
        got, expected = fused(x), net(x)
    # The stem, then the last stage's ConvBnAct (a FusedConvBnAct).
    last = fused.blocks[-1][0]
    assert isinstance(last, FusedConvBnAct) and list(last.state_dict()) == ["conv.weight", "bn1.weight", "bn1.bias",
                                                                             "bn1.running_mean", "bn1.running_var",
                                                                             "bn1.num_batches_tracked"]
    assert op_calls == [x.shape, torch.Size([2, last.conv.in_channels, 7, 7])]
    torch.testing.assert_close(got, expected, atol=3e-5, rtol=3e-5)


def test_stem_shares_the_parameters_and_follows_updates():
    net = _network("ours")
    fused = fuse(net, strict=True)  # in place
    assert fused.conv_stem.weight is fused.state_dict(keep_vars=True)["conv_stem.weight"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = fused(x)
        fused.bn1.running_var.mul_(4.0)  # in place: the fold cache must notice
        after = fused(x)
    reference = copy.deepcopy(fused)
    for m in reference.modules():
        if isinstance(m, FusedStemConv):
            m.backend = "eager"
    with torch.no_grad():
        torch.testing.assert_close(after, reference(x), atol=3e-5, rtol=3e-5)
    assert not torch.allclose(before, after)


def test_direct_call_of_conv_stem_is_the_convolution(op_calls):
    net = _network("ours")
    fused = fuse(copy.deepcopy(net), strict=True)
    x = torch.randn(2, 3, 32, 32)
    op_calls.clear()
    features = torch.randn(2, net.bn1.num_features, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fused.conv_stem(x), net.conv_stem(x))
        torch.testing.assert_close(fused.bn1(features), net.bn1(features))
        torch.testing.assert_close(fused.act1(features.clone()), net.act1(features.clone()))
    assert op_calls == []


@pytest.mark.parametrize("situation", ["train", "grad", "hook", "eager-backend", "autocast"])
def test_stem_runs_its_layers_where_the_op_does_not_apply(situation, op_calls):
    net = _network("ours")
    fused = fuse(copy.deepcopy(net), strict=True)
    x = torch.randn(2, 3, 64, 64)
    seen = []
    if situation == "train":
        fused.train()
        net.train()
    elif situation == "hook":
        fused.bn1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    elif situation == "eager-backend":
        fused.conv_stem.backend = "eager"
    op_calls.clear()
    if situation == "grad":
        got, expected = fused(x.requires_grad_()), net(x)
        (g_got,) = torch.autograd.grad(got.sum(), x)
        (g_exp,) = torch.autograd.grad(expected.sum(), x)
        torch.testing.assert_close(g_got, g_exp, atol=1e-4, rtol=1e-4)
    elif situation == "autocast":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            got, expected = fused(x), net(x)
        torch.testing.assert_close(got.float(), expected.float(), atol=0.1, rtol=0.1)
    else:
        with torch.no_grad():
            torch.manual_seed(1)  # the same dropout mask in training
            got = fused(x)
            torch.manual_seed(1)
            expected = net(x)
        torch.testing.assert_close(got, expected, atol=3e-5, rtol=3e-5)
    # Never the stem; the last stage's ConvBnAct is a module of its own, fused unless the whole network is affected.
    assert x.shape not in op_calls
    assert len(op_calls) == (1 if situation in ("hook", "eager-backend") else 0)
    if situation == "hook":
        assert seen == [torch.Size([2, net.bn1.num_features, 32, 32])]


def test_stem_survives_deepcopy_and_exceptions(op_calls):
    net = _network("ours")
    fused = copy.deepcopy(fuse(copy.deepcopy(net), strict=True))
    with pytest.raises(RuntimeError):
        fused(torch.randn(2, 4, 64, 64))  # 4 channels into a 3-channel stem: the forward raises
    assert fused.conv_stem._depth == 0  # the always-called hook closed the scope
    x = torch.randn(1, 3, 64, 64)
    op_calls.clear()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), atol=3e-5, rtol=3e-5)
    assert len(op_calls) == 2  # the stem and the last stage's ConvBnAct


def test_stem_compiles_with_the_plain_layers():
    net = _network("ours")
    fused = fuse(copy.deepcopy(net), strict=True)
    x = torch.randn(1, 3, 64, 64)
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(fused, fullgraph=True)(x)
        torch.testing.assert_close(got, net(x), atol=1e-4, rtol=1e-4)


class _StemUsedTwice(nn.Module):
    """conv_stem / bn1 / act1 children, but the forward adds the convolution's output back in."""

    def __init__(self):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv_stem(x)
        return self.act1(self.bn1(y)) + y


class _WideStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_stem = nn.Conv2d(6, 8, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU()

    def forward(self, x):
        return self.act1(self.bn1(self.conv_stem(x)))


def test_stem_whose_forward_differs_is_left_alone():
    net = variants.randomize_batchnorm(_StemUsedTwice(), 0).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
    with pytest.warns(GhostFuseWarning, match="(?s)left unfused.*output changed"):
        fused = fuse(net)
    assert type(fused.conv_stem) is nn.Conv2d and type(fused.bn1) is nn.BatchNorm2d
    assert not fused._forward_pre_hooks and not fused._forward_hooks
    with torch.no_grad():
        torch.testing.assert_close(fused(x), expected)


def test_stem_the_kernel_cannot_take_is_refused():
    with pytest.raises(StemNotFusable, match="6 input channels"):
        fuse_stem(_WideStem().eval(), "auto")
    with pytest.warns(GhostFuseWarning, match="6 input channels"):
        fuse(_WideStem())


def test_stem_keeps_the_training_flags():
    net = _network("ours").train()
    net.bn1.eval()  # a frozen stem BatchNorm in a training network
    fused = fuse(net)
    assert fused.training and fused.conv_stem.training and fused.act1.training and not fused.bn1.training


def test_blocks_false_leaves_the_stem():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused = fuse(_network("ours"), blocks=False)
    assert type(fused.conv_stem) is nn.Conv2d


# ---------------------------------------------------------------------------------------------------------------
# ConvBnAct modules
# ---------------------------------------------------------------------------------------------------------------


class _ActBeforeBn(nn.Module):
    """ConvBnAct's children, but the activation comes before the BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 32, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.ReLU()

    def forward(self, x):
        return self.bn1(self.act1(self.conv(x)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=gt.dtype_name)
@pytest.mark.parametrize("config", [(160, 960, 1, 1, "relu"), (24, 40, 3, 2, "hardswish"), (3, 8, 5, 1, "silu")],
                         ids=lambda c: "-".join(map(str, c)))
def test_conv_bn_act_matches_the_module(config, dtype, op_calls):
    cin, cout, k, stride, act = config
    torch.manual_seed(0)
    module = models.ConvBnAct(cin, cout, k, stride, act_layer={"relu": nn.ReLU, "hardswish": nn.Hardswish,
                                                               "silu": nn.SiLU}[act])
    module = variants.randomize_batchnorm(module, 0).eval().to(dtype)
    fused = FusedConvBnAct.from_module(module)
    assert list(fused.state_dict()) == list(module.state_dict())
    x = torch.randn(2, cin, 7, 9).to(dtype)
    op_calls.clear()
    with torch.no_grad():
        got, expected = fused(x), module(x)
    assert op_calls == [x.shape]
    tol = dict(atol=3e-5, rtol=3e-5) if dtype == torch.float32 else dict(atol=6e-2, rtol=3e-2)
    torch.testing.assert_close(got.float(), expected.float(), **tol)
    # Training: the module's own layers (batch statistics), gradients included.
    fused.train().float()
    module.train().float()
    x = x.float().requires_grad_()
    got = fused(x)
    (g,) = torch.autograd.grad(got.sum(), x)
    x2 = x.detach().clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(module(x2).sum(), x2)
    torch.testing.assert_close(g, g_ref)
    assert len(op_calls) == 1


def test_conv_bn_act_whose_forward_differs_is_left_alone():
    module = variants.randomize_batchnorm(_ActBeforeBn(), 0).eval()
    with pytest.raises(StemNotFusable, match="does not compute act1"):
        FusedConvBnAct.from_module(module)
    holder = nn.Sequential(module)
    with pytest.warns(GhostFuseWarning, match="(?s)left unfused.*does not compute act1"):
        fuse(holder)
    assert holder[0] is module
