"""The backward: one fused Triton kernel for everything but the two 1x1-conv GEMMs, which torch.matmul does.

Math (r = k // 2, M = ratio - 1, j = i*M + m the cheap channels of primary channel i, g = grad_out):
  z1 = w_p @ x + b_p,  x1 = act(z1) (0 outside the image),  z2_j = dwconv(x1_i, w_c[j]) + b_c[j]
  gz2_j  = g[:, init + j] * act'(z2_j)                    (0 for channels sliced off by out_channels)
  grad b_c[j]          = sum_{n,y,x} gz2_j
  grad w_c[j, dy, dx]  = sum_{n,y,x} gz2_j[y, x] * x1_i[y + dy - r, x + dx - r]
  gx1_i  = g[:, i] + sum_m sum_{dy,dx} w_c[j, dy, dx] * gz2_j[y - dy + r, x - dx + r]   (transposed dwconv)
  gz1_i  = gx1_i * act'(z1_i)
  grad b_p = sum gz1,  grad w_p = gz1 @ x^T,  grad x = w_p^T @ gz1      (the last two: torch.matmul)

Nothing of the forward is saved (the op contract keeps only x), so the kernel recomputes z1 with tl.dot. gx1 on a
TH x TW tile needs gz2 on the tile plus a ring of r, which needs x1 on the tile plus a ring of 2r: the kernel
computes z1 on that double halo (BLOCK_P slots), stores x1 and z1 into per-program scratch, computes gz2 on the
single halo (BLOCK_P1 slots) from shifted scratch loads and stores it to scratch too, then gathers gx1 on the tile
from shifted gz2 loads. The depthwise weight and bias gradients are reduced over the tile's own pixels only (so
that every pixel counts once across tiles) into per-tile partial sums, summed over tiles by torch afterwards:
deterministic, no atomics.

Numerics: z2 is recomputed from x1 rounded to x's dtype, exactly as the forward computed it, so act' masks match
the forward; gz1 is stored in x's dtype (as eager autograd holds it) and fed to the GEMMs, which accumulate in fp32.
"""

import torch
import triton
import triton.language as tl

from . import configs
from .tile_math import act_derivative, apply_act, image_offset, primary_conv_region, work_item


