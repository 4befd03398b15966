"""Cases, inputs and the float64 reference of the train-mode BatchNorm op (ghostkernels::ghost_module_bn_train).

The reference is ghostkernels.ops.reference.ghost_module_bn_train_reference (conv, F.batch_norm with batch
statistics, activation, depthwise conv, F.batch_norm, activation, cat, slice) run in float64 on float64 copies of the
inputs, so that a comparison measures the op's own error. Tolerances are those of ghost_testing (relative to the
largest magnitude of the expected tensor), widened where the BN makes errors larger: the normalization divides by
the batch's standard deviation, and a gradient through it is a difference of terms of the size of the uncentred
one.
"""

from __future__ import annotations

import dataclasses
import math

import torch

import ghost_testing as gt
from ghostkernels.ops.reference import ghost_module_bn_train_reference

# Field names of the op's tensor inputs, in schema order (those that are None are skipped by the gradient checks).
TENSOR_INPUTS = ("x", "w_primary", "b_primary", "bn_weight_primary", "bn_bias_primary", "w_cheap", "b_cheap",
                 "bn_weight_cheap", "bn_bias_cheap")


@dataclasses.dataclass(frozen=True)
class TrainCase(gt.GhostCase):
    """A ghost_testing case (shape, slice, activation, layout) plus the BatchNorms' own axes."""

    conv_bias: bool = False  # conv biases before the BNs (they only move the means)
    affine: bool = True      # BN weight and bias (False: affine-free BN, both None)
    x_mean: float = 0.0      # added to x: with w_primary's positive mean this makes |mean(z1)| large

    @property
    def id(self) -> str:
        extra = "".join(f"-{t}" for t, on in (("bias", self.conv_bias), ("noaffine", not self.affine),
                                                (f"mean{self.x_mean:g}", self.x_mean != 0)) if on)
        return super().id + extra


_BASE = TrainCase(n=3, c=6, h=5, w=7, init=5)


def op_cases() -> list[TrainCase]:
    """Every axis of the op, each varied on its own around a small base case."""
    b = _BASE
    cases = [b.replace(label="base"),
             b.replace(out_channels=7, label="slice-in-x2"), b.replace(out_channels=3, label="slice-in-x1"),
             b.replace(init=4, ratio=3, out_channels=10, label="ratio3"),
             b.replace(k=5, label="k5"), b.replace(k=1, label="k1"), b.replace(h=2, w=3, k=7, label="k7-small"),
             b.replace(n=1, h=1, w=9, label="h1"), b.replace(c=40, init=12, h=4, w=4, label="keeps-z1"),
             b.replace(conv_bias=True, label="bias"), b.replace(affine=False, label="noaffine"),
             b.replace(layout="channels_last", label="layout"), b.replace(layout="sliced", label="layout"),
             b.replace(n=2, h=17, w=5, k=5, init=3, label="tall"), b.replace(n=5, h=3, w=3, label="small-images")]
    cases += [b.replace(act=a, ratio=3, init=4, out_channels=11, label="act") for a in gt.ACTS]
    return cases


def make_inputs(case: TrainCase, dtype: torch.dtype, seed: int, requires_grad: bool = False) -> dict:
    """The op's arguments (a dict by schema name) drawn on the CPU from a seeded generator at ``dtype``. BN weights
    are kept away from zero (1 +- 0.3) but may be negative; z1's scale is about 3 as in ghost_testing."""
    gen = torch.Generator().manual_seed(seed)
    m = case.ratio - 1

    def draw(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=gen) * scale + shift

    x = gt._make_x(case, gen, dtype, "cpu")
    if case.x_mean:
        x = (x + case.x_mean).to(dtype)
    args = dict(
        x=x,
        w_primary=draw(case.init, case.c, 1, 1, scale=3.0 / math.sqrt(case.c)),
        b_primary=draw(case.init, scale=0.5) if case.conv_bias else None,
        bn_weight_primary=draw(case.init, scale=0.3, shift=1.0) if case.affine else None,
        bn_bias_primary=draw(case.init, scale=0.5) if case.affine else None,
        eps_primary=1e-5,
        w_cheap=draw(case.init * m, 1, case.k, case.k, scale=1.2 / case.k),
        b_cheap=draw(case.init * m, scale=0.5) if case.conv_bias else None,
        bn_weight_cheap=draw(case.init * m, scale=0.3, shift=1.0) if case.affine else None,
        bn_bias_cheap=draw(case.init * m, scale=0.5) if case.affine else None,
        eps_cheap=1e-3,
        out_channels=case.oc,
        act=case.act,
    )
    for name in TENSOR_INPUTS[1:]:
        if args[name] is not None:
            args[name] = args[name].to(dtype)
    if requires_grad:
        for name in TENSOR_INPUTS:
            if args[name] is not None:
                args[name] = args[name].detach().requires_grad_()
    return args


