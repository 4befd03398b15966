"""The fused forward kernel: out = cat(x1, x2)[:, :OC] in one pass over x.

Work item = (image n, spatial tile, block of BLOCK_I primary channels), with the channel block varying fastest so
that the programs running at the same time read the same x tile (the re-reads hit L2). The grid is persistent:
each program loops over work items and owns one scratch slot of BLOCK_I x BLOCK_P elements for the whole launch.

Per work item:
  1. z1 = w_primary @ x + b_primary on the tile plus a halo of r = k // 2 pixels (tl.dot, fp32 accumulation);
     x1 = act(z1), set to 0 outside the image (the depthwise conv zero-pads x1), rounded to the output dtype and
     stored into the scratch slot. Triton cannot shift a register tile, hence the round trip; the slot was just
     written by the same program, so it is read back from L1/L2.
  2. The x1 half of the output is the centre tap of the scratch, written straight into out[:, i].
  3. For each of the M = ratio - 1 cheap channels of every primary channel (j = i*M + m): z2 = sum over the k*k
     taps of w_cheap[j, dy, dx] * x1[y + dy - r, x + dx - r] + b_cheap[j], read as shifted loads of the scratch;
     x2 = act(z2) goes straight into out[:, init + j]. Channels >= OC are never computed, so for OC <= init the
     depthwise pass is compiled out (CHEAP = False).

GATED (ghostkernels::ghost_module_gated_triton, GhostNetV2): both halves are multiplied, in float32 before they are
rounded and stored, by the gate map element nearest upsampling puts at each output pixel: gate[n, c, gy[oy], gx[ox]]
with the row and column index tables gy, gx computed on the host by PyTorch's own F.interpolate (so the index
formula is PyTorch's by construction). x1 in the scratch stays ungated: the cheap half is computed from it.

Numerics: x2 is computed from x1 rounded to the output dtype, exactly as eager computes the depthwise conv on the
x1 tensor it returns, so the two halves of the output are consistent with each other.
"""

import torch
import triton
import triton.language as tl

from . import configs
from .tile_math import apply_act, image_offset, primary_conv_region, work_item


