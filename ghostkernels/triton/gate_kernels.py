"""GhostNetV2's DFC attention map in Triton: ``sigmoid(dw_v(dw_h(conv1x1(avg_pool2x2(x)))))`` (ghostkernels::dfc_gate,
whose contract is in csrc/ghost_module.cpp; BatchNorms folded).

Two kernels, because the (k, 1) pass reads rows of the (1, k) pass that other programs compute:
  1. dfc_reduce_kernel, per (image, block of BLOCK_O output channels, block of BLOCK_P map pixels): each 2x2 window
     of x is averaged as it is loaded (four loads, one tile of pooled values per BLOCK_C input channels) and fed to
     tl.dot against the weights, float32 accumulation; z1 + b_reduce goes to a float32 scratch [N, O, Hg * Wg].
  2. dfc_finish_kernel, per (image and channel, block of map pixels): for each of the kv rows of the vertical tap,
     the (1, kh) conv of that row of z1 (zero outside the row: the padding of the (1, kh) conv), zero for rows
     outside the map (the (kv, 1) conv's padding), bias, weight, sum; then the sigmoid, stored in x's dtype and
     memory format (the output's strides).
The map is a quarter of the image per channel, so both passes are small next to the Ghost module they gate.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def dfc_reduce_kernel(x_ptr, w_ptr, b_ptr, z_ptr, sxn, sxc, sxh, sxw, C, O, Hg, Wg,
                      BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                      DOT_PRECISION: tl.constexpr):
    """z[n, o, p] = b[o] + sum_c w[o, c] * mean of x[n, c]'s 2x2 window at map pixel p (see the module docstring)."""
    n = tl.program_id(0)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    o_ok = o < O
    p_ok = p < Hg * Wg
    gy = p // Wg
    gx = p % Wg
    pix = (2 * gy) * sxh + (2 * gx) * sxw
    x_img = x_ptr + n.to(tl.int64) * sxn
    acc = tl.zeros([BLOCK_O, BLOCK_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        base = x_img + c[:, None] * sxc + pix[None, :]
        m = c_ok[:, None] & p_ok[None, :]
        pooled = (tl.load(base, mask=m, other=0.0).to(tl.float32) + tl.load(base + sxw, mask=m, other=0.0)
                  .to(tl.float32) + tl.load(base + sxh, mask=m, other=0.0).to(tl.float32)
                  + tl.load(base + sxh + sxw, mask=m, other=0.0).to(tl.float32)) * 0.25
        w = tl.load(w_ptr + o[:, None] * C + c[None, :], mask=o_ok[:, None] & c_ok[None, :], other=0.0)
        acc += tl.dot(w.to(tl.float32), pooled, input_precision=DOT_PRECISION)
    acc += tl.load(b_ptr + o, mask=o_ok, other=0.0).to(tl.float32)[:, None]
    tl.store(z_ptr + (n.to(tl.int64) * O + o[:, None]) * (Hg * Wg) + p[None, :], acc,
             mask=o_ok[:, None] & p_ok[None, :])


@triton.jit
def dfc_finish_kernel(z_ptr, wh_ptr, bh_ptr, wv_ptr, bv_ptr, out_ptr, son, soc, soh, sow, O, Hg, Wg,
                      KH: tl.constexpr, KV: tl.constexpr, BLOCK_P: tl.constexpr):
    """out[n, o, y, x] = sigmoid(bv + sum_dy wv[dy] * t(y + dy - KV//2, x)), t(r, x) = bh + sum_dx wh[dx] *
    z[r, x + dx - KH//2] for rows r inside the map (0 outside), z zero outside the row."""
    no = tl.program_id(0)
    n = no // O
    o = no % O
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < Hg * Wg
    gy = p // Wg
    gx = p % Wg
    z_plane = z_ptr + no.to(tl.int64) * (Hg * Wg)
    bh = tl.load(bh_ptr + o).to(tl.float32)
    acc = tl.zeros([BLOCK_P], dtype=tl.float32) + tl.load(bv_ptr + o).to(tl.float32)
    for dy in tl.static_range(KV):
        r = gy + (dy - KV // 2)
        row_ok = p_ok & (r >= 0) & (r < Hg)
        t = tl.zeros([BLOCK_P], dtype=tl.float32) + bh
        for dx in tl.static_range(KH):
            col = gx + (dx - KH // 2)
            m = row_ok & (col >= 0) & (col < Wg)
            t += tl.load(wh_ptr + o * KH + dx).to(tl.float32) * tl.load(z_plane + r * Wg + col, mask=m, other=0.0)
        acc += tl.load(wv_ptr + o * KV + dy).to(tl.float32) * tl.where(row_ok, t, 0.0)
    gate = 1.0 / (1.0 + tl.exp(-acc))
    tl.store(out_ptr + n.to(tl.int64) * son + o * soc + gy * soh + gx * sow, gate.to(out_ptr.dtype.element_ty),
             mask=p_ok)


def dfc_gate_launch_plans(x, w_reduce, b_reduce, w_h, b_h, w_v, b_v, out, dot_precision: str):
    """[(kernel, grid, positional args, constexpr kwargs)] of the two kernels writing into ``out`` ([N, O, H // 2,
    W // 2], already allocated in the output memory format); allocates the float32 scratch between them."""
    N, C = int(x.shape[0]), int(x.shape[1])
    O, Hg, Wg = int(out.shape[1]), int(out.shape[2]), int(out.shape[3])
    z = torch.empty((N, O, Hg * Wg), dtype=torch.float32, device=x.device)
    block_o = 16 if O <= 16 else 32
    block_p = min(64, max(16, triton.next_power_of_2(Hg * Wg)))
    finish_p = min(256, max(16, triton.next_power_of_2(Hg * Wg)))
    reduce = (dfc_reduce_kernel, (N, triton.cdiv(O, block_o), triton.cdiv(Hg * Wg, block_p)),
              (x, w_reduce.reshape(O, C).contiguous(), b_reduce.contiguous(), z, *x.stride(), C, O, Hg, Wg),
              dict(BLOCK_O=block_o, BLOCK_P=block_p, BLOCK_C=16, DOT_PRECISION=dot_precision))
    finish = (dfc_finish_kernel, (N * O, triton.cdiv(Hg * Wg, finish_p)),
              (z, w_h.reshape(O, -1).contiguous(), b_h.contiguous(), w_v.reshape(O, -1).contiguous(),
               b_v.contiguous(), out, *out.stride(), O, Hg, Wg),
              dict(KH=int(w_h.shape[-1]), KV=int(w_v.shape[-2]), BLOCK_P=finish_p))
    return [reduce, finish]


def launch_dfc_gate(launcher, x, w_reduce, b_reduce, w_h, b_h, w_v, b_v, out, dot_precision: str):
    """Run both kernels into ``out``."""
    if out.numel() == 0:
        return out
    for kernel, grid, args, consts in dfc_gate_launch_plans(x, w_reduce, b_reduce, w_h, b_h, w_v, b_v, out,
                                                            dot_precision):
        launcher(kernel)[grid](*args, **consts)
    return out
