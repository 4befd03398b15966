"""GhostNetV2's gate on the Triton backend (ghostkernels/triton: gate_kernels.py, and the GATED store of the forward
kernel): ghostkernels::dfc_gate_triton and ghost_module_gated_triton against the float64 eager reference, forward
and backward, NCHW and channels_last, at the sizes where nearest upsampling's index differs. Without a CUDA device
the kernels run under Triton's interpreter (float32 and float16 there), on small cases."""

from __future__ import annotations

import os

import pytest
import torch

import ghost_testing as gt

pytest.importorskip("triton")
if not gt.has_cuda_device() and os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("tests/test_triton_gate.py: no CUDA device and TRITON_INTERPRET is not 1 "
                       "(tests/conftest.py sets it before triton is imported)")

from ghostkernels import ops  # noqa: E402
from ghostkernels.ops.reference import dfc_gate_reference, ghost_module_gated_reference  # noqa: E402

DEVICE = gt.backend_device("triton")
DTYPES = (torch.float32, torch.float16) if gt.triton_interpreted() else (torch.float32, torch.float16,
                                                                          torch.bfloat16)
MAP_TOL = {torch.float32: gt.Tol(2e-6, 2e-6), torch.float16: gt.Tol(2e-3, 2e-3), torch.bfloat16: gt.Tol(8e-3, 8e-3)}


def _inputs(n, c, h, w, init, oc, dtype, channels_last, gen):
    x = torch.randn(n, c, h, w, generator=gen)
    ghost = [torch.randn(init, c, 1, 1, generator=gen) * (3 / c ** 0.5), torch.randn(init, generator=gen) * 0.5,
             torch.randn(init, 1, 3, 3, generator=gen) * 0.4, torch.randn(init, generator=gen) * 0.5]
    gate = [torch.randn(oc, c, 1, 1, generator=gen) * (2 / c ** 0.5), torch.randn(oc, generator=gen) * 0.5,
            torch.randn(oc, 1, 1, 5, generator=gen) * 0.6, torch.randn(oc, generator=gen) * 0.5,
            torch.randn(oc, 1, 5, 1, generator=gen) * 0.6, torch.randn(oc, generator=gen) * 0.5]
    x = x.to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, [t.to(DEVICE, dtype) for t in ghost], [t.to(DEVICE, dtype) for t in gate]


CASES = {"7x7": (2, 8, 7, 7, 6, 12), "odd-rect-sliced": (1, 5, 9, 6, 5, 9), "even": (1, 6, 8, 10, 4, 8)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("case", list(CASES))
def test_gated_forward_matches_the_reference(case, channels_last, dtype):
    gt.skip_unless_backend("triton")
    n, c, h, w, init, oc = CASES[case]
    x, ghost, gate = _inputs(n, c, h, w, init, oc, dtype, channels_last, torch.Generator().manual_seed(len(case)))
    gate_map = ops.dfc_gate(x, *gate, backend="triton")
    out = ops.ghost_module_gated(x, *ghost, oc, "relu", gate_map, backend="triton")
    want_map = dfc_gate_reference(*[t.double().cpu() for t in [x, *gate]])
    gt.assert_close_to_reference(gate_map, want_map, MAP_TOL[dtype], "dfc_gate_triton")
    want = ghost_module_gated_reference(*[t.double().cpu() for t in [x, *ghost]], oc, "relu",
                                        gate_map.double().cpu())
    gt.assert_close_to_reference(out, want, gt.forward_tol("triton", dtype), "ghost_module_gated_triton")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt) and gate_map.is_contiguous(memory_format=fmt)


def test_gated_backward_matches_autograd_of_the_reference():
    gt.skip_unless_backend("triton")
    x, ghost, gate = _inputs(2, 6, 7, 9, 5, 10, torch.float32, False, torch.Generator().manual_seed(11))
    leaves = [t.requires_grad_() for t in [x, *ghost, *gate]]
    out = ops.ghost_module_gated(*leaves[:5], 10, "silu", ops.dfc_gate(leaves[0], *leaves[5:], backend="triton"),
                                 backend="triton")
    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in leaves]
    ref = ghost_module_gated_reference(*ref_leaves[:5], 10, "silu", dfc_gate_reference(ref_leaves[0], *ref_leaves[5:]))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(12))
    grads = torch.autograd.grad(out, leaves, grad.to(out.device))
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        gt.assert_close_to_reference(g, r, gt.backward_tol("triton", torch.float32), f"gradient {i}")


def test_opcheck_of_the_triton_gate_ops():
    gt.skip_unless_backend("triton")
    x, ghost, gate = _inputs(1, 4, 6, 6, 4, 8, torch.float32, False, torch.Generator().manual_seed(13))
    torch.library.opcheck(torch.ops.ghostkernels.dfc_gate_triton, (x, *gate), test_utils=("test_schema",
                                                                                          "test_faketensor"))
    gate_map = ops.dfc_gate(x, *gate, backend="triton")
    torch.library.opcheck(torch.ops.ghostkernels.ghost_module_gated_triton, (x, *ghost, 8, "relu", gate_map),
                          test_utils=("test_schema", "test_faketensor"))
