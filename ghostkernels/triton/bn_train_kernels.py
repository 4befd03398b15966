"""Triton kernels of the five train-mode BatchNorm passes of ghostkernels::ghost_module_bn_train (the schemas and their
math: csrc/ghost_module.cpp; the composition: ghostkernels/ops/train_bn.py; the design: bench/NOTES.md entry 40).

Every kernel has the same work item: one image n, a block of BLOCK_P consecutive pixels of it (flattened row-major,
so a block may span rows and the last one is partial) and a block of BLOCK_I primary channels i with their cheap
channels j = i*M + m (M = ratio - 1). The grid is (images x pixel blocks, channel blocks); the item's row t = n *
n_pblocks + pixel block indexes the per-item partial results. Tensors are read and written through their strides,
so NCHW, channels_last and strided views all work; offsets inside an image are 32-bit (op.py checks the span).

Numerics, common to all kernels:
* Everything after z1 is float32: z1 is read in its dtype (rounded as pass 1 stored it, so the statistics describe
  exactly the values the later passes normalize) and converted; x1 = act(BN1(z1)) is never rounded to the 16-bit
  dtype (as the CPU kernels: the depthwise conv reads float x1).
* Statistics are per-item (count, mean, M2) with the item's own mean subtracted before squaring (two passes over
  registers), Chan-combined over items on the host in float64 (chan_combine): never E[z^2] - E[z]^2, which in
  float32 loses the whole variance once |mean| / std is above ~3000 and much of it well before.
* Sums are per-item float32 tree sums (tl.sum), summed over items on the host in float64 in a fixed order
  (torch.sum of the partials tensor): deterministic, no atomics.
* x1 and the depthwise output outside the image are zero (the depthwise conv zero-pads x1, post-activation), and
  act(BN1(0)) is not zero in general, so every shifted read is masked and its x1 forced to 0 there.
* The depthwise taps re-read z1 from global memory at shifted positions (L1/L2 hits: the item's z1 window is small)
  and recompute BN1 and the activation per tap, instead of staging x1 in scratch: no barriers, no scratch, at the
  cost of k*k evaluations of the activation per output (cheap next to the loads for relu/hardswish; silu pays exp).
"""

import torch
import triton
import triton.language as tl

from .tile_math import act_derivative, apply_act


@triton.jit
def _pixels(t, n_pblocks, HW, W, BLOCK_P: tl.constexpr):
    """(image n, pixel indices p, their rows py and columns px, p < H*W, number of pixels of the item as float32)."""
    n = t // n_pblocks
    p0 = (t % n_pblocks) * BLOCK_P
    p = p0 + tl.arange(0, BLOCK_P)
    count = tl.minimum(HW - p0, BLOCK_P).to(tl.float32)
    return n, p, p // W, p % W, p < HW, count


@triton.jit
def _moments(v, ok, count):
    """(mean, M2) per row of v [rows, BLOCK_P] over the columns where ok: the item's mean first, then the sum of
    squared deviations from it (a two-pass moment in registers, exact up to rounding whatever the mean)."""
    mean = tl.sum(tl.where(ok[None, :], v, 0.0), axis=1) / count
    d = tl.where(ok[None, :], v - mean[:, None], 0.0)
    return mean, tl.sum(d * d, axis=1)


@triton.jit
def _stage(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, c, c_ok):
    """One BN stage's per-channel vectors (float32) for channels c."""
    return (tl.load(mean_ptr + c, mask=c_ok, other=0.0), tl.load(invstd_ptr + c, mask=c_ok, other=0.0),
            tl.load(weight_ptr + c, mask=c_ok, other=0.0), tl.load(bias_ptr + c, mask=c_ok, other=0.0))


@triton.jit
def _bn1_at(z_img, szc, szh, szw, ii, i_ok, yy, xx, ok, mean1, invstd1, weight1, bias1):
    """(xhat1, y1) of primary channels ii at pixels (yy, xx) where ok (0 elsewhere, which the caller masks)."""
    z = tl.load(z_img + ii[:, None] * szc + (yy * szh + xx * szw)[None, :], mask=i_ok[:, None] & ok[None, :],
                other=0.0).to(tl.float32)
    xh = (z - mean1[:, None]) * invstd1[:, None]
    return xh, weight1[:, None] * xh + bias1[:, None]