def float64_copy(args: dict, requires_grad: bool = False) -> dict:
    out = dict(args)
    for name in TENSOR_INPUTS:
        if args[name] is not None:
            out[name] = args[name].detach().double().requires_grad_(requires_grad)
    return out


def reference(args: dict):
    """(out, mean1, var1, mean2, var2) of the float64 reference on float64 copies of ``args``."""
    a = float64_copy(args)
    return ghost_module_bn_train_reference(*(a[k] for k in TENSOR_INPUTS[:5]), a["eps_primary"],
                                           *(a[k] for k in TENSOR_INPUTS[5:]), a["eps_cheap"], a["out_channels"],
                                           a["act"])


def reference_grads(args: dict, grad_out: torch.Tensor) -> dict:
    """Float64 gradients of every tensor input of ``args`` that is not None, for output gradient ``grad_out``."""
    a = float64_copy(args, requires_grad=True)
    out = ghost_module_bn_train_reference(*(a[k] for k in TENSOR_INPUTS[:5]), a["eps_primary"],
                                          *(a[k] for k in TENSOR_INPUTS[5:]), a["eps_cheap"], a["out_channels"],
                                          a["act"])[0]
    names = [k for k in TENSOR_INPUTS if a[k] is not None]
    grads = torch.autograd.grad(out, [a[k] for k in names], grad_out.double())
    return dict(zip(names, grads))


def call(args: dict, backend: str = "cpu", group: str = ""):
    import ghostkernels

    return ghostkernels.ops.ghost_module_bn_train(
        *(args[k] for k in TENSOR_INPUTS[:5]), args["eps_primary"], *(args[k] for k in TENSOR_INPUTS[5:]),
        args["eps_cheap"], args["out_channels"], args["act"], group=group, backend=backend)


# Forward and gradient tolerances against the float64 reference (ghost_testing's scaled form). float32: the BN
# divides by the batch standard deviation (about 1 here) and the BN backward's centred gradient is a difference of
# terms as large as the uncentred one, so gradients carry a few times the op's plain float32 error; bfloat16: z1 and
# the output are rounded to bfloat16 (unit roundoff 2^-9), and everything after z1 is in float.
FORWARD_TOL = {torch.float64: gt.Tol(1e-11, 1e-11), torch.float32: gt.Tol(2e-5, 1e-5),
               torch.bfloat16: gt.Tol(3e-2, 1.6e-2)}
BACKWARD_TOL = {torch.float64: gt.Tol(1e-10, 1e-10), torch.float32: gt.Tol(5e-5, 2e-5),
                torch.bfloat16: gt.Tol(6e-2, 3e-2)}