@triton.autotune(configs=configs.autotune_configs(triton), key=configs.AUTOTUNE_KEY)
@triton.jit
def ghost_forward_kernel(
        x_ptr, wp_ptr, bp_ptr, wc_ptr, bc_ptr, out_ptr, scratch_ptr,
        sxn, sxc, sxh, sxw, son, soc, soh, sow,
        g_ptr, sgn, sgc, sgh, sgw, gy_ptr, gx_ptr,
        C, I, H, W, HW, OC, tiles_x, tiles_per_image, num_work, nprog,
        K: tl.constexpr, M: tl.constexpr, ACT: tl.constexpr, CHEAP: tl.constexpr, GATED: tl.constexpr,
        TH: tl.constexpr, TW: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_P: tl.constexpr, SUB_P: tl.constexpr,
        SUB_Q: tl.constexpr, DOT_PRECISION: tl.constexpr, VEC: tl.constexpr, XVEC: tl.constexpr,
        BLOCK_C: tl.constexpr):
    """See the module docstring. The 1x1 conv walks the halo tile in chunks of SUB_P slots, the output pass walks
    the tile in chunks of SUB_Q pixels with each kernel row's k taps unrolled (tl.static_range: constant column
    shifts, no index arithmetic per tap; unrolling the rows too took 255 registers and spilled for k = 5 bfloat16 on
    sm_90), so that one [BLOCK_I, chunk] tile is live at a time: whole tiles need more than 255 registers per
    thread and spill. VEC > 1 (out) and XVEC > 1 (x): the tensor's per-pixel and per-image offsets are multiples
    of it (channels_last, its channel count a multiple of it; configs.tensor_vector), hinted to Triton so the
    channel-contiguous accesses can be vectors (the x tile's loads become 16-byte copies; tile_math).
    HW is unused in the body; it is an argument so that the autotuner can key on it. nprog is the grid size,
    passed in because the interpreter's tl.num_programs is not a scalar."""
    R: tl.constexpr = K // 2
    KK: tl.constexpr = K * K
    RH: tl.constexpr = TH + 2 * R
    RW: tl.constexpr = TW + 2 * R
    pid = tl.program_id(0)
    n_iblocks = tl.cdiv(I, BLOCK_I)

    il = tl.arange(0, BLOCK_I)
    scratch = scratch_ptr + pid.to(tl.int64) * (BLOCK_I * BLOCK_P)
    rows = scratch + il[:, None] * BLOCK_P

    for work in range(pid, num_work, nprog):
        n, ty0, tx0, i0 = work_item(work, n_iblocks, tiles_per_image, tiles_x, TH, TW, BLOCK_I)
        ii = i0 + il
        i_ok = ii < I

        # The previous work item's shifted loads must be finished before its slot is overwritten (WAR) ...
        tl.debug_barrier()
        for p0 in range(0, RH * RW, SUB_P):
            z1, in_image = primary_conv_region(x_ptr + image_offset(n, sxn, XVEC), sxc, sxh, sxw, wp_ptr, bp_ptr,
                                               i0, ty0 - R, tx0 - R, p0, C, I, H, W, RH, RW, SUB_P, BLOCK_I,
                                               BLOCK_C, DOT_PRECISION, XVEC)
            x1 = tl.where(in_image[None, :], apply_act(z1, ACT), 0.0).to(out_ptr.dtype.element_ty)
            tl.store(rows + p0 + tl.arange(0, SUB_P)[None, :], x1)
        # ... and every thread's stores must be visible before the shifted loads read them (RAW).
        tl.debug_barrier()

        out_img = out_ptr + image_offset(n, son, VEC)
        for q0 in range(0, TH * TW, SUB_Q):
            q = q0 + tl.arange(0, SUB_Q)
            qy = q // TW
            qx = q % TW
            q_ok = q < TH * TW
            oy = ty0 + qy
            ox = tx0 + qx
            pix_ok = q_ok & (oy < H) & (ox < W)
            out_pix = oy * soh + ox * sow
            if VEC > 1:
                out_pix = tl.multiple_of(out_pix, VEC)
            if GATED:  # the map element of each pixel: gate row gy[oy], column gx[ox]
                g_img = g_ptr + n.to(tl.int64) * sgn
                g_pix = (tl.load(gy_ptr + oy, mask=pix_ok, other=0) * sgh
                         + tl.load(gx_ptr + ox, mask=pix_ok, other=0) * sgw)
            centre = tl.load(rows + ((qy + R) * RW + qx + R)[None, :], mask=q_ok[None, :], other=0.0)
            primary_ok = (i_ok & (ii < OC))[:, None] & pix_ok[None, :]
            if GATED:
                centre = (centre.to(tl.float32) * tl.load(g_img + ii[:, None] * sgc + g_pix[None, :], mask=primary_ok,
                                                          other=0.0).to(tl.float32)).to(out_ptr.dtype.element_ty)
            tl.store(out_img + ii[:, None] * soc + out_pix[None, :], centre, mask=primary_ok)
            if CHEAP:
                for m in tl.static_range(M):
                    j = ii * M + m
                    acc = tl.zeros([BLOCK_I, SUB_Q], dtype=tl.float32)
                    for dy in range(K):
                        for dx in tl.static_range(K):
                            wv = tl.load(wc_ptr + j * KK + (dy * K + dx), mask=i_ok, other=0.0).to(tl.float32)
                            xs = tl.load(rows + ((qy + dy) * RW + qx + dx)[None, :], mask=q_ok[None, :],
                                         other=0.0).to(tl.float32)
                            acc += wv[:, None] * xs
                    bias = tl.load(bc_ptr + j, mask=i_ok, other=0.0).to(tl.float32)
                    x2 = apply_act(acc + bias[:, None], ACT)
                    ch = I + j
                    cheap_ok = (i_ok & (ch < OC))[:, None] & pix_ok[None, :]
                    if GATED:
                        x2 = x2 * tl.load(g_img + ch[:, None] * sgc + g_pix[None, :], mask=cheap_ok,
                                          other=0.0).to(tl.float32)
                    tl.store(out_img + ch[:, None] * soc + out_pix[None, :], x2.to(out_ptr.dtype.element_ty),
                             mask=cheap_ok)


