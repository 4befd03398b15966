"""Triton device functions shared by the forward and backward kernels: activations and the tiled 1x1 conv.

Activation ids follow ghostkernels.ops.reference.ACTS (and csrc/activations.h): 0 identity, 1 relu, 2 relu6, 3 silu,
4 hardswish. The derivatives use PyTorch's conventions at the kinks (relu'(0) = 0, relu6'(0) = relu6'(6) = 0,
hardswish'(-3) = 0, hardswish'(3) = 1) so that gradients agree with eager autograd bit-for-bit in the masks.
All math here is float32: callers convert loads with .to(tl.float32) before calling.
"""

import triton
import triton.language as tl


@triton.jit
def apply_act(z, ACT: tl.constexpr):
    """act(z) for an fp32 tensor. silu is z / (1 + exp(-z)): for z -> -inf exp overflows to inf and the result is
    -0.0, the correct limit, so no clamping is needed."""
    if ACT == 1:
        z = tl.where(z > 0.0, z, 0.0)
    elif ACT == 2:
        z = tl.minimum(tl.where(z > 0.0, z, 0.0), 6.0)
    elif ACT == 3:
        z = z / (1.0 + tl.exp(-z))
    elif ACT == 4:
        z = z * tl.minimum(tl.maximum(z + 3.0, 0.0), 6.0) / 6.0
    return z


@triton.jit
def act_derivative(z, ACT: tl.constexpr):
    """d act / dz evaluated at the pre-activation z (fp32)."""
    if ACT == 0:
        d = tl.full(z.shape, 1.0, tl.float32)
    elif ACT == 1:
        d = tl.where(z > 0.0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where((z > 0.0) & (z < 6.0), 1.0, 0.0)
    elif ACT == 3:
        s = 1.0 / (1.0 + tl.exp(-z))
        d = s * (1.0 + z * (1.0 - s))
    else:
        d = tl.where(z <= -3.0, 0.0, tl.where(z < 3.0, z / 3.0 + 0.5, 1.0))
    return d


@triton.jit
def work_item(work, n_iblocks, tiles_per_image, tiles_x, TH: tl.constexpr, TW: tl.constexpr,
              BLOCK_I: tl.constexpr):
    """Decode a persistent-grid work index into (image n, tile origin ty0/tx0, first primary channel i0).

    The channel block varies fastest, so programs running side by side share the same x tile in L2.
    """
    ib = work % n_iblocks
    t = work // n_iblocks
    tile = t % tiles_per_image
    n = t // tiles_per_image
    return n, (tile // tiles_x) * TH, (tile % tiles_x) * TW, ib * BLOCK_I


@triton.jit
def image_offset(n, stride, VEC: tl.constexpr):
    """n * stride in 64 bits, the element offset of image n; VEC > 1 promises it is a multiple of VEC (the
    tensor's image stride is, configs.tensor_vector), which Triton cannot infer for a stride that is not a multiple
    of 16 and needs for the per-pixel vectors behind this offset to stay aligned."""
    off = n.to(tl.int64) * stride
    if VEC > 1:
        off = tl.multiple_of(off, VEC)
    return off


@triton.jit
def primary_conv_region(x_ptr, sxc, sxh, sxw, w_ptr, b_ptr, i0, y0, x0, p0, C, I, H, W,
                        RH: tl.constexpr, RW: tl.constexpr, SUB_P: tl.constexpr, BLOCK_I: tl.constexpr,
                        BLOCK_C: tl.constexpr, DOT_PRECISION: tl.constexpr, VEC: tl.constexpr):
    """z1 = w_primary[i0:i0+BLOCK_I] @ x[:, pixels] + b_primary for SUB_P consecutive slots p0 + [0, SUB_P) of an
    RH x RW pixel region with origin (y0, x0), flattened row-major: slot p is pixel (y0 + p // RW, x0 + p % RW).

    x_ptr already points at the image (batch offset applied, in 64-bit). Pixels outside the image (and slots past
    RH*RW) load x = 0, so their z1 is just the bias; the caller must zero x1 there itself, because the depthwise
    conv pads x1 (post-activation) with zeros and act(bias) is generally not 0. Callers walk the region in chunks
    of SUB_P slots because a whole 256-slot region at once needs > 255 registers per thread (the 2-D pointer and
    mask tensors of the x tile dominate) and spills.

    Returns (z1 [BLOCK_I, SUB_P] fp32, in_image [SUB_P]). Accumulation is fp32 in tl.dot; x and w keep their
    dtype on the tensor cores (fp16/bf16); float32 runs at DOT_PRECISION, "ieee" (full-precision FMA) unless torch
    allows TF32 for convolutions ("tf32", configs.fp32_dot_precision).

    VEC > 1 promises that every pixel's offset is a multiple of VEC elements (channels_last x with C % VEC == 0):
    with the channel stride 1 (which Triton specializes on), the x tile is VEC-element vectors along the channels,
    its axis 0, contiguous over BLOCK_C (a power of two). For the loads to become 16-byte vectors the compiler must
    also see the mask constant over each vector, which `cc < C` is not when C is not a multiple of 16 (Triton knows
    the divisibility of an integer argument only by 16): the channel test is written on vector indices instead,
    cc // VEC < C // VEC, equal over the VEC channels of a vector and the same test since C % VEC == 0. The same
    holds for W1's rows (offset ii * C, a multiple of VEC).
    """
    p = p0 + tl.arange(0, SUB_P)
    py = y0 + p // RW
    px = x0 + p % RW
    in_image = (p < RH * RW) & (py >= 0) & (py < H) & (px >= 0) & (px < W)
    ii = i0 + tl.arange(0, BLOCK_I)
    i_ok = ii < I
    pix_off = py * sxh + px * sxw
    w_row = ii * C
    if VEC > 1:
        pix_off = tl.multiple_of(pix_off, VEC)
        w_row = tl.multiple_of(w_row, VEC)
    acc = tl.zeros([BLOCK_I, SUB_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = tl.max_contiguous(tl.multiple_of(c0 + tl.arange(0, BLOCK_C), BLOCK_C), BLOCK_C)
        if VEC > 1:
            c_ok = cc // VEC < C // VEC
        else:
            c_ok = cc < C
        xt = tl.load(x_ptr + cc[:, None] * sxc + pix_off[None, :], mask=c_ok[:, None] & in_image[None, :], other=0.0)
        wt = tl.load(w_ptr + w_row[:, None] + cc[None, :], mask=i_ok[:, None] & c_ok[None, :], other=0.0)
        acc = tl.dot(wt, xt, acc, input_precision=DOT_PRECISION)
    bias = tl.load(b_ptr + ii, mask=i_ok, other=0.0).to(tl.float32)
    return acc + bias[:, None], in_image