@triton.autotune(configs=configs.autotune_configs(triton), key=configs.AUTOTUNE_KEY)
@triton.jit
def ghost_backward_kernel(
        x_ptr, wp_ptr, bp_ptr, wc_ptr, bc_ptr, g_ptr, gz1_ptr,
        sx1_ptr, sz1_ptr, sg_ptr, part_wc_ptr, part_bc_ptr,
        sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw, szn, szc, szh, szw,
        C, I, H, W, HW, OC, tiles_x, tiles_per_image, num_work, nprog,
        K: tl.constexpr, M: tl.constexpr, ACT: tl.constexpr, CHEAP: tl.constexpr,
        TH: tl.constexpr, TW: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_P1: tl.constexpr,
        SUB_P: tl.constexpr, SUB_A: tl.constexpr, SUB_Q: tl.constexpr, DOT_PRECISION: tl.constexpr,
        VEC: tl.constexpr, XVEC: tl.constexpr, BLOCK_C: tl.constexpr):
    """See the module docstring. Regions, each flattened row-major: the tile T (TH x TW), the single halo
    H1 = T + r (BLOCK_P1 slots, row length RW1), the double halo H2 = T + 2r (BLOCK_P slots, row length RW2).
    A shift by one radius maps H1-local (a_y, a_x) + tap (dy, dx) to H2-local (a_y + dy, a_x + dx), and T-local
    q - tap to H1-local (q_y + 2r - dy, q_x + 2r - dx). The 1x1 conv walks H2 in chunks of SUB_P slots, the
    depthwise passes walk H1 in chunks of SUB_A and T in chunks of SUB_Q pixels with tap loops that are not
    unrolled, so that one [BLOCK_I, chunk] tile is live at a time (unrolled with tl.static_range, as the forward's
    are, they spilled on sm_90: 16 bytes at 128 registers for float16 k = 3, 255 registers and 8 bytes for
    bfloat16 k = 5; rolled, 128 and 168 without spills). nprog is the grid size (the interpreter's tl.num_programs
    is not a scalar); HW is only there for the autotuner's key.
    VEC > 1: the per-pixel and per-image offsets of grad_out and gz1 are multiples of VEC; XVEC > 1: those of x
    (see the forward kernel)."""
    R: tl.constexpr = K // 2
    KK: tl.constexpr = K * K
    RH2: tl.constexpr = TH + 4 * R
    RW2: tl.constexpr = TW + 4 * R
    RH1: tl.constexpr = TH + 2 * R
    RW1: tl.constexpr = TW + 2 * R
    pid = tl.program_id(0)
    n_iblocks = tl.cdiv(I, BLOCK_I)

    il = tl.arange(0, BLOCK_I)
    slot = pid.to(tl.int64)
    x1_rows = sx1_ptr + slot * (BLOCK_I * BLOCK_P) + il[:, None] * BLOCK_P
    z1_rows = sz1_ptr + slot * (BLOCK_I * BLOCK_P) + il[:, None] * BLOCK_P
    g_rows = sg_ptr + slot * (M * BLOCK_I * BLOCK_P1) + il[:, None] * BLOCK_P1  # + m * BLOCK_I * BLOCK_P1

    for work in range(pid, num_work, nprog):
        n, ty0, tx0, i0 = work_item(work, n_iblocks, tiles_per_image, tiles_x, TH, TW, BLOCK_I)
        t = work // n_iblocks  # (image, tile) index: this item's row of the depthwise partial sums
        ii = i0 + il
        i_ok = ii < I
        g_img = g_ptr + image_offset(n, sgn, VEC)

        # Phase 1: z1 and x1 on the double halo, into scratch.
        tl.debug_barrier()  # WAR on the scratch slot against the previous work item
        for p0 in range(0, RH2 * RW2, SUB_P):
            z1, in_image = primary_conv_region(x_ptr + image_offset(n, sxn, XVEC), sxc, sxh, sxw, wp_ptr, bp_ptr,
                                               i0, ty0 - 2 * R, tx0 - 2 * R, p0, C, I, H, W, RH2, RW2, SUB_P, BLOCK_I,
                                               BLOCK_C, DOT_PRECISION, XVEC)
            x1 = tl.where(in_image[None, :], apply_act(z1, ACT), 0.0).to(x_ptr.dtype.element_ty)
            cols = p0 + tl.arange(0, SUB_P)[None, :]
            tl.store(x1_rows + cols, x1)
            tl.store(z1_rows + cols, z1)
        tl.debug_barrier()  # RAW: x1/z1 visible to every thread

        if CHEAP:
            part_row = t.to(tl.int64) * (I * M)
            for m in tl.static_range(M):
                j = ii * M + m
                ch = I + j
                ch_live = i_ok & (ch < OC)
                bias = tl.load(bc_ptr + j, mask=i_ok, other=0.0).to(tl.float32)
                gb = tl.zeros([BLOCK_I], dtype=tl.float32)
                # Phase 2a: gz2 on the single halo, into scratch; the bias partial over the tile's own pixels.
                for a0 in range(0, RH1 * RW1, SUB_A):
                    a = a0 + tl.arange(0, SUB_A)
                    ay = a // RW1
                    ax = a % RW1
                    a_ok = a < RH1 * RW1
                    hy = ty0 - R + ay
                    hx = tx0 - R + ax
                    a_img = a_ok & (hy >= 0) & (hy < H) & (hx >= 0) & (hx < W)
                    a_own = a_img & (ay >= R) & (ay < R + TH) & (ax >= R) & (ax < R + TW)
                    acc = tl.zeros([BLOCK_I, SUB_A], dtype=tl.float32)
                    for ey in range(K):
                        row = (ay + ey) * RW2 + ax
                        for ex in tl.static_range(K):
                            wv = tl.load(wc_ptr + j * KK + (ey * K + ex), mask=i_ok, other=0.0).to(tl.float32)
                            xs = tl.load(x1_rows + (row + ex)[None, :], mask=a_ok[None, :], other=0.0).to(tl.float32)
                            acc += wv[:, None] * xs
                    h_off = hy * sgh + hx * sgw
                    if VEC > 1:
                        h_off = tl.multiple_of(h_off, VEC)
                    go = tl.load(g_img + ch[:, None] * sgc + h_off[None, :],
                                 mask=ch_live[:, None] & a_img[None, :], other=0.0).to(tl.float32)
                    gz2 = go * act_derivative(acc + bias[:, None], ACT)
                    tl.store(g_rows + m * (BLOCK_I * BLOCK_P1) + a[None, :], gz2, mask=a_ok[None, :])
                    gb += tl.sum(tl.where(a_own[None, :], gz2, 0.0), axis=1)
                tl.store(part_bc_ptr + part_row + j, gb, mask=i_ok)
            tl.debug_barrier()  # RAW: gz2 visible to every thread

            # Phase 2b: weight partials, sum over the tile's own pixels of gz2 * shifted x1, one tap at a time.
            for m in tl.static_range(M):
                j = ii * M + m
                for tap in range(KK):
                    dy = tap // K
                    dx = tap % K
                    gw = tl.zeros([BLOCK_I], dtype=tl.float32)
                    for a0 in range(0, RH1 * RW1, SUB_A):
                        a = a0 + tl.arange(0, SUB_A)
                        ay = a // RW1
                        ax = a % RW1
                        hy = ty0 - R + ay
                        hx = tx0 - R + ax
                        a_own = ((a < RH1 * RW1) & (hy < H) & (hx < W) & (ay >= R) & (ay < R + TH) & (ax >= R)
                                 & (ax < R + TW))
                        gz2 = tl.load(g_rows + m * (BLOCK_I * BLOCK_P1) + a[None, :], mask=a_own[None, :],
                                      other=0.0)
                        xs = tl.load(x1_rows + ((ay + dy) * RW2 + ax + dx)[None, :], mask=a_own[None, :],
                                     other=0.0).to(tl.float32)
                        gw += tl.sum(gz2 * xs, axis=1)
                    tl.store(part_wc_ptr + part_row * KK + j * KK + tap, gw, mask=i_ok)

        # Phase 3: gx1 = direct gradient + transposed depthwise conv of gz2; gz1 = gx1 * act'(z1) onto the tile.
        for q0 in range(0, TH * TW, SUB_Q):
            q = q0 + tl.arange(0, SUB_Q)
            qy = q // TW
            qx = q % TW
            q_ok = q < TH * TW
            oy = ty0 + qy
            ox = tx0 + qx
            pix_ok = q_ok & (oy < H) & (ox < W)
            g_off = oy * sgh + ox * sgw
            if VEC > 1:
                g_off = tl.multiple_of(g_off, VEC)
            gx1 = tl.load(g_img + ii[:, None] * sgc + g_off[None, :],
                          mask=(i_ok & (ii < OC))[:, None] & pix_ok[None, :], other=0.0).to(tl.float32)
            if CHEAP:
                for m in tl.static_range(M):
                    j = ii * M + m
                    for fy in range(K):
                        row = (qy + 2 * R - fy) * RW1 + qx + 2 * R
                        for fx in tl.static_range(K):
                            wv = tl.load(wc_ptr + j * KK + (fy * K + fx), mask=i_ok, other=0.0).to(tl.float32)
                            gs = tl.load(g_rows + m * (BLOCK_I * BLOCK_P1) + (row - fx)[None, :], mask=q_ok[None, :],
                                         other=0.0)
                            gx1 += wv[:, None] * gs
            z1_tile = tl.load(z1_rows + ((qy + 2 * R) * RW2 + qx + 2 * R)[None, :], mask=q_ok[None, :], other=0.0)
            gz1 = gx1 * act_derivative(z1_tile, ACT)
            z_off = oy * szh + ox * szw  # computed here, not with g_off: live across the tap loops it cost registers
            if VEC > 1:
                z_off = tl.multiple_of(z_off, VEC)
            tl.store(gz1_ptr + image_offset(n, szn, VEC) + ii[:, None] * szc + z_off[None, :],
                     gz1.to(gz1_ptr.dtype.element_ty), mask=i_ok[:, None] & pix_ok[None, :])