def nearest_index_table(in_size: int, out_size: int, device) -> torch.Tensor:
    """For each of out_size output positions, the input position F.interpolate(mode='nearest') reads: computed by
    PyTorch's own upsampling of an index ramp, so the gated kernel indexes exactly as eager does."""
    ramp = torch.arange(in_size, dtype=torch.float32).reshape(1, 1, in_size)
    return torch.nn.functional.interpolate(ramp, size=out_size, mode="nearest").reshape(-1).to(device, torch.int32)


def forward_launch_plan(x, w_primary, b_primary, w_cheap, b_cheap, out, out_channels: int, act_id: int, gate=None):
    """(grid, positional args, constexpr kwargs) of ghost_forward_kernel writing into `out` (already allocated in
    the output memory format), with `gate` [N, out_channels, Hg, Wg] multiplied in where given; allocates the
    per-program scratch. Weights are made contiguous here: the kernel indexes w_primary as [init, C] and w_cheap as
    [init*M, k*k]."""
    N, C, H, W = (int(s) for s in x.shape)
    init = int(w_primary.shape[0])
    M = int(w_cheap.shape[0]) // init
    K = int(w_cheap.shape[-1])
    geo = configs.choose_tile(H, W, K, 1, configs.max_halo_block(K, 1))
    block_i = configs.choose_block_i(init)
    num_work = N * geo.tiles_per_image * triton.cdiv(init, block_i)
    nprog = configs.num_programs(num_work, x.device)
    scratch = torch.empty((nprog, block_i, geo.BLOCK_P), dtype=out.dtype, device=x.device)
    if gate is None:  # never read (GATED is False): any tensor stands in for the map and its tables
        gate_args = (out, 0, 0, 0, 0, out, out)
    else:
        gate_args = (gate, *gate.stride(), nearest_index_table(int(gate.shape[2]), H, x.device),
                     nearest_index_table(int(gate.shape[3]), W, x.device))
    args = (x, w_primary.contiguous(), b_primary.contiguous(), w_cheap.contiguous(), b_cheap.contiguous(), out,
            scratch, *x.stride(), *out.stride(), *gate_args,
            C, init, H, W, H * W, out_channels, geo.tiles_x, geo.tiles_per_image, num_work, nprog)
    consts = dict(K=K, M=M, ACT=act_id, CHEAP=out_channels > init, GATED=gate is not None, TH=geo.TH, TW=geo.TW,
                  BLOCK_I=block_i,
                  BLOCK_P=geo.BLOCK_P, SUB_P=configs.sub_block(geo.BLOCK_P, block_i, 16),
                  SUB_Q=configs.sub_block(geo.BLOCK_Q, block_i), DOT_PRECISION=configs.dot_precision(x.dtype),
                  VEC=configs.tensor_vector(out, out_channels), XVEC=configs.tensor_vector(x, C))
    return (nprog,), args, consts


def launch_forward(launcher, x, w_primary, b_primary, w_cheap, b_cheap, out, out_channels: int, act_id: int,
                   gate=None):
    """Run ghost_forward_kernel into `out` (gated by `gate` where given). `launcher` is torch.library.wrap_triton on
    the GPU (so torch.compile traces the launch) and the identity under the interpreter."""
    if out.numel() == 0:  # N, H, W or out_channels is 0: nothing to compute (and no grid to launch)
        return out
    grid, args, consts = forward_launch_plan(x, w_primary, b_primary, w_cheap, b_cheap, out, out_channels, act_id,
                                             gate)
    launcher(ghost_forward_kernel)[grid](*args, **consts)
    return out
