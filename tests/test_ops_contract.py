"""The op as PyTorch sees it: gradcheck, opcheck, torch.compile(fullgraph=True), torch.export, autocast.

Each test runs per backend through ghostkernels.ops.ghost_module (or directly on the registered op, for opcheck),
with the same skips as the numerical tests where a backend cannot run here.
"""

from __future__ import annotations

import pytest
import torch

import ghost_testing as gt
from ghostkernels import ops

# Small enough for gradcheck's one-element-at-a-time finite differences (120 input elements), yet with a slice
# inside x2, ratio 3, a batch of 2 and a border on every side of the depthwise kernel.
_SMALL = gt.GhostCase(n=2, c=3, h=4, w=3, init=2, ratio=3, k=3, out_channels=5)


# ---------------------------------------------------------------------------------------------------------------
# gradcheck
# ---------------------------------------------------------------------------------------------------------------

# Margin between every pre-activation and the kinks: gradcheck's finite differences (eps = 1e-6) must not step
# across one, or the numerical derivative is an average of the two sides.
_GRADCHECK_KINK_MARGIN = 1e-2


@pytest.mark.parametrize("act", gt.ACTS)
@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
def test_gradcheck_float64(backend, act, seed):
    if backend not in gt.FLOAT64_BACKENDS:
        pytest.skip(f"backend {backend!r} has no float64 kernels; its gradients are compared with the float64 "
                    "reference in test_ops_backward")
    gt.skip_unless_backend(backend)
    case = _SMALL.replace(act=act)
    inputs = gt.make_inputs(case, torch.float64, gt.backend_device(backend), seed, requires_grad=True,
                            kink_margin=_GRADCHECK_KINK_MARGIN)
    assert torch.autograd.gradcheck(lambda *a: ops.ghost_module(*a, case.oc, act, backend=backend), inputs)


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
@pytest.mark.parametrize("backend", gt.FLOAT64_BACKENDS)
def test_gradcheck_float64_strided_x(backend, layout, seed):
    gt.skip_unless_backend(backend)
    case = _SMALL.replace(layout=layout, k=5, act="silu")
    inputs = gt.make_inputs(case, torch.float64, gt.backend_device(backend), seed, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: ops.ghost_module(*a, case.oc, case.act, backend=backend), inputs)


# ---------------------------------------------------------------------------------------------------------------
# opcheck: schema, autograd registration, fake kernel against the real one, AOT dispatch with dynamic shapes
# ---------------------------------------------------------------------------------------------------------------

def _registered_ops(backend: str):
    """(forward op, backward op) that ``backend`` dispatches to."""
    if backend == "triton":
        import ghostkernels.triton

        ghostkernels.triton.interpreted()  # registers the ops on first use
        return (torch.ops.ghostkernels.ghost_module_triton.default,
                torch.ops.ghostkernels.ghost_module_triton_backward.default)
    return torch.ops.ghostkernels.ghost_module.default, torch.ops.ghostkernels.ghost_module_backward.default


_OPCHECK_CASES = [
    _SMALL,
    _SMALL.replace(layout="channels_last", act="hardswish", out_channels=2),
    _SMALL.replace(n=0, act="relu6"),
]


