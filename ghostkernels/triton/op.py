"""torch.library registration of the Triton backend: ghostkernels::ghost_module_triton and its backward.

Both are torch.library.triton_op, with the schema of ghostkernels::ghost_module / ghost_module_backward
(``SymInt out_channels, str act``). What one call does depends on the tensors:

* Tensors with data, on the GPU (or anywhere under TRITON_INTERPRET=1): the Triton kernels. On the GPU they are
  launched through torch.library.wrap_triton, so torch.compile / make_fx trace the launches (the
  triton_kernel_wrapper HOP) and Inductor compiles the kernels into its own graph. Under the interpreter the
  kernels are called directly: an interpreted kernel cannot be traced, and wrap_triton would refuse it in older
  torch releases.
* Fake CUDA tensors (torch.compile, torch.export): the same function, whose wrapped launches do nothing under
  fake tensors; this is the op's fake kernel (triton_op registers the function itself as such).
* CPU and meta tensors without the interpreter, and fake/meta/functional tensors under it: the plain PyTorch
  implementation (torch_math). This is the op's CPU reference kernel; it also gives torch.compile, torch.export
  and opcheck a traceable body where the interpreted kernels cannot run. The user-facing entry point
  ghostkernels.triton.ghost_module_triton refuses CPU tensors without the interpreter, so this path is reached
  only by calling torch.ops.ghostkernels.ghost_module_triton directly.

Autograd: the backward op recomputes everything from x (only x and the weights are saved), as for the C++ op.

GhostNetV2's gate: ghostkernels::dfc_gate_triton (the DFC map, gate_kernels) and ghostkernels::ghost_module_gated_triton
(the forward kernel with the map multiplied into its stores), same schemas and dispatch as the C++ dfc_gate and
ghost_module_gated. Their backward formulas are compositions of ops: the gated module's recomputes the ungated output
with ghost_module_triton and runs ghost_module_triton_backward on grad_out times the upsampled map (the map's own
gradient is the upsampling's adjoint of grad_out times that output); the map's is the library's
ghostkernels::dfc_gate_backward (ATen's convolution and pooling backwards, on whatever device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.library import triton_op, wrap_triton

from ..ops.reference import ACTS, dfc_gate_reference, ghost_module_gated_reference
from ..ops.registration import (dfc_gate_backward, make_backward, make_gated_backward, setup_context,
                                setup_dfc_gate_context, setup_gated_context)
from ..ops.validation import check_dfc_gate_inputs, check_gated_inputs, check_ghost_inputs, output_memory_format
from . import configs, torch_math
from .backward_kernels import ghost_backward_kernel, launch_backward
from .forward_kernels import ghost_forward_kernel, launch_forward
from .gate_kernels import launch_dfc_gate

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _is_interpreted(kernel) -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    while hasattr(kernel, "fn") and not isinstance(kernel, InterpretedFunction):  # unwrap Autotuner/Heuristics
        kernel = kernel.fn
    return isinstance(kernel, InterpretedFunction)


# Fixed when the kernels were decorated, i.e. when this module was first imported: triton reads TRITON_INTERPRET
# at @triton.jit time, so setting it later changes nothing.
INTERPRETED = _is_interpreted(ghost_forward_kernel) and _is_interpreted(ghost_backward_kernel)


def _launcher(kernel):
    return kernel if INTERPRETED else wrap_triton(kernel)


def _holds_data(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake
    from torch._subclasses.functional_tensor import FunctionalTensor

    return not (t.device.type == "meta" or is_fake(t) or isinstance(t, FunctionalTensor))


def _runs_kernels(x: torch.Tensor) -> bool:
    if INTERPRETED:
        return _holds_data(x)
    return x.device.type == "cuda"


def _image_span(t: torch.Tensor) -> int:
    """Largest element offset within one image of t (strides may come from a larger tensor t is a view of)."""
    return 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:]) if size > 0)


def _check(op: str, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act):
    check_ghost_inputs(op, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: the Triton kernels support float16, bfloat16 and float32, got {x.dtype}")
    if _image_span(x) >= 2 ** 31:  # offsets inside one image are 32-bit in the kernels (the batch offset is 64-bit)
        raise ValueError(f"{op}: one image of x spans {_image_span(x)} elements; the Triton kernels need < 2**31")
    n, _, h, w = x.shape
    if out_channels * h * w >= 2 ** 31:
        raise ValueError(f"{op}: one image of the output has {out_channels * h * w} elements; the Triton kernels "
                         "need < 2**31")
    if INTERPRETED and x.dtype == torch.bfloat16 and _holds_data(x):
        raise TypeError(f"{op}: bfloat16 cannot run under TRITON_INTERPRET=1 (numpy has no bfloat16); "
                        "use float16/float32 there, or a GPU")


@triton_op("ghostkernels::ghost_module_triton", mutates_args=())
def ghost_module_triton_op(x: torch.Tensor, w_primary: torch.Tensor, b_primary: torch.Tensor,
                           w_cheap: torch.Tensor, b_cheap: torch.Tensor, out_channels: int,
                           act: str) -> torch.Tensor:
    _check("ghostkernels::ghost_module_triton", x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    n, _, h, w = x.shape
    out = torch.empty((n, out_channels, h, w), dtype=x.dtype, device=x.device,
                      memory_format=output_memory_format(x))
    if not _runs_kernels(x):
        return torch_math.forward_into(out, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    return launch_forward(_launcher, x, w_primary, b_primary, w_cheap, b_cheap, out, out_channels, ACTS.index(act))


@triton_op("ghostkernels::ghost_module_triton_backward", mutates_args=())
def ghost_module_triton_backward_op(grad_out: torch.Tensor, x: torch.Tensor, w_primary: torch.Tensor,
                                    b_primary: torch.Tensor, w_cheap: torch.Tensor, b_cheap: torch.Tensor,
                                    out_channels: int, act: str
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    op = "ghostkernels::ghost_module_triton_backward"
    _check(op, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    n, _, h, w = x.shape
    if tuple(grad_out.shape) != (n, out_channels, h, w):
        raise ValueError(f"{op}: grad_out must be [{n}, {out_channels}, {h}, {w}], got {tuple(grad_out.shape)}")
    if _image_span(grad_out) >= 2 ** 31:
        raise ValueError(f"{op}: one image of grad_out spans {_image_span(grad_out)} elements; the Triton kernels "
                         "need < 2**31")
    if grad_out.dtype != x.dtype or grad_out.device != x.device:
        raise TypeError(f"{op}: grad_out must match x ({x.dtype} on {x.device}), got {grad_out.dtype} on "
                        f"{grad_out.device}")
    fmt = output_memory_format(x)
    if not _runs_kernels(x):
        grads = torch_math.backward(grad_out, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act, fmt)
    else:
        grads = launch_backward(_launcher, grad_out, x, w_primary, b_primary, w_cheap, b_cheap, out_channels,
                                ACTS.index(act), fmt)
    grad_x, rest = grads[0], grads[1:]
    # Both paths return weight gradients in the weights' own (contiguous) layout, so fake and real strides agree.
    return (grad_x,) + tuple(g.contiguous() for g in rest)


ghost_module_triton_op.register_autograd(
    make_backward(lambda *args: torch.ops.ghostkernels.ghost_module_triton_backward(*args)),
    setup_context=setup_context)


@triton_op("ghostkernels::ghost_module_gated_triton", mutates_args=())
def ghost_module_gated_triton_op(x: torch.Tensor, w_primary: torch.Tensor, b_primary: torch.Tensor,
                                 w_cheap: torch.Tensor, b_cheap: torch.Tensor, out_channels: int, act: str,
                                 gate: torch.Tensor) -> torch.Tensor:
    op = "ghostkernels::ghost_module_gated_triton"
    _check(op, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    check_gated_inputs(op, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act, gate)
    n, _, h, w = x.shape
    out = torch.empty((n, out_channels, h, w), dtype=x.dtype, device=x.device,
                      memory_format=output_memory_format(x))
    if not _runs_kernels(x):
        out.copy_(ghost_module_gated_reference(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act, gate))
        return out
    return launch_forward(_launcher, x, w_primary, b_primary, w_cheap, b_cheap, out, out_channels, ACTS.index(act),
                          gate=gate)


def _gated_backward(grad_out, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act, gate):
    """The gradients of ghost_module_gated_triton (the schema of ghostkernels::ghost_module_gated_backward)."""
    h, w = int(x.shape[2]), int(x.shape[3])
    y = torch.ops.ghostkernels.ghost_module_triton(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    grad_gate = torch.ops.aten.upsample_nearest2d_backward(grad_out * y, [h, w], list(gate.shape))
    grad_y = (grad_out * F.interpolate(gate, size=(h, w), mode="nearest")).contiguous(
        memory_format=output_memory_format(x))
    grads = torch.ops.ghostkernels.ghost_module_triton_backward(grad_y, x, w_primary, b_primary, w_cheap, b_cheap,
                                                                out_channels, act)
    return (*grads, grad_gate.contiguous())


ghost_module_gated_triton_op.register_autograd(make_gated_backward(_gated_backward),
                                               setup_context=setup_gated_context)


@triton_op("ghostkernels::dfc_gate_triton", mutates_args=())
def dfc_gate_triton_op(x: torch.Tensor, w_reduce: torch.Tensor, b_reduce: torch.Tensor, w_h: torch.Tensor,
                       b_h: torch.Tensor, w_v: torch.Tensor, b_v: torch.Tensor) -> torch.Tensor:
    op = "ghostkernels::dfc_gate_triton"
    o, hg, wg = check_dfc_gate_inputs(op, x, w_reduce, b_reduce, w_h, b_h, w_v, b_v)
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: the Triton kernels support float16, bfloat16 and float32, got {x.dtype}")
    if INTERPRETED and x.dtype == torch.bfloat16 and _holds_data(x):
        raise TypeError(f"{op}: bfloat16 cannot run under TRITON_INTERPRET=1 (numpy has no bfloat16); "
                        "use float16/float32 there, or a GPU")
    out = torch.empty((x.shape[0], o, hg, wg), dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    if not _runs_kernels(x):
        out.copy_(dfc_gate_reference(x, w_reduce, b_reduce, w_h, b_h, w_v, b_v))
        return out
    return launch_dfc_gate(_launcher, x, w_reduce, b_reduce, w_h, b_h, w_v, b_v, out,
                           configs.dot_precision(x.dtype))


dfc_gate_triton_op.register_autograd(dfc_gate_backward, setup_context=setup_dfc_gate_context)