@triton.jit
def _depthwise(z_img, szc, szh, szw, wc_ptr, ii, i_ok, j, py, px, p_ok, H, W, mean1, invstd1, weight1, bias1,
               K: tl.constexpr, ACT: tl.constexpr, DERIV: tl.constexpr, BLOCK_I: tl.constexpr,
               BLOCK_P: tl.constexpr):
    """z2 = dwconv(x1_i, w_cheap[j]) (no bias) at pixels (py, px) for cheap channels j of primary channels ii, and
    with DERIV the same convolution of a1 = act'(y1) (da) and of a1 * xhat1 (dq): backward_reduce's stencils.
    z2[y, x] = sum_{dy, dx} w[j, dy, dx] * x1[y + dy - K//2, x + dx - K//2], x1 zero outside the image."""
    R: tl.constexpr = K // 2
    z2 = tl.zeros([BLOCK_I, BLOCK_P], dtype=tl.float32)
    da = tl.zeros([BLOCK_I, BLOCK_P], dtype=tl.float32)
    dq = tl.zeros([BLOCK_I, BLOCK_P], dtype=tl.float32)
    for dy in range(K):
        yy = py + (dy - R)
        row_ok = p_ok & (yy >= 0) & (yy < H)
        for dx in tl.static_range(K):
            xx = px + (dx - R)
            ok = row_ok & (xx >= 0) & (xx < W)
            wv = tl.load(wc_ptr + j * (K * K) + (dy * K + dx), mask=i_ok, other=0.0)[:, None]
            xh, y = _bn1_at(z_img, szc, szh, szw, ii, i_ok, yy, xx, ok, mean1, invstd1, weight1, bias1)
            z2 += wv * tl.where(ok[None, :], apply_act(y, ACT), 0.0)
            if DERIV:
                a = tl.where(ok[None, :], act_derivative(y, ACT), 0.0)
                da += wv * a
                dq += wv * (a * xh)
    return z2, da, dq