def pass_definitions(x, w_primary, z1, stage1, w_cheap, stage2, grad_out, mean_dy, act: str, out_channels: int):
    """What each train-mode BN pass must return by the formula of its schema (csrc/ghost_module.cpp), computed in
    float64 from the passes' own inputs (float64 tensors): z1 (given: the statistics are those of z1 as the first
    pass stored it), stage1/stage2 = (mean, invstd, weight, bias) of each BN, grad_out, and mean_dy = (mean_dy_primary,
    mean_dy_xhat_primary, mean_dy_cheap, mean_dy_xhat_cheap). Keys: z1 (conv1x1(x, w_primary)), mean1, var1, mean2,
    var2, out, sums_primary, sums_cheap, grad_x, grad_w_primary, grad_w_cheap. The per-pass formulas are the
    ref_* functions below."""
    s1, s2 = tuple(stage1), tuple(stage2)
    mean1, var1 = _moments(z1)
    mean2, var2 = ref_cheap_stats(z1, s1, w_cheap, act)
    sums_primary, sums_cheap = ref_backward_reduce(grad_out, z1, s1, w_cheap, s2, out_channels, act)
    grad_x, grad_w1, grad_w2 = ref_backward(grad_out, x, z1, w_primary, s1 + tuple(mean_dy[:2]), w_cheap,
                                            s2 + tuple(mean_dy[2:]), out_channels, act)
    return dict(z1=ref_conv1x1_stats(x, w_primary)[0], mean1=mean1, var1=var1, mean2=mean2, var2=var2, out=ref_forward_out(z1, s1, w_cheap, s2, out_channels, act),
                sums_primary=sums_primary, sums_cheap=sums_cheap, grad_x=grad_x, grad_w_primary=grad_w1,
                grad_w_cheap=grad_w2)


def pass_arguments(passes, seed: int, device="cpu") -> dict:
    """Arguments of each pass (by its C++ name) on a small float32 case (N=2, C=4, 4x5, init 3, out_channels 5,
    relu), the statistics from the passes ``passes`` (a train_bn.Passes) themselves."""
    case = TrainCase(n=2, c=4, h=4, w=5, init=3, out_channels=5, act="relu", x_mean=0.4)
    a = {k: v.to(device) if isinstance(v, torch.Tensor) else v
         for k, v in make_inputs(case, torch.float32, seed).items()}
    x, w1, w2 = a["x"], a["w_primary"], a["w_cheap"]
    z1, m1, v1 = passes.conv1x1_stats(x, w1)
    s1 = stage_vectors(m1, v1, a["bn_weight_primary"], a["bn_bias_primary"], 1e-5)
    m2, v2 = passes.cheap_stats(z1, *s1, w2, "relu")
    s2 = stage_vectors(m2, v2, a["bn_weight_cheap"], a["bn_bias_cheap"], 1e-5)
    gen = torch.Generator().manual_seed(seed + 1)
    go = torch.randn(2, 5, 4, 5, generator=gen).to(device)
    v = [torch.randn(3, generator=gen).to(device) for _ in range(4)]
    return {
        "ghost_bn_conv1x1_stats": (x, w1),
        "ghost_bn_cheap_stats": (z1, *s1, w2, "relu"),
        "ghost_bn_forward_out": (z1, *s1, w2, *s2, 5, "relu"),
        "ghost_bn_backward_reduce": (go, z1, *s1, w2, *s2, 5, "relu"),
        "ghost_bn_backward": (go, x, z1, w1, *s1, v[0], v[1], w2, *s2, v[2], v[3], 5, "relu"),
    }


# ---------------------------------------------------------------------------------------------------------------
# The five passes (ghost_bn_* in csrc/ghost_module.cpp), each by the formula of its schema in float64
# ---------------------------------------------------------------------------------------------------------------


def stage_vectors(mean, var, weight, bias, eps):
    """A BN stage as the passes take it: (mean, invstd, weight, bias)."""
    return mean, torch.rsqrt(var + eps), weight, bias


def _bn(z, s):
    mean, invstd, weight, bias = (t.double().view(1, -1, 1, 1) for t in s[:4])
    xhat = (z - mean) * invstd
    return xhat, xhat * weight + bias


def _dwconv(t, w2):
    return torch.nn.functional.conv2d(t, w2.double(), padding=w2.shape[-1] // 2, groups=t.shape[1])


def _act_and_derivative(act: str, y):
    f = gt.activation(act)
    yy = y.detach().requires_grad_()
    return f(y), torch.autograd.grad(f(yy).sum(), yy)[0]


def _moments(z):
    return z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)