def _pointwise_conv_grads(x, w_primary, gz1, fmt: torch.memory_format):
    """grad x = w_p^T @ gz1 and grad w_p = gz1 @ x^T over all images and pixels, as torch.matmul calls laid out
    for the memory format `fmt` that x and gz1 share (channels_last: [N*H*W, ch] rows, one GEMM each;
    contiguous: [N, ch, H*W] batches, whose per-image weight-gradient products are summed in float32)."""
    N, C, H, W = x.shape
    init = w_primary.shape[0]
    wp = w_primary.reshape(init, C)
    if fmt == torch.channels_last:
        g2 = gz1.permute(0, 2, 3, 1).reshape(N * H * W, init)
        x2 = x.permute(0, 2, 3, 1).reshape(N * H * W, C)
        grad_x = torch.matmul(g2, wp).reshape(N, H, W, C).permute(0, 3, 1, 2)
        grad_wp = torch.matmul(g2.t(), x2)
    else:
        g3 = gz1.reshape(N, init, H * W)
        x3 = x.reshape(N, C, H * W)
        grad_x = torch.matmul(wp.t(), g3).reshape(N, C, H, W)
        grad_wp = torch.matmul(g3, x3.transpose(1, 2)).sum(0, dtype=torch.float32).to(x.dtype)
    return grad_x, grad_wp.reshape(w_primary.shape)


