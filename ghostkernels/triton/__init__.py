"""The Triton backend of the fused Ghost module.

``ghost_module_triton(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)`` runs
``torch.ops.ghostkernels.ghost_module_triton`` (registered in .op on first use, with autograd): fused Triton
kernels for the forward (forward_kernels) and the backward (backward_kernels), launch geometry in configs.

Where it runs:
* CUDA tensors: compiled Triton kernels, autotuned per (init, C, H*W, k, dtype).
* CPU tensors: only under the Triton interpreter, i.e. with ``TRITON_INTERPRET=1`` in the environment before this
  backend is first used (triton reads it when the kernels are decorated). Float32 and float16 only there (numpy
  has no bfloat16), and slow: it is for testing the kernels without a GPU. Without the interpreter CPU tensors are
  refused with an error rather than silently computed another way: use backend="cpu" for the C++ kernels.
"""

from __future__ import annotations

import os

import torch

_op_module = None


def _load_op_module():
    """Import (once) the module that defines the Triton kernels and registers the ops."""
    global _op_module
    if _op_module is None:
        try:
            import triton  # noqa: F401
        except ImportError as e:
            raise RuntimeError(
                "ghostkernels: backend='triton' needs the 'triton' package, which is not installed. Install a "
                "triton release that matches your torch (`pip install triton`; CUDA builds of torch usually bring "
                "it), or use backend='cuda' / 'cpu' / 'eager'.") from e
        from . import op

        _op_module = op
    return _op_module


def interpreted() -> bool:
    """True when the Triton kernels run under the interpreter (TRITON_INTERPRET=1 when they were decorated)."""
    return _load_op_module().INTERPRETED


def ghost_module_triton(x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act: str = "relu"):
    """Fused Ghost module with Triton kernels: ``cat(x1, x2)[:, :out_channels]``, differentiable.

    x1 = act(conv1x1(x, w_primary) + b_primary), x2 = act(depthwise_kxk(x1, w_cheap, padding k//2) + b_cheap);
    the contract (shapes, memory format, numerics) is that of ghostkernels.ops.ghost_module.
    """
    op = _load_op_module()
    dev = x.device.type
    if dev == "cpu" and not op.INTERPRETED:
        late = os.environ.get("TRITON_INTERPRET", "0") == "1"
        hint = (" TRITON_INTERPRET=1 is set now, but it was not when the Triton kernels were first imported; set it "
                "before importing ghostkernels.triton." if late else
                " Set TRITON_INTERPRET=1 before the first use to run the kernels in Triton's (slow) interpreter.")
        raise RuntimeError("ghostkernels: backend='triton' got CPU tensors, but the Triton kernels need a CUDA GPU; "
                           "use backend='cpu' for CPU tensors." + hint)
    if dev not in ("cpu", "cuda"):
        raise ValueError(f"ghostkernels: backend='triton' needs CUDA tensors, got tensors on {x.device}")
    return torch.ops.ghostkernels.ghost_module_triton(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)


__all__ = ["ghost_module_triton", "interpreted"]
