"""The Triton backend of the fused Ghost module.

``ghost_module_triton(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)`` runs
``torch.ops.ghostkernels.ghost_module_triton`` (registered in .op, with autograd, by ``import ghostkernels`` when
triton is installed, or on first use with GHOSTKERNELS_DEFER_LOAD=1): fused Triton kernels for the forward
(forward_kernels) and the backward (backward_kernels), launch geometry in configs. ghostkernels.ops.ghost_module
(backend="triton") calls it; this package imports only ghostkernels.ops' lower modules (validation, reference,
registration, train_bn), never ghostkernels.nn or ghostkernels.patch. ``ghost_module_bn_train_triton`` is the
train-mode Ghost module with batch-statistics BatchNorm: the five passes of bn_train_kernels, registered in
bn_train_op and composed by ghostkernels.ops.train_bn.

Where it runs:
* CUDA tensors: compiled Triton kernels, autotuned per (init, C, H*W, k, dtype).
* CPU tensors: only under the Triton interpreter, i.e. with ``TRITON_INTERPRET=1`` in the environment before this
  backend is first used (triton reads it when the kernels are decorated). Float32 and float16 only there (numpy
  has no bfloat16), and slow: it is for testing the kernels without a GPU. Without the interpreter CPU tensors are
  refused with an error rather than silently computed another way: use backend="cpu" for the C++ kernels. Since
  ``import ghostkernels`` decorates the kernels, TRITON_INTERPRET=1 must be set before that import.
"""

from __future__ import annotations

import os

import torch

_op_module = None


def load_op():
    """Import (once) the module that defines the Triton kernels and registers the ops; returns it."""
    global _op_module
    if _op_module is None:
        try:
            import triton  # noqa: F401
        except ImportError as e:
            raise RuntimeError(
                "ghostkernels: backend='triton' needs the 'triton' package, which is not installed. Install a "
                "triton release that matches your torch (`pip install triton`; CUDA builds of torch usually bring "
                "it), or use backend='cuda' / 'cpu' / 'eager'.") from e
        from . import bn_train_op, op  # noqa: F401  (bn_train_op registers the train-mode BatchNorm ops)

        _op_module = op
    return _op_module


def interpreted() -> bool:
    """True when the Triton kernels run under the interpreter (TRITON_INTERPRET=1 when they were decorated)."""
    return load_op().INTERPRETED


def ghost_module_triton(x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act: str = "relu"):
    """Fused Ghost module with Triton kernels: ``cat(x1, x2)[:, :out_channels]``, differentiable.

    x1 = act(conv1x1(x, w_primary) + b_primary), x2 = act(depthwise_kxk(x1, w_cheap, padding k//2) + b_cheap);
    the contract (shapes, memory format, numerics) is that of ghostkernels.ops.ghost_module.
    """
    _check_device(x)
    return torch.ops.ghostkernels.ghost_module_triton(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)


def _check_device(x) -> None:
    """The CPU-without-interpreter and other-device refusals every entry point shares."""
    op = load_op()
    dev = x.device.type
    if dev == "cpu" and not op.INTERPRETED:
        late = os.environ.get("TRITON_INTERPRET", "0") == "1"
        hint = (" TRITON_INTERPRET=1 is set now, but it was not when the Triton kernels were first imported; set it "
                "before importing ghostkernels." if late else
                " Set TRITON_INTERPRET=1 before the first use to run the kernels in Triton's (slow) interpreter.")
        raise RuntimeError("ghostkernels: backend='triton' got CPU tensors, but the Triton kernels need a CUDA GPU; "
                           "use backend='cpu' for CPU tensors." + hint)
    if dev not in ("cpu", "cuda"):
        raise ValueError(f"ghostkernels: backend='triton' needs CUDA tensors, got tensors on {x.device}")


def dfc_gate_triton(x, w_reduce, b_reduce, w_h, b_h, w_v, b_v):
    """GhostNetV2's DFC map with Triton kernels (the contract of ghostkernels.ops.dfc_gate), differentiable."""
    _check_device(x)
    return torch.ops.ghostkernels.dfc_gate_triton(x, w_reduce, b_reduce, w_h, b_h, w_v, b_v)


def ghost_module_gated_triton(x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act: str, gate):
    """The gated Ghost module with Triton kernels (the contract of ghostkernels.ops.ghost_module_gated),
    differentiable."""
    _check_device(x)
    return torch.ops.ghostkernels.ghost_module_gated_triton(x, w_primary, b_primary, w_cheap, b_cheap, out_channels,
                                                            act, gate)


def ghost_module_bn_train_triton(x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, eps_primary: float,
                                 w_cheap, b_cheap, bn_weight_cheap, bn_bias_cheap, eps_cheap: float, out_channels: int,
                                 act: str = "relu", group: str = ""):
    """The train-mode Ghost module (batch-statistics BatchNorm) with the Triton passes (the contract of
    ghostkernels.ops.ghost_module_bn_train), differentiable: ``torch.ops.ghostkernels.ghost_module_bn_train_triton``
    (bn_train_op), whose kernel is ghostkernels.ops.train_bn's composition of the five Triton passes."""
    _check_device(x)
    return torch.ops.ghostkernels.ghost_module_bn_train_triton(
        x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, eps_primary, w_cheap, b_cheap, bn_weight_cheap,
        bn_bias_cheap, eps_cheap, out_channels, act, group)


__all__ = ["dfc_gate_triton", "ghost_module_bn_train_triton", "ghost_module_gated_triton", "ghost_module_triton",
           "interpreted", "load_op"]
