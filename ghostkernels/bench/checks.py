"""Output checks: a benchmark number means nothing if the thing timed computes the wrong result.

Every provider's result (the output in forward mode, the input gradient in train mode) is compared with the float64
eager module (or model) on the same input, as the relative L2 error
    err = ||actual - reference||_2 / ||reference||_2.
The norm rather than the largest elementwise error, because in 16-bit types a pre-activation that rounds to the
other side of zero flips that element's ReLU mask, and its gradient is then off by its whole size: every provider,
eager included, has such elements. Their share of the norm is about sqrt(fraction of flipped elements), which is
why the gradient tolerances are wider: bfloat16 (8-bit mantissa) flips ~1% of the masks near zero, ~0.1 in L2
(eager measured 0.11 on an 8->8 module at 12x12, see below). The tolerances catch a wrong kernel (a wrong fold, channel,
border, or a missing backward term gives err of 0.5 to 1.4), not rounding; tests/ checks the kernels elementwise.
"""

from __future__ import annotations

import torch

# Measured on CPU over all 66 Ghost-module shapes of GhostNet 0.5x/1.0x/1.3x at batch 1 (eager and fused alike):
# forward float32 3e-7, bfloat16 4.3e-3; input gradient float32 2e-7, bfloat16 0.055 (0.11 on the smoke shapes);
# whole models float32 3.5e-7, bfloat16 5.4e-3. The tolerances leave about 10x of room.

# One Ghost module: two convolutions, one rounding of x1 in between.
MODULE_TOLERANCE = {
    torch.float32: 5e-3,   # cuDNN and inductor may run float32 convs as TF32 on GPU (10-bit mantissa, ~1e-3)
    torch.float16: 1e-2,   # 11-bit mantissa: 8x finer than bfloat16
    torch.bfloat16: 4e-2,  # 8-bit mantissa
}
# Input gradient of one Ghost module (train mode): ReLU-mask flips, see above.
GRAD_TOLERANCE = {
    torch.float32: 5e-3,   # TF32 on GPU; float32 masks essentially never flip
    torch.float16: 1e-1,   # 11-bit mantissa: about 8x fewer flips than bfloat16
    torch.bfloat16: 3e-1,  # 8-bit mantissa
}
# Logits of a whole GhostNet: about 60 layers; the final pooling and classifier average rounding errors out.
MODEL_TOLERANCE = {
    torch.float32: 1e-2,   # TF32 on GPU through every conv
    torch.float16: 2e-2,
    torch.bfloat16: 5e-2,
}

def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """||actual - reference||_2 / ||reference||_2 computed in float64; inf when shapes differ or values are not
    finite."""
    actual = torch.as_tensor(actual)
    if tuple(actual.shape) != tuple(reference.shape):
        return float("inf")
    a = actual.detach().to(device=reference.device, dtype=torch.float64)
    r = reference.detach().to(torch.float64)
    if not torch.isfinite(a).all():
        return float("inf")
    return torch.linalg.vector_norm(a - r).item() / max(torch.linalg.vector_norm(r).item(), 1e-30)


def first_tensor(result) -> torch.Tensor:
    """The output of a forward step, or the input gradient of a train step (its first gradient)."""
    if isinstance(result, (tuple, list)):
        return result[0]
    return result


def check(actual: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype, tolerances: dict) -> tuple[float, bool]:
    err = relative_error(actual, reference)
    return err, err <= tolerances[dtype]