@triton.jit
def bn_conv1x1_stats_kernel(x_ptr, w_ptr, z1_ptr, part_mean_ptr, part_m2_ptr,
                            sxn, sxc, sxh, sxw, szn, szc, szh, szw, C, I, H, W, n_pblocks,
                            BLOCK_I: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                            DOT_PRECISION: tl.constexpr):
    """Pass 1: z1 = w_primary @ x on the item (tl.dot, float32 inputs and accumulation: the weights are float32,
    the stats dtype, and are not rounded to x's dtype; DOT_PRECISION "ieee" unless torch allows TF32 for
    convolutions), rounded to z1's dtype and stored; then the item's (mean, M2) per channel of z1 *as stored*
    (the rounded values: the statistics must describe exactly what the later passes normalize)."""
    t = tl.program_id(0)
    n, p, py, px, p_ok, count = _pixels(t, n_pblocks, H * W, W, BLOCK_P)
    ii = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = ii < I
    x_img = x_ptr + n.to(tl.int64) * sxn
    pix = py * sxh + px * sxw
    acc = tl.zeros([BLOCK_I, BLOCK_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        c_ok = cc < C
        xt = tl.load(x_img + cc[:, None] * sxc + pix[None, :], mask=c_ok[:, None] & p_ok[None, :],
                     other=0.0).to(tl.float32)
        wt = tl.load(w_ptr + ii[:, None] * C + cc[None, :], mask=i_ok[:, None] & c_ok[None, :], other=0.0)
        acc = tl.dot(wt, xt, acc, input_precision=DOT_PRECISION)
    z = acc.to(z1_ptr.dtype.element_ty)
    tl.store(z1_ptr + n.to(tl.int64) * szn + ii[:, None] * szc + (py * szh + px * szw)[None, :], z,
             mask=i_ok[:, None] & p_ok[None, :])
    mean, m2 = _moments(z.to(tl.float32), p_ok, count)
    tl.store(part_mean_ptr + t.to(tl.int64) * I + ii, mean, mask=i_ok)
    tl.store(part_m2_ptr + t.to(tl.int64) * I + ii, m2, mask=i_ok)


@triton.jit
def bn_cheap_stats_kernel(z1_ptr, m1_ptr, s1_ptr, g1_ptr, b1_ptr, wc_ptr, part_mean_ptr, part_m2_ptr,
                          szn, szc, szh, szw, I, H, W, n_pblocks,
                          K: tl.constexpr, M: tl.constexpr, ACT: tl.constexpr, BLOCK_I: tl.constexpr,
                          BLOCK_P: tl.constexpr):
    """Pass 2: the item's (mean, M2) of z2_j = dwconv(x1_i, w_cheap[j]) for every cheap channel (the ones the
    output slice drops included: their running statistics are updated too), x1 = act(BN1(z1)) recomputed with its
    halo of K//2 pixels (see _depthwise)."""
    t = tl.program_id(0)
    n, p, py, px, p_ok, count = _pixels(t, n_pblocks, H * W, W, BLOCK_P)
    ii = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = ii < I
    mean1, invstd1, weight1, bias1 = _stage(m1_ptr, s1_ptr, g1_ptr, b1_ptr, ii, i_ok)
    z_img = z1_ptr + n.to(tl.int64) * szn
    for m in tl.static_range(M):
        j = ii * M + m
        z2, _, _ = _depthwise(z_img, szc, szh, szw, wc_ptr, ii, i_ok, j, py, px, p_ok, H, W, mean1, invstd1,
                              weight1, bias1, K, ACT, False, BLOCK_I, BLOCK_P)
        mean, m2 = _moments(z2, p_ok, count)
        tl.store(part_mean_ptr + t.to(tl.int64) * (I * M) + j, mean, mask=i_ok)
        tl.store(part_m2_ptr + t.to(tl.int64) * (I * M) + j, m2, mask=i_ok)


@triton.jit
def bn_forward_out_kernel(z1_ptr, m1_ptr, s1_ptr, g1_ptr, b1_ptr, wc_ptr, m2_ptr, s2_ptr, g2_ptr, b2_ptr, out_ptr,
                          szn, szc, szh, szw, son, soc, soh, sow, I, H, W, OC, n_pblocks,
                          K: tl.constexpr, M: tl.constexpr, ACT: tl.constexpr, CHEAP: tl.constexpr,
                          BLOCK_I: tl.constexpr, BLOCK_P: tl.constexpr):
    """Pass 3: out[:, i] = x1_i = act(BN1(z1_i)) for i < OC, out[:, I + j] = act(BN2(z2_j)) for I + j < OC, in
    out's dtype (rounded once, from float32). CHEAP = OC > I (else the depthwise half is compiled out)."""
    t = tl.program_id(0)
    n, p, py, px, p_ok, count = _pixels(t, n_pblocks, H * W, W, BLOCK_P)
    ii = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = ii < I
    mean1, invstd1, weight1, bias1 = _stage(m1_ptr, s1_ptr, g1_ptr, b1_ptr, ii, i_ok)
    z_img = z1_ptr + n.to(tl.int64) * szn
    o_img = out_ptr + n.to(tl.int64) * son
    o_pix = (py * soh + px * sow)[None, :]
    _, y1 = _bn1_at(z_img, szc, szh, szw, ii, i_ok, py, px, p_ok, mean1, invstd1, weight1, bias1)
    tl.store(o_img + ii[:, None] * soc + o_pix, apply_act(y1, ACT).to(out_ptr.dtype.element_ty),
             mask=(i_ok & (ii < OC))[:, None] & p_ok[None, :])
    if CHEAP:
        for m in tl.static_range(M):
            j = ii * M + m
            z2, _, _ = _depthwise(z_img, szc, szh, szw, wc_ptr, ii, i_ok, j, py, px, p_ok, H, W, mean1, invstd1,
                                  weight1, bias1, K, ACT, False, BLOCK_I, BLOCK_P)
            mean2, invstd2, weight2, bias2 = _stage(m2_ptr, s2_ptr, g2_ptr, b2_ptr, j, i_ok)
            y2 = weight2[:, None] * ((z2 - mean2[:, None]) * invstd2[:, None]) + bias2[:, None]
            ch = I + j
            tl.store(o_img + ch[:, None] * soc + o_pix, apply_act(y2, ACT).to(out_ptr.dtype.element_ty),
                     mask=(i_ok & (ch < OC))[:, None] & p_ok[None, :])


@triton.jit
def bn_backward_reduce_kernel(go_ptr, z1_ptr, m1_ptr, s1_ptr, g1_ptr, b1_ptr, wc_ptr, m2_ptr, s2_ptr, g2_ptr, b2_ptr,
                              part_p_ptr, part_c_ptr, sgn, sgc, sgh, sgw, szn, szc, szh, szw, I, H, W, OC,
                              n_pblocks, K: tl.constexpr, M: tl.constexpr, ACT: tl.constexpr, CHEAP: tl.constexpr,
                              BLOCK_I: tl.constexpr, BLOCK_P: tl.constexpr):
    """Backward pass 1: the item's share of the per-channel sums of ghost_bn_backward_reduce's schema, into
    part_p [items, 2, I] and part_c [items, 8, I*M]:
      a1 = act'(y1): sum(a1 * go_i), sum(a1 * xhat1 * go_i)                                     (i < OC, else 0)
      g2 = go_{I+j} * act'(y2), da = dwconv(a1), dq = dwconv(a1 * xhat1):
      sum(g2), sum(g2 * xhat2), sum(da * g2), sum(da), sum(da * xhat2), sum(dq * g2), sum(dq), sum(dq * xhat2)
                                                                                             (I + j < OC, else 0)
    Pitfall: these are raw (uncentred) sums, combined by train_bn.backward into means that are differences of
    terms of similar size; they are float32 tree sums per item, and float64 across items (the host)."""
    t = tl.program_id(0)
    n, p, py, px, p_ok, count = _pixels(t, n_pblocks, H * W, W, BLOCK_P)
    ii = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = ii < I
    mean1, invstd1, weight1, bias1 = _stage(m1_ptr, s1_ptr, g1_ptr, b1_ptr, ii, i_ok)
    z_img = z1_ptr + n.to(tl.int64) * szn
    g_img = go_ptr + n.to(tl.int64) * sgn
    g_pix = (py * sgh + px * sgw)[None, :]
    xh1, y1 = _bn1_at(z_img, szc, szh, szw, ii, i_ok, py, px, p_ok, mean1, invstd1, weight1, bias1)
    kept = (i_ok & (ii < OC))[:, None] & p_ok[None, :]
    go = tl.load(g_img + ii[:, None] * sgc + g_pix, mask=kept, other=0.0).to(tl.float32)
    a1go = tl.where(kept, act_derivative(y1, ACT) * go, 0.0)
    row_p = part_p_ptr + t.to(tl.int64) * (2 * I)
    tl.store(row_p + ii, tl.sum(a1go, axis=1), mask=i_ok)
    tl.store(row_p + I + ii, tl.sum(a1go * xh1, axis=1), mask=i_ok)
    if CHEAP:
        IM = I * M
        row_c = part_c_ptr + t.to(tl.int64) * (8 * IM)
        for m in tl.static_range(M):
            j = ii * M + m
            ch = I + j
            live = (i_ok & (ch < OC))[:, None] & p_ok[None, :]
            z2, da, dq = _depthwise(z_img, szc, szh, szw, wc_ptr, ii, i_ok, j, py, px, p_ok, H, W, mean1, invstd1,
                                    weight1, bias1, K, ACT, True, BLOCK_I, BLOCK_P)
            mean2, invstd2, weight2, bias2 = _stage(m2_ptr, s2_ptr, g2_ptr, b2_ptr, j, i_ok)
            xh2 = (z2 - mean2[:, None]) * invstd2[:, None]
            go2 = tl.load(g_img + ch[:, None] * sgc + g_pix, mask=live, other=0.0).to(tl.float32)
            g2 = tl.where(live, go2 * act_derivative(weight2[:, None] * xh2 + bias2[:, None], ACT), 0.0)
            da = tl.where(live, da, 0.0)
            dq = tl.where(live, dq, 0.0)
            xh2 = tl.where(live, xh2, 0.0)
            tl.store(row_c + 0 * IM + j, tl.sum(g2, axis=1), mask=i_ok)
            tl.store(row_c + 1 * IM + j, tl.sum(g2 * xh2, axis=1), mask=i_ok)
            tl.store(row_c + 2 * IM + j, tl.sum(da * g2, axis=1), mask=i_ok)
            tl.store(row_c + 3 * IM + j, tl.sum(da, axis=1), mask=i_ok)
            tl.store(row_c + 4 * IM + j, tl.sum(da * xh2, axis=1), mask=i_ok)
            tl.store(row_c + 5 * IM + j, tl.sum(dq * g2, axis=1), mask=i_ok)
            tl.store(row_c + 6 * IM + j, tl.sum(dq, axis=1), mask=i_ok)
            tl.store(row_c + 7 * IM + j, tl.sum(dq * xh2, axis=1), mask=i_ok)


@triton.jit
def bn_backward_dz2_kernel(go_ptr, z1_ptr, m1_ptr, s1_ptr, g1_ptr, b1_ptr, wc_ptr, m2_ptr, s2_ptr, g2_ptr, b2_ptr,
                           mdy2_ptr, mdyx2_ptr, dz2_ptr, part_wc_ptr, sgn, sgc, sgh, sgw, szn, szc, szh, szw,
                           I, H, W, OC, n_pblocks, K: tl.constexpr, M: tl.constexpr, ACT: tl.constexpr,
                           BLOCK_I: tl.constexpr, BLOCK_P: tl.constexpr):
    """Backward pass 2, first half (only when OC > I): per cheap channel j with I + j < OC (0 for the others)
      dz2 = invstd2 * weight2 * (g2 - mean_dy_cheap - xhat2 * mean_dy_xhat_cheap),  g2 = go_{I+j} * act'(y2),
    stored in float32 to dz2 [N, I*M, H, W] (contiguous) for the transposed depthwise conv of the second half, and
    the item's share of grad w_cheap[j, dy, dx] = sum dz2[y, x] * x1[y + dy - K//2, x + dx - K//2] into part_wc
    [items, I*M, K*K] (each pixel in exactly one item, so the host's sum over items counts it once).
    Pitfall: the mean_dy terms make dz2 a difference of terms of the size of g2; it stays float32 throughout."""
    R: tl.constexpr = K // 2
    t = tl.program_id(0)
    n, p, py, px, p_ok, count = _pixels(t, n_pblocks, H * W, W, BLOCK_P)
    ii = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = ii < I
    mean1, invstd1, weight1, bias1 = _stage(m1_ptr, s1_ptr, g1_ptr, b1_ptr, ii, i_ok)
    z_img = z1_ptr + n.to(tl.int64) * szn
    g_img = go_ptr + n.to(tl.int64) * sgn
    HW = H * W
    IM = I * M
    for m in tl.static_range(M):
        j = ii * M + m
        ch = I + j
        live = (i_ok & (ch < OC))[:, None] & p_ok[None, :]
        z2, _, _ = _depthwise(z_img, szc, szh, szw, wc_ptr, ii, i_ok, j, py, px, p_ok, H, W, mean1, invstd1,
                              weight1, bias1, K, ACT, False, BLOCK_I, BLOCK_P)
        mean2, invstd2, weight2, bias2 = _stage(m2_ptr, s2_ptr, g2_ptr, b2_ptr, j, i_ok)
        xh2 = (z2 - mean2[:, None]) * invstd2[:, None]
        go2 = tl.load(g_img + ch[:, None] * sgc + (py * sgh + px * sgw)[None, :], mask=live, other=0.0)
        g2 = go2.to(tl.float32) * act_derivative(weight2[:, None] * xh2 + bias2[:, None], ACT)
        mdy2 = tl.load(mdy2_ptr + j, mask=i_ok, other=0.0)
        mdyx2 = tl.load(mdyx2_ptr + j, mask=i_ok, other=0.0)
        dz2 = (invstd2 * weight2)[:, None] * (g2 - mdy2[:, None] - xh2 * mdyx2[:, None])
        dz2 = tl.where(live, dz2, 0.0)
        tl.store(dz2_ptr + (n.to(tl.int64) * IM + j[:, None]) * HW + p[None, :], dz2,
                 mask=i_ok[:, None] & p_ok[None, :])
        for dy in range(K):
            yy = py + (dy - R)
            row_ok = p_ok & (yy >= 0) & (yy < H)
            for dx in tl.static_range(K):
                xx = px + (dx - R)
                ok = row_ok & (xx >= 0) & (xx < W)
                _, y = _bn1_at(z_img, szc, szh, szw, ii, i_ok, yy, xx, ok, mean1, invstd1, weight1, bias1)
                x1 = tl.where(ok[None, :], apply_act(y, ACT), 0.0)
                tl.store(part_wc_ptr + (t.to(tl.int64) * IM + j) * (K * K) + (dy * K + dx), tl.sum(dz2 * x1, axis=1),
                         mask=i_ok)


@triton.jit
def bn_backward_dz1_kernel(go_ptr, z1_ptr, m1_ptr, s1_ptr, g1_ptr, b1_ptr, wc_ptr, mdy1_ptr, mdyx1_ptr, dz2_ptr,
                           dz1_ptr, sgn, sgc, sgh, sgw, szn, szc, szh, szw, sdn, sdc, sdh, sdw, I, H, W, OC, n_pblocks,
                           K: tl.constexpr, M: tl.constexpr, ACT: tl.constexpr, CHEAP: tl.constexpr,
                           BLOCK_I: tl.constexpr, BLOCK_P: tl.constexpr):
    """Backward pass 2, second half: per primary channel i
      g1 = go_i (i < OC, else 0) + sum_m sum_{fy, fx} w_cheap[j, fy, fx] * dz2_j[y - fy + K//2, x - fx + K//2]
           (the transposed depthwise conv, dz2 zero outside the image),
      dz1 = invstd1 * weight1 * (g1 * act'(y1) - mean_dy_primary - xhat1 * mean_dy_xhat_primary),
    stored in float32 to dz1 (strides sd*), from which the host's GEMMs give grad x = w_primary^T dz1 and grad
    w_primary = dz1 x^T."""
    R: tl.constexpr = K // 2
    t = tl.program_id(0)
    n, p, py, px, p_ok, count = _pixels(t, n_pblocks, H * W, W, BLOCK_P)
    ii = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = ii < I
    ok2 = i_ok[:, None] & p_ok[None, :]
    mean1, invstd1, weight1, bias1 = _stage(m1_ptr, s1_ptr, g1_ptr, b1_ptr, ii, i_ok)
    g = tl.load(go_ptr + n.to(tl.int64) * sgn + ii[:, None] * sgc + (py * sgh + px * sgw)[None, :],
                mask=(i_ok & (ii < OC))[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
    if CHEAP:
        HW = H * W
        for m in tl.static_range(M):
            j = ii * M + m
            plane = dz2_ptr + (n.to(tl.int64) * (I * M) + j[:, None]) * HW
            for fy in range(K):
                yy = py + (R - fy)
                row_ok = p_ok & (yy >= 0) & (yy < H)
                for fx in tl.static_range(K):
                    xx = px + (R - fx)
                    ok = row_ok & (xx >= 0) & (xx < W)
                    wv = tl.load(wc_ptr + j * (K * K) + (fy * K + fx), mask=i_ok, other=0.0)
                    g += wv[:, None] * tl.load(plane + (yy * W + xx)[None, :], mask=i_ok[:, None] & ok[None, :],
                                               other=0.0)
    xh1, y1 = _bn1_at(z1_ptr + n.to(tl.int64) * szn, szc, szh, szw, ii, i_ok, py, px, p_ok, mean1, invstd1, weight1,
                      bias1)
    mdy1 = tl.load(mdy1_ptr + ii, mask=i_ok, other=0.0)
    mdyx1 = tl.load(mdyx1_ptr + ii, mask=i_ok, other=0.0)
    dz1 = (invstd1 * weight1)[:, None] * (g * act_derivative(y1, ACT) - mdy1[:, None] - xh1 * mdyx1[:, None])
    tl.store(dz1_ptr + n.to(tl.int64) * sdn + ii[:, None] * sdc + (py * sdh + px * sdw)[None, :], dz1, mask=ok2)


# ---------------------------------------------------------------------------------------------------------------
# Host side: geometry, launches, and the deterministic reductions of the partials
# ---------------------------------------------------------------------------------------------------------------


def block_p(hw: int, interpreting: bool) -> int:
    """Pixels per item. On the GPU 64: [32, 64] float32 tiles, 16 values per thread and tensor at 4 warps, with
    _depthwise's three accumulators and a tap's temporaries live at once; compile_check for sm_90 (4 warps) gives
    106-160 registers for k = 3, ratio 2, float16 and up to 255 for k = 5, ratio 3, bfloat16, without spills (at 32
    pixels ptxas capped backward_reduce at 128 registers and spilled 8 bytes). Under the interpreter 16, so that test
    images of 20-60 pixels span several items and end in a partial one. tl.dot (pass 1) needs >= 16."""
    cap = 16 if interpreting else 64
    return max(16, min(cap, triton.next_power_of_2(max(1, hw))))


class Geometry:
    """The grid of one call: items (images x pixel blocks) by channel blocks."""

    def __init__(self, n: int, h: int, w: int, init: int, block_i: int, interpreting: bool):
        self.hw = h * w
        self.BLOCK_P = block_p(self.hw, interpreting)
        self.BLOCK_I = block_i
        self.n_pblocks = triton.cdiv(self.hw, self.BLOCK_P)
        self.items = n * self.n_pblocks
        self.grid = (self.items, triton.cdiv(init, block_i))

    def counts(self, device) -> torch.Tensor:
        """[items] float64: the number of pixels of each item (the last block of an image may be partial)."""
        per_block = torch.full((self.n_pblocks,), float(self.BLOCK_P), dtype=torch.float64)
        per_block[-1] = float(self.hw - (self.n_pblocks - 1) * self.BLOCK_P)
        return per_block.repeat(self.items // self.n_pblocks).to(device)


def chan_combine(counts: torch.Tensor, means: torch.Tensor, m2: torch.Tensor):
    """(mean, biased var) in float32 from per-item counts [items] and (mean, M2) [items, channels]: Chan's parallel
    combination, in float64 and one fixed reduction order (torch.sum), so the result is deterministic:
    mean = sum(n_b m_b) / n, M2 = sum(M2_b) + sum(n_b (m_b - mean)^2). Every term is a centred quantity, so a large
    common mean costs no precision (unlike sum(z^2)/n - mean^2)."""
    c = counts[:, None]
    total = counts.sum()
    mb = means.double()
    mean = (c * mb).sum(0) / total
    m2_total = m2.double().sum(0) + (c * (mb - mean) ** 2).sum(0)
    return mean.float(), (m2_total / total).float()


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def _stage_args(*vectors):
    return tuple(_f32(v) for v in vectors)


def conv1x1_stats(launcher, x, w_primary, block_i: int, interpreting: bool, dot_precision: str, z1):
    """Pass 1 into z1 (allocated by the caller in x's output memory format); returns (mean, var)."""
    n, c, h, w = (int(s) for s in x.shape)
    init = int(w_primary.shape[0])
    geo = Geometry(n, h, w, init, block_i, interpreting)
    part_mean = torch.empty((geo.items, init), dtype=torch.float32, device=x.device)
    part_m2 = torch.empty_like(part_mean)
    launcher(bn_conv1x1_stats_kernel)[geo.grid](
        x, _f32(w_primary.reshape(init, c)), z1, part_mean, part_m2, *x.stride(), *z1.stride(), c, init, h, w,
        geo.n_pblocks, BLOCK_I=block_i, BLOCK_P=geo.BLOCK_P, BLOCK_C=16, DOT_PRECISION=dot_precision)
    return chan_combine(geo.counts(x.device), part_mean, part_m2)


def cheap_stats(launcher, z1, stage1, w_cheap, act_id: int, block_i: int, interpreting: bool):
    """Pass 2: (mean, var) of every cheap channel's depthwise output."""
    n, init, h, w = (int(s) for s in z1.shape)
    mult = int(w_cheap.shape[0]) // init
    geo = Geometry(n, h, w, init, block_i, interpreting)
    part_mean = torch.empty((geo.items, init * mult), dtype=torch.float32, device=z1.device)
    part_m2 = torch.empty_like(part_mean)
    launcher(bn_cheap_stats_kernel)[geo.grid](
        z1, *_stage_args(*stage1), _f32(w_cheap), part_mean, part_m2, *z1.stride(), init, h, w, geo.n_pblocks,
        K=int(w_cheap.shape[-1]), M=mult, ACT=act_id, BLOCK_I=block_i, BLOCK_P=geo.BLOCK_P)
    return chan_combine(geo.counts(z1.device), part_mean, part_m2)


def forward_out(launcher, z1, stage1, w_cheap, stage2, out, act_id: int, block_i: int, interpreting: bool):
    """Pass 3 into out (allocated by the caller: [N, out_channels, H, W], z1's output memory format)."""
    n, init, h, w = (int(s) for s in z1.shape)
    oc = int(out.shape[1])
    geo = Geometry(n, h, w, init, block_i, interpreting)
    launcher(bn_forward_out_kernel)[geo.grid](
        z1, *_stage_args(*stage1), _f32(w_cheap), *_stage_args(*stage2), out, *z1.stride(), *out.stride(), init, h, w,
        oc, geo.n_pblocks, K=int(w_cheap.shape[-1]), M=int(w_cheap.shape[0]) // init, ACT=act_id, CHEAP=oc > init,
        BLOCK_I=block_i, BLOCK_P=geo.BLOCK_P)
    return out


def backward_reduce(launcher, grad_out, z1, stage1, w_cheap, stage2, act_id: int, block_i: int,
                    interpreting: bool):
    """Backward pass 1: (sums_primary [2, init], sums_cheap [8, init*M]) float32, from float64 sums of the items'
    float32 partial sums."""
    n, init, h, w = (int(s) for s in z1.shape)
    oc, mult = int(grad_out.shape[1]), int(w_cheap.shape[0]) // init
    geo = Geometry(n, h, w, init, block_i, interpreting)
    cheap = oc > init
    part_p = torch.empty((geo.items, 2, init), dtype=torch.float32, device=z1.device)
    part_c = torch.empty((geo.items, 8, init * mult) if cheap else (1,), dtype=torch.float32, device=z1.device)
    launcher(bn_backward_reduce_kernel)[geo.grid](
        grad_out, z1, *_stage_args(*stage1), _f32(w_cheap), *_stage_args(*stage2), part_p, part_c,
        *grad_out.stride(), *z1.stride(), init, h, w, oc, geo.n_pblocks, K=int(w_cheap.shape[-1]), M=mult,
        ACT=act_id, CHEAP=cheap, BLOCK_I=block_i, BLOCK_P=geo.BLOCK_P)
    sums_p = part_p.sum(0, dtype=torch.float64).float()
    if not cheap:  # every cheap channel is past the slice: its sums are zero by definition
        return sums_p, torch.zeros((8, init * mult), dtype=torch.float32, device=z1.device)
    return sums_p, part_c.sum(0, dtype=torch.float64).float()


def backward(launcher, grad_out, x, z1, w_primary, stage1, mdy1, mdyx1, w_cheap, stage2, mdy2, mdyx2, act_id: int,
             block_i: int, interpreting: bool, grad_x_format: torch.memory_format):
    """Backward pass 2: (grad_x in x's dtype and grad_x_format, grad_w_primary and grad_w_cheap in float32). The two
    kernels give dz2 (and grad w_cheap's partials) and dz1, in float32; the 1x1 conv's two GEMMs are torch.matmul in
    float32 (x converted for 16-bit x), laid out for grad_x_format as the Ghost-module backward does."""
    from .backward_kernels import _pointwise_conv_grads

    n, c, h, w = (int(s) for s in x.shape)
    init = int(w_primary.shape[0])
    oc, mult, k = int(grad_out.shape[1]), int(w_cheap.shape[0]) // init, int(w_cheap.shape[-1])
    geo = Geometry(n, h, w, init, block_i, interpreting)
    cheap = oc > init
    dev = x.device
    wc = _f32(w_cheap)
    s1, s2 = _stage_args(*stage1), _stage_args(*stage2)
    dz2 = torch.empty((n, init * mult, h, w) if cheap else (1,), dtype=torch.float32, device=dev)
    if cheap:
        part_wc = torch.empty((geo.items, init * mult, k * k), dtype=torch.float32, device=dev)
        launcher(bn_backward_dz2_kernel)[geo.grid](
            grad_out, z1, *s1, wc, *s2, _f32(mdy2), _f32(mdyx2), dz2, part_wc, *grad_out.stride(), *z1.stride(),
            init, h, w, oc, geo.n_pblocks, K=k, M=mult, ACT=act_id, BLOCK_I=block_i, BLOCK_P=geo.BLOCK_P)
        grad_wc = part_wc.sum(0, dtype=torch.float64).float().reshape(w_cheap.shape)
    else:
        grad_wc = torch.zeros(w_cheap.shape, dtype=torch.float32, device=dev)
    dz1 = torch.empty((n, init, h, w), dtype=torch.float32, device=dev, memory_format=grad_x_format)
    launcher(bn_backward_dz1_kernel)[geo.grid](
        grad_out, z1, *s1, wc, _f32(mdy1), _f32(mdyx1), dz2, dz1, *grad_out.stride(), *z1.stride(), *dz1.stride(),
        init, h, w, oc, geo.n_pblocks, K=k, M=mult, ACT=act_id, CHEAP=cheap, BLOCK_I=block_i, BLOCK_P=geo.BLOCK_P)
    grad_x, grad_wp = _pointwise_conv_grads(x.to(torch.float32), _f32(w_primary), dz1, grad_x_format)
    return grad_x.to(x.dtype).contiguous(memory_format=grad_x_format), grad_wp, grad_wc