def ref_conv1x1_stats(x, w1):
    """(z1, mean, var): z1 = conv1x1(x, w1) and its moments; the moments of the z1 a kernel stored are
    ``_moments(z1_stored)``."""
    z1 = torch.nn.functional.conv2d(x.double(), w1.double())
    return (z1, *_moments(z1))


def ref_cheap_stats(z1, s1, w2, act):
    x1 = _act_and_derivative(act, _bn(z1.double(), s1)[1])[0]
    return _moments(_dwconv(x1, w2))


def ref_forward_out(z1, s1, w2, s2, oc, act):
    x1 = _act_and_derivative(act, _bn(z1.double(), s1)[1])[0]
    x2 = _act_and_derivative(act, _bn(_dwconv(x1, w2), s2)[1])[0]
    return torch.cat([x1, x2], 1)[:, :oc]


def _backward_terms(go, z1, s1, w2, s2, oc, act):
    """x1, a1 = act'(y1), xhat1, the kept grad_out of x1's channels, g2 = dL/dy2 (zero past the slice), xhat2."""
    init = z1.shape[1]
    xh1, y1 = _bn(z1.double(), s1)
    x1, a1 = _act_and_derivative(act, y1)
    xh2, y2 = _bn(_dwconv(x1, w2), s2)
    a2 = _act_and_derivative(act, y2)[1]
    go = go.double()
    gp = torch.zeros_like(x1)
    gp[:, :min(oc, init)] = go[:, :min(oc, init)]
    g2 = torch.zeros_like(xh2)
    g2[:, :max(0, oc - init)] = go[:, init:] * a2[:, :max(0, oc - init)]
    return x1, a1, xh1, gp, g2, xh2


def ref_backward_reduce(go, z1, s1, w2, s2, oc, act):
    """(sums_primary [2, I], sums_cheap [8, I*M])."""
    x1, a1, xh1, gp, g2, xh2 = _backward_terms(go, z1, s1, w2, s2, oc, act)
    da, dq = _dwconv(a1, w2), _dwconv(a1 * xh1, w2)
    d = (0, 2, 3)
    sums_c = torch.stack([g2.sum(d), (g2 * xh2).sum(d), (da * g2).sum(d), da.sum(d), (da * xh2).sum(d),
                          (dq * g2).sum(d), dq.sum(d), (dq * xh2).sum(d)])
    sums_c[:, max(0, oc - z1.shape[1]):] = 0  # the sums of channels past the slice are zero
    return torch.stack([(a1 * gp).sum(d), (a1 * xh1 * gp).sum(d)]), sums_c


def ref_backward(go, x, z1, w1, s1, w2, s2, oc, act):
    """(grad_x, grad_w1, grad_w2) of ghost_bn_backward; s1 and s2 with their mean_dy and mean_dy_xhat (6 vectors)."""
    F = torch.nn.functional
    x1, a1, xh1, gp, g2, xh2 = _backward_terms(go, z1, s1, w2, s2, oc, act)
    v = lambda t: t.double().view(1, -1, 1, 1)  # noqa: E731

    def dz(g, xh, s):
        return v(s[1] * s[2]) * (g - v(s[4]) - xh * v(s[5]))

    dz2 = dz(g2, xh2, s2)
    dz2[:, max(0, oc - z1.shape[1]):] = 0
    w2v = w2.double().requires_grad_()
    x1v = x1.detach().requires_grad_()
    dx1, gw2 = torch.autograd.grad(_dwconv(x1v, w2v), (x1v, w2v), dz2)
    dz1 = dz((gp + dx1) * a1, xh1, s1)
    xv, w1v = x.double().requires_grad_(), w1.double().requires_grad_()
    gx, gw1 = torch.autograd.grad(F.conv2d(xv, w1v), (xv, w1v), dz1)
    return gx, gw1, gw2
