"""ghostkernels::linear_act (act(x @ w^T + b), CPU inference) and fuse()'s head step (ghostkernels.nn.head): the op
against a float64 reference on both CPU kernels, its contract (opcheck, bad input, no backward); FusedConvHead and
FusedClassifier: same state_dict, the op in CPU inference, the plain layers everywhere else (autograd, hooks,
other backends, shapes the op does not take), look-alikes left alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ghost_testing as gt
import variants
from ghostkernels import fuse, models
from ghostkernels.nn import FusedClassifier, FusedConvHead
from ghostkernels.patch import fuse_head
from ghostkernels.ops.reference import ACTS, activation

KERNELS = ("auto", "generic")
# Float accumulation of K products scaled to O(1) outputs; bfloat16 rounds the output once (2^-9 relative).
LINEAR_TOL = {
    torch.float64: gt.Tol(atol=1e-12, rtol=1e-12),
    torch.float32: gt.Tol(atol=4e-6, rtol=4e-6),
    torch.bfloat16: gt.Tol(atol=8e-3, rtol=4e-3),
}

# (n, k, o): GhostNet's head at batch 1 and 8 (conv_head 960 -> 1280, classifier 1280 -> 1000); batches that leave
# 1, 2 or 3 images after the groups of four; row counts that leave a partial block of four; k ending mid-vector,
# k below one vector, k = 0 (the output is act(b)).
SHAPES = [(1, 960, 1280), (8, 1280, 1000), (5, 33, 9), (6, 17, 6), (7, 100, 3), (2, 5, 1), (3, 0, 5), (1, 16, 4)]


@pytest.mark.parametrize("dtype", list(LINEAR_TOL), ids=gt.dtype_name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear_act_matches_float64_reference(shape, dtype, seed, monkeypatch):
    gen = torch.Generator().manual_seed(seed)
    n, k, o = shape
    x = torch.randn(n, k, generator=gen).to(dtype)
    w = (torch.randn(o, k, generator=gen) / max(1, k) ** 0.5).to(dtype)
    b = torch.randn(o, generator=gen).to(dtype)
    for act in ACTS:
        expected = activation(act)(F.linear(x.double(), w.double(), b.double()))
        for kernel in KERNELS:
            monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", kernel)
            got = torch.ops.ghostkernels.linear_act(x, w, b, act)
            gt.assert_close_to_reference(got, expected, LINEAR_TOL[dtype],
                                         f"linear_act {shape} {act} {gt.dtype_name(dtype)} ({kernel})")


def test_linear_act_reads_strided_inputs():
    base = torch.randn(6, 80)
    w, b = torch.randn(7, 40), torch.randn(7)
    for x in (base[:, ::2], base[1::2, 20:60], torch.randn(40, 6).t()):  # column step, row step, transposed
        got = torch.ops.ghostkernels.linear_act(x, w, b, "relu")
        torch.testing.assert_close(got, F.relu(F.linear(x, w, b)), atol=1e-5, rtol=1e-5)
    got = torch.ops.ghostkernels.linear_act(base[:, :40], torch.randn(40, 7).t(), b, "identity")  # transposed w
    assert got.shape == (6, 7)


def test_linear_act_opcheck():
    torch.library.opcheck(torch.ops.ghostkernels.linear_act.default,
                          (torch.randn(3, 20), torch.randn(9, 20), torch.randn(9), "hardswish"),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_linear_act_has_no_backward():
    x = torch.randn(2, 6, requires_grad=True)
    y = torch.ops.ghostkernels.linear_act(x, torch.randn(3, 6), torch.randn(3), "identity")
    with pytest.raises(RuntimeError, match="linear_act has no backward.*FusedClassifier"):
        y.sum().backward()


@pytest.mark.parametrize("args,match", [
    ((torch.randn(2, 3, 4), torch.randn(5, 4), torch.randn(5), "relu"), "x must be 2-D"),
    ((torch.randn(2, 4), torch.randn(5, 3), torch.randn(5), "relu"), r"w must be \[out, 4\]"),
    ((torch.randn(2, 4), torch.randn(5, 4, 1), torch.randn(5), "relu"), r"w must be \[out, 4\]"),
    ((torch.randn(2, 4), torch.randn(5, 4), torch.randn(4), "relu"), r"b must be \[5\]"),
    ((torch.randn(2, 4), torch.randn(5, 4), torch.randn(5), "gelu"), "gelu"),
    ((torch.randn(2, 4), torch.randn(5, 4).double(), torch.randn(5), "relu"), "dtype mismatch"),
    ((torch.randn(2, 4).half(), torch.randn(5, 4).half(), torch.randn(5).half(), "relu"), "supported dtypes"),
])
def test_linear_act_rejects_bad_input(args, match):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        torch.ops.ghostkernels.linear_act(*args)


def test_avx512_knob_is_honoured_for_linear_act(monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", "avx512")
    x, w, b = torch.randn(2, 8), torch.randn(3, 8), torch.randn(3)
    if gt.cpu_has_avx512():
        torch.testing.assert_close(torch.ops.ghostkernels.linear_act(x, w, b, "identity"), F.linear(x, w, b))
    else:
        with pytest.raises(RuntimeError, match="GHOSTKERNELS_CPU_KERNEL=avx512, but this CPU lacks AVX-512"):
            torch.ops.ghostkernels.linear_act(x, w, b, "identity")


# ---------------------------------------------------------------------------------------------------------------
# The head step of fuse()
# ---------------------------------------------------------------------------------------------------------------

NETWORKS = variants.SMALL_GHOSTNETS


def _network(kind, seed=0):
    return variants.small_ghostnet(kind, seed, num_classes=37)


@pytest.fixture
def op_calls(monkeypatch):
    """The shapes of x of the linear_act calls (FusedConvHead, FusedClassifier)."""
    return gt.record_op_calls(monkeypatch, "linear_act")


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_head_fused_network_matches(kind, op_calls):
    net = _network(kind)
    keys = {k: v.clone() for k, v in net.state_dict().items()}
    fused = fuse(copy.deepcopy(net), strict=True)
    assert type(fused.conv_head) is FusedConvHead and isinstance(fused.conv_head, nn.Conv2d)
    assert type(fused.classifier) is FusedClassifier and isinstance(fused.classifier, nn.Linear)
    state = fused.state_dict()
    assert list(state) == list(keys) and all(torch.equal(state[k], keys[k]) for k in keys)
    x = torch.randn(3, 3, 96, 96)
    op_calls.clear()
    with torch.no_grad():
        got, expected = fused(x), net(x)
    head_in = fused.conv_head.in_channels
    assert op_calls == [(3, head_in), (3, fused.classifier.in_features)]
    torch.testing.assert_close(got, expected, atol=3e-5, rtol=3e-5)


def test_head_shares_the_parameters_and_follows_updates():
    fused = fuse(_network("ours"), strict=True)
    state = fused.state_dict(keep_vars=True)
    assert fused.conv_head.weight is state["conv_head.weight"] and fused.classifier.bias is state["classifier.bias"]
    x = torch.randn(2, 1280)
    with torch.no_grad():
        before = fused.classifier(x)
        fused.classifier.weight.mul_(2.0)
        after = fused.classifier(x)
    torch.testing.assert_close(after, F.linear(x, fused.classifier.weight, fused.classifier.bias))
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("situation", ["grad", "hook", "eager-backend", "autocast", "spatial", "3-d", "float64"])
def test_head_runs_its_layers_where_the_op_does_not_apply(situation, op_calls):
    net = _network("ours")
    fused = fuse(copy.deepcopy(net), strict=True)
    conv_in = torch.randn(2, fused.conv_head.in_channels, 1, 1)
    lin_in = torch.randn(2, fused.classifier.in_features)
    seen = []
    if situation == "hook":
        fused.conv_head.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        fused.classifier.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    elif situation == "eager-backend":
        fused.conv_head.backend = fused.classifier.backend = "eager"
    elif situation == "spatial":
        conv_in = torch.randn(2, fused.conv_head.in_channels, 3, 2)
    elif situation == "3-d":
        lin_in = torch.randn(2, 4, fused.classifier.in_features)
    elif situation == "float64":
        fused.double()
        net.double()
        conv_in, lin_in = conv_in.double(), lin_in.double()
    # float64 runs the op (on ATen's addmm); "spatial" and "3-d" take the plain path for one of the two only.
    ops_expected = {"float64": 2, "spatial": 1, "3-d": 1}.get(situation, 0)
    op_calls.clear()
    if situation == "grad":
        conv_in.requires_grad_(True)
        got = fused.conv_head(conv_in)
        got.sum().backward()
        assert conv_in.grad is not None and fused.conv_head.weight.grad is not None
        got_lin = fused.classifier(lin_in)
        assert got_lin.requires_grad
    elif situation == "autocast":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            got, got_lin = fused.conv_head(conv_in), fused.classifier(lin_in)
        assert got.dtype == got_lin.dtype == torch.bfloat16
    else:
        with torch.no_grad():
            got, got_lin = fused.conv_head(conv_in), fused.classifier(lin_in)
    assert len(op_calls) == ops_expected
    if situation != "autocast":
        with torch.no_grad():
            torch.testing.assert_close(got.detach(), net.conv_head(conv_in.detach()))
            torch.testing.assert_close(got_lin.detach(), net.classifier(lin_in))
    if situation == "hook":
        assert len(seen) == 2


def test_head_look_alikes_are_left_alone():
    class Net(nn.Module):
        def __init__(self, conv_head, classifier):
            super().__init__()
            self.conv_head, self.classifier = conv_head, classifier

    class MyLinear(nn.Linear):
        pass

    # Each layer is judged on its own: a plain one beside a look-alike is still swapped.
    cases = [
        (nn.Conv2d(8, 16, 3, padding=1), nn.Linear(16, 4), ["classifier"]),        # a 3x3 conv_head
        (nn.Conv2d(8, 16, 1, bias=False), nn.Linear(16, 4, bias=False), []),       # no biases
        (nn.Conv2d(8, 16, 1, groups=2), MyLinear(16, 4), []),                      # grouped; a subclass
        (nn.Conv2d(8, 16, 1, stride=2), nn.Identity(), []),                        # strided; num_classes=0
        (nn.Conv2d(8, 16, 1), nn.Identity(), ["conv_head"]),
    ]
    for conv_head, classifier, swapped in cases:
        net = Net(conv_head, classifier)
        assert fuse_head(net, "auto") == swapped
        assert (net.conv_head is conv_head) == ("conv_head" not in swapped)
        assert (net.classifier is classifier) == ("classifier" not in swapped)
    hooked = Net(nn.Conv2d(8, 16, 1), nn.Linear(16, 4))
    hooked.classifier.register_forward_hook(lambda m, i, o: None)
    assert fuse_head(hooked, "auto") == ["conv_head"]
    net = Net(nn.Conv2d(8, 16, 1), nn.Linear(16, 4))
    assert fuse_head(net, "auto") == ["conv_head", "classifier"]
    assert fuse_head(net, "cpu") == ["conv_head", "classifier"]  # already fused: the backend is updated
    assert net.conv_head.backend == net.classifier.backend == "cpu"


def test_fused_head_deepcopies_and_pickles_its_state():
    fused = fuse(_network("ours"), strict=True)
    clone = copy.deepcopy(fused)
    assert type(clone.classifier) is FusedClassifier and clone.classifier.weight is not fused.classifier.weight
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), fused(x))
    plain = models.ghostnet_050(num_classes=37)
    plain.load_state_dict(fused.state_dict())  # the keys a plain network expects
