"""Backward of ghostkernels.ops.ghost_module on every backend against float64 eager autograd.

The gradients of x and of all four weights are compared, for the same cases as the forward tests. For the fused
backends, grad_x must also follow the op's memory-format rule (the same as the output's). Fresh allocations are
NaN (conftest), so a gradient element the backward kernel never writes fails the comparison.
"""

from __future__ import annotations

import pytest
import torch

import ghost_testing as gt

NAMES = ("x", "w_primary", "b_primary", "w_cheap", "b_cheap")


def check_backward(backend: str, dtype: torch.dtype, case: gt.GhostCase, seed: int, grad_out=None) -> None:
    gt.skip_unless_backend(backend)
    device = gt.backend_device(backend)
    inputs = gt.make_inputs(case, dtype, device, seed, requires_grad=True, kink_margin=gt.KINK_MARGIN)
    out = gt.call_op(backend, inputs, case.oc, case.act)
    if grad_out is None:
        grad_out = gt.make_grad_out(case, dtype, device, seed)
    grads = torch.autograd.grad(out, inputs, grad_out)
    expected = gt.reference_grads(inputs, grad_out, case.oc, case.act)
    tol = gt.backward_tol(backend, dtype)
    for name, t, g, e in zip(NAMES, inputs, grads, expected):
        assert g.dtype == dtype and g.device.type == device.type and g.shape == t.shape, name
        gt.assert_close_to_reference(g, e, tol, f"grad {name}")
    if backend != "eager":  # eager's grad_x layout is whatever conv2d's backward returns
        gt.assert_memory_format(grads[0], gt.expected_memory_format(inputs[0]), "grad x")


@pytest.mark.parametrize("backend,dtype,case", gt.op_params(gt.ghostnet_cases(), backward=True))
def test_backward_ghostnet_100_shapes(backend, dtype, case, seed):
    check_backward(backend, dtype, case, seed)


@pytest.mark.parametrize("backend,dtype,case", gt.op_params(gt.edge_cases(), backward=True))
def test_backward_edge_cases(backend, dtype, case, seed):
    check_backward(backend, dtype, case, seed)


_GRAD_CASE = gt.GhostCase(n=2, c=6, h=5, w=7, init=4, ratio=3, k=3, out_channels=9, act="hardswish")


def _strided_grad_out(kind: str, case: gt.GhostCase, dtype, device, seed) -> torch.Tensor:
    g = gt.make_grad_out(case, dtype, device, seed)
    if kind == "expanded":  # what out.sum().backward() passes: one value, all strides 0
        return g[:1, :1, :1, :1].expand_as(g)
    if kind == "channels_last":
        return g.contiguous(memory_format=torch.channels_last)
    if kind == "sliced":
        big = torch.cat([g, g], dim=3)
        return big[..., ::2]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["expanded", "channels_last", "sliced"])
@pytest.mark.parametrize("backend", gt.BACKENDS)
def test_backward_with_strided_grad_out(backend, kind, seed):
    """grad_out arrives in whatever layout the code after the op produced, not in the output's layout."""
    gt.skip_unless_backend(backend)
    dtype = gt.backend_dtypes(backend)[0]
    grad_out = _strided_grad_out(kind, _GRAD_CASE, dtype, gt.backend_device(backend), seed)
    check_backward(backend, dtype, _GRAD_CASE, seed, grad_out=grad_out)


@pytest.mark.parametrize("which", ["x_only", "weights_only", "w_cheap_only"])
@pytest.mark.parametrize("backend", gt.BACKENDS)
def test_backward_partial_requires_grad(backend, which, seed):
    """Only the inputs that require grad get one, and their values do not depend on which others do."""
    gt.skip_unless_backend(backend)
    dtype, case = gt.backend_dtypes(backend)[0], _GRAD_CASE
    device = gt.backend_device(backend)
    inputs = gt.make_inputs(case, dtype, device, seed, kink_margin=gt.KINK_MARGIN)
    wanted = {"x_only": {0}, "weights_only": {1, 2, 3, 4}, "w_cheap_only": {3}}[which]
    leaves = [t.requires_grad_() for i, t in enumerate(inputs) if i in wanted]
    out = gt.call_op(backend, inputs, case.oc, case.act)
    grad_out = gt.make_grad_out(case, dtype, device, seed)
    grads = torch.autograd.grad(out, leaves, grad_out)
    expected = gt.reference_grads(inputs, grad_out, case.oc, case.act)
    for i, g in zip(sorted(wanted), grads):
        gt.assert_close_to_reference(g, expected[i], gt.backward_tol(backend, dtype), f"grad {NAMES[i]}")


@pytest.mark.parametrize("backend", gt.BACKENDS)
def test_backward_accumulates_into_leaf_grads(backend, seed):
    """Two backward passes through the op add up in .grad, like any autograd function."""
    gt.skip_unless_backend(backend)
    dtype, case = gt.backend_dtypes(backend)[0], _GRAD_CASE
    device = gt.backend_device(backend)
    inputs = gt.make_inputs(case, dtype, device, seed, requires_grad=True, kink_margin=gt.KINK_MARGIN)
    grad_out = gt.make_grad_out(case, dtype, device, seed)
    for _ in range(2):
        gt.call_op(backend, inputs, case.oc, case.act).backward(grad_out)
    expected = gt.reference_grads(inputs, grad_out, case.oc, case.act)
    for name, t, e in zip(NAMES, inputs, expected):
        gt.assert_close_to_reference(t.grad, 2 * e, gt.backward_tol(backend, dtype), f"accumulated grad {name}")


# The CPU backward of float32 and bfloat16 NCHW runs on the AVX-512 kernels where the CPU has them; the cases above
# test whichever this CPU takes, these the generic kernel too (see test_forward_generic_cpu_kernel).
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=gt.dtype_name)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in gt.ghostnet_cases() + gt.edge_cases()])
def test_backward_generic_cpu_kernel(case, dtype, seed, monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", "generic")
    check_backward("cpu", dtype, case, seed)