@pytest.mark.parametrize("requires_grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
def test_opcheck_forward(backend, requires_grad, seed):
    gt.skip_unless_backend(backend)
    forward_op, _ = _registered_ops(backend)
    dtype = gt.backend_dtypes(backend)[0]
    for case in _OPCHECK_CASES:
        inputs = gt.make_inputs(case, dtype, gt.backend_device(backend), seed, requires_grad=requires_grad)
        torch.library.opcheck(forward_op, (*inputs, case.oc, case.act))


@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
def test_opcheck_backward(backend, seed):
    gt.skip_unless_backend(backend)
    _, backward_op = _registered_ops(backend)
    dtype = gt.backend_dtypes(backend)[0]
    device = gt.backend_device(backend)
    for case in _OPCHECK_CASES:
        inputs = gt.make_inputs(case, dtype, device, seed)
        grad_out = gt.make_grad_out(case, dtype, device, seed)
        torch.library.opcheck(backward_op, (grad_out, *inputs, case.oc, case.act))


# ---------------------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True)
# ---------------------------------------------------------------------------------------------------------------

_COMPILE_CASE = gt.GhostCase(n=2, c=6, h=5, w=7, init=4, ratio=3, k=3, out_channels=9, act="relu6")


class _GhostBlock(torch.nn.Module):
    """A small module with the op in the middle: code before and after it is compiled into the same graph."""

    def __init__(self, w_primary, b_primary, w_cheap, b_cheap, out_channels, act, backend):
        super().__init__()
        self.w_primary = torch.nn.Parameter(w_primary.detach().clone())
        self.b_primary = torch.nn.Parameter(b_primary.detach().clone())
        self.w_cheap = torch.nn.Parameter(w_cheap.detach().clone())
        self.b_cheap = torch.nn.Parameter(b_cheap.detach().clone())
        self.out_channels, self.act, self.backend = out_channels, act, backend

    def forward(self, x):
        y = ops.ghost_module(x * 0.5, self.w_primary, self.b_primary, self.w_cheap, self.b_cheap,
                             self.out_channels, self.act, backend=self.backend)
        return torch.tanh(y) + 1.0


def _block_reference(inputs, case, grad_out=None):
    """Output (and, given grad_out, gradients) of _GhostBlock in float64 eager."""
    with gt.single_thread():
        leaves = [t.detach().to("cpu", torch.float64).requires_grad_() for t in inputs]
        x, rest = leaves[0], leaves[1:]
        out = torch.tanh(gt.ghost_module_reference(x * 0.5, *rest, case.oc, case.act)) + 1.0
        if grad_out is None:
            return out.detach(), None
        grads = torch.autograd.grad(out, leaves, grad_out.detach().to("cpu", torch.float64))
    return out.detach(), grads


@pytest.mark.parametrize("backend", gt.BACKENDS)
def test_compile_fullgraph_function_forward_backward(backend, seed):
    gt.skip_unless_backend(backend)
    torch._dynamo.reset()
    case, dtype = _COMPILE_CASE, torch.float32
    device = gt.backend_device(backend)
    inputs = gt.make_inputs(case, dtype, device, seed, requires_grad=True, kink_margin=gt.KINK_MARGIN)
    grad_out = gt.make_grad_out(case, dtype, device, seed)

    @torch.compile(fullgraph=True)
    def f(x, w_primary, b_primary, w_cheap, b_cheap):
        return ops.ghost_module(x, w_primary, b_primary, w_cheap, b_cheap, case.oc, case.act, backend=backend)

    out = f(*inputs)
    grads = torch.autograd.grad(out, inputs, grad_out)
    gt.assert_close_to_reference(out, gt.reference_forward(inputs, case.oc, case.act),
                                 gt.forward_tol(backend, dtype), "compiled output")
    gt.assert_memory_format(out, gt.expected_memory_format(inputs[0]), "compiled output")
    expected = gt.reference_grads(inputs, grad_out, case.oc, case.act)
    for name, g, e in zip(("x", "w_primary", "b_primary", "w_cheap", "b_cheap"), grads, expected):
        gt.assert_close_to_reference(g, e, gt.backward_tol(backend, dtype), f"compiled grad {name}")


@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
def test_compile_fullgraph_module_forward_backward(backend, seed):
    gt.skip_unless_backend(backend)
    if backend == "triton" and gt.triton_interpreted():
        pytest.skip("under the Triton interpreter torch.compile traces the op's plain-PyTorch body, not the "
                    "kernels; the function test covers that path")
    torch._dynamo.reset()
    case, dtype = _COMPILE_CASE.replace(layout="channels_last", act="hardswish"), torch.float32
    device = gt.backend_device(backend)
    x, *weights = gt.make_inputs(case, dtype, device, seed, kink_margin=gt.KINK_MARGIN)
    block = _GhostBlock(*weights, case.oc, case.act, backend)
    compiled = torch.compile(block, fullgraph=True)
    x.requires_grad_()
    grad_out = gt.make_grad_out(case, dtype, device, seed)
    out = compiled(x)
    params = [block.w_primary, block.b_primary, block.w_cheap, block.b_cheap]
    grads = torch.autograd.grad(out, [x] + params, grad_out)
    # The reference sees x * 0.5 exactly as the op did (a power-of-two scale is exact in every dtype).
    exp_out, exp_grads = _block_reference([x] + params, case, grad_out)
    gt.assert_close_to_reference(out, exp_out, gt.forward_tol(backend, dtype), "compiled module output")
    for name, g, e in zip(("x", "w_primary", "b_primary", "w_cheap", "b_cheap"), grads, exp_grads):
        gt.assert_close_to_reference(g, e, gt.backward_tol(backend, dtype), f"compiled module grad {name}")


# ---------------------------------------------------------------------------------------------------------------
# torch.export round trip
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", gt.BACKENDS)
def test_export_save_load_round_trip(backend, seed, tmp_path):
    gt.skip_unless_backend(backend)
    case, dtype = _COMPILE_CASE.replace(act="silu"), torch.float32
    device = gt.backend_device(backend)
    x, *weights = gt.make_inputs(case, dtype, device, seed)
    block = _GhostBlock(*weights, case.oc, case.act, backend).eval()
    with torch.no_grad():
        exported = torch.export.export(block, (x,))
    if backend != "eager":  # the fused op must survive export as one node, not be decomposed or traced through
        targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
        assert any("ghostkernels" in t for t in targets), targets
    path = tmp_path / "ghost_block.pt2"
    torch.export.save(exported, path)
    loaded = torch.export.load(path)
    x2 = gt.make_inputs(case, dtype, device, seed + 1)[0]  # fresh data, same shape
    with torch.no_grad():
        got = loaded.module()(x2)
        want = block(x2)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want)  # the loaded program computes what the module computes
    exp_out, _ = _block_reference([x2] + list(block.parameters()), case)
    gt.assert_close_to_reference(got, exp_out, gt.forward_tol(backend, dtype), "exported output")