def backward_launch_plan(grad_out, x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act_id: int,
                         grad_x_format: torch.memory_format):
    """(grid, positional args, constexpr kwargs, gz1, part_wc, part_bc) of ghost_backward_kernel; allocates the
    scratch slots, the gz1 output (in grad_x's memory format, for the GEMMs) and the per-tile partial sums."""
    N, C, H, W = (int(s) for s in x.shape)
    init = int(w_primary.shape[0])
    M = int(w_cheap.shape[0]) // init
    K = int(w_cheap.shape[-1])
    cheap = out_channels > init
    geo = configs.choose_tile(H, W, K, 2, configs.max_halo_block(K, 2))
    block_i = configs.choose_block_i(init)
    num_tiles = N * geo.tiles_per_image
    num_work = num_tiles * triton.cdiv(init, block_i)
    nprog = configs.num_programs(num_work, x.device)
    dev, dt = x.device, x.dtype
    sx1 = torch.empty((nprog, block_i, geo.BLOCK_P), dtype=dt, device=dev)
    sz1 = torch.empty((nprog, block_i, geo.BLOCK_P), dtype=torch.float32, device=dev)
    sg = torch.empty((nprog, M, block_i, geo.BLOCK_P1) if cheap else (1,), dtype=torch.float32, device=dev)
    part_wc = torch.empty((num_tiles, init * M, K * K) if cheap else (1,), dtype=torch.float32, device=dev)
    part_bc = torch.empty((num_tiles, init * M) if cheap else (1,), dtype=torch.float32, device=dev)
    gz1 = torch.empty((N, init, H, W), dtype=dt, device=dev, memory_format=grad_x_format)
    args = (x, w_primary.contiguous(), b_primary.contiguous(), w_cheap.contiguous(), b_cheap.contiguous(), grad_out,
            gz1, sx1, sz1, sg, part_wc, part_bc,
            *x.stride(), *grad_out.stride(), *gz1.stride(),
            C, init, H, W, H * W, out_channels, geo.tiles_x, geo.tiles_per_image, num_work, nprog)
    consts = dict(K=K, M=M, ACT=act_id, CHEAP=cheap, TH=geo.TH, TW=geo.TW, BLOCK_I=block_i, BLOCK_P=geo.BLOCK_P,
                  BLOCK_P1=geo.BLOCK_P1, SUB_P=configs.sub_block(geo.BLOCK_P, block_i, 16),
                  SUB_A=configs.sub_block(geo.BLOCK_P1, block_i, elems=configs.tap_chunk_elems()),
                  SUB_Q=configs.sub_block(geo.BLOCK_Q, block_i, elems=configs.tap_chunk_elems()),
                  DOT_PRECISION=configs.dot_precision(dt),
                  VEC=min(configs.tensor_vector(grad_out, out_channels), configs.tensor_vector(gz1, init)),
                  XVEC=configs.tensor_vector(x, C))
    return (nprog,), args, consts, gz1, part_wc, part_bc


def launch_backward(launcher, grad_out, x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act_id: int,
                    grad_x_format: torch.memory_format):
    """Run ghost_backward_kernel and the two GEMMs; returns (grad_x, grad_w_primary, grad_b_primary,
    grad_w_cheap, grad_b_cheap). `launcher` is wrap_triton on the GPU, the identity under the interpreter."""
    N, _, H, W = x.shape
    if N * H * W == 0:  # no pixel: every gradient is zero (grad_x is empty)
        return (torch.zeros_like(x, memory_format=grad_x_format),
                torch.zeros_like(w_primary), torch.zeros_like(b_primary), torch.zeros_like(w_cheap),
                torch.zeros_like(b_cheap))
    grid, args, consts, gz1, part_wc, part_bc = backward_launch_plan(
        grad_out, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act_id, grad_x_format)
    launcher(ghost_backward_kernel)[grid](*args, **consts)
    dt = x.dtype
    if consts["CHEAP"]:
        grad_wc = part_wc.sum(0).reshape(w_cheap.shape).to(dt)
        grad_bc = part_bc.sum(0).to(dt)
    else:
        grad_wc = torch.zeros_like(w_cheap)
        grad_bc = torch.zeros_like(b_cheap)
    grad_bp = gz1.sum((0, 2, 3), dtype=torch.float32).to(dt)
    grad_x, grad_wp = _pointwise_conv_grads(x, w_primary, gz1, grad_x_format)
    return grad_x.contiguous(memory_format=grad_x_format), grad_wp, grad_bp, grad_wc, grad_bc