# ---------------------------------------------------------------------------------------------------------------
# autocast
# ---------------------------------------------------------------------------------------------------------------

def _autocast_dtype(backend: str) -> torch.dtype:
    """The low-precision dtype autocast runs the op in: bfloat16 on the CPU (what CPU autocast defaults to), float16
    on a GPU and under the Triton interpreter (numpy has no bfloat16)."""
    device = gt.backend_device(backend)
    if device.type == "cuda" or backend == "triton":
        return torch.float16
    return torch.bfloat16


@pytest.mark.parametrize("backend", gt.BACKENDS)
def test_autocast_runs_in_low_precision(backend, seed):
    gt.skip_unless_backend(backend)
    low = _autocast_dtype(backend)
    device = gt.backend_device(backend)
    case = _COMPILE_CASE.replace(layout="channels_last")
    # Drawn at the low dtype (and kept off the kinks there), then held as float32 leaves: autocast's cast back to
    # the low dtype is exact, so the reference sees exactly the values the op sees.
    rounded = gt.make_inputs(case, low, device, seed, kink_margin=gt.KINK_MARGIN)
    inputs = [t.to(torch.float32).requires_grad_() for t in rounded]
    grad_out = gt.make_grad_out(case, low, device, seed)
    with torch.autocast(device.type, dtype=low):
        out = ops.ghost_module(*inputs, case.oc, case.act, backend=backend)
    assert out.dtype == low
    gt.assert_close_to_reference(out, gt.reference_forward(rounded, case.oc, case.act),
                                 gt.forward_tol(backend, low), "autocast output")
    grads = torch.autograd.grad(out, inputs, grad_out)
    assert all(g.dtype == torch.float32 for g in grads), "gradients must come back in the leaves' dtype"
    if low in gt.backward_dtypes(backend):  # see backward_dtypes: eager's bfloat16 gradients are not compared
        expected = gt.reference_grads(rounded, grad_out, case.oc, case.act)
        for name, g, e in zip(("x", "w_primary", "b_primary", "w_cheap", "b_cheap"), grads, expected):
            gt.assert_close_to_reference(g, e, gt.backward_tol(backend, low), f"autocast grad {name}")
