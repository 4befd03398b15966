// The AVX-512 kernel of ghostkernels::dfc_gate for float32 and bfloat16 NCHW inputs: a params struct and launch
// functions, no torch.
//
// GhostNetV2's DFC attention map, BatchNorms folded: sigmoid(dw_v(dw_h(conv1x1(avg_pool2x2(x))))). Eager PyTorch
// runs it as seven kernels (pool, three convs, three BNs before folding, sigmoid, then the upsample that the gated
// Ghost module does in its store), each over a quarter-resolution map; here it is two passes:
//   1. pool: every plane of x to a plane of (H/2) x (W/2) (floored), four loads and a pairwise add per 16 outputs
//      (avx512_gate_pool_planes);
//   2. per work item (group of images, block of output channels): the 1x1 conv as one GEMM of the item's weights and
//      the group's pooled planes, the group's images side by side in its columns (a 3x3 pooled map alone fills 9 of
//      a vector's 16 lanes; four of them fill 36 of 48), then four channels at a time, while their planes are in L1,
//      the 1x1 conv's bias and the (1, KH) conv along rows (column masks stop taps at a row's ends, as in the
//      Ghost-module kernel), the (KV, 1) conv down the columns (zero rows above and below) and the sigmoid (a
//      polynomial exp), straight into the map (avx512_gate_map_items).
// The GEMM: float32 (avx512_sgemm_nn, kernel_backward_gemm_avx512.h), or for bfloat16 x on CPUs with AVX-512 BF16 the
// bf16 dot product (vdpbf16ps: two products per float lane, the operands as pairs of neighbouring input channels,
// twice the multiply-adds per instruction; bench/NOTES.md entry 63), with the pooled planes rounded to bfloat16 as
// they are packed, where eager's bfloat16 avg_pool2d rounds them too.
// The map goes out as float32 (for the gated Ghost-module kernel, which multiplies it into its stores) or in x's
// dtype (the op's output).
//
// Numerics: float32 accumulation throughout (bfloat16 x is widened exactly; on the bf16 dot product the pooled values
// are rounded to bfloat16, to nearest even, and each step adds a pair's two products; a bfloat16 map is rounded once,
// to nearest even, by integer arithmetic); the pool sums the four values in the order (r0c0 + r0c1) + (r1c0 + r1c1)
// and scales by 1/4, where eager divides; the exp's error is a few ulp. Results differ from eager's by rounding only,
// and do not depend on the thread count (the groups and blocks do, never the sums).
#pragma once

#include <cstdint>

namespace ghostkernels {
namespace cpu {

struct DfcGateAvx512Params {
  bool bf16;          // x (and the map unless map_f32) are bfloat16 (raw 16-bit words), else float32
  bool bf16_dot;      // bfloat16 x with the 1x1 conv on the bf16 dot product (w1_pairs; pooled as channel pairs)
  const void* x;      // [N][C][H][W] contiguous
  const float* w1;    // [O][C]: the 1x1 conv, BN folded (without bf16_dot)
  const uint32_t* w1_pairs;  // with bf16_dot: [O][ceil(C/2)] words, each the bfloat16 weights of input channels 2k
                             // (low half) and 2k + 1 (a zero weight pads an odd C)
  const float* b1;    // [O]
  const float* wh;    // [O][KH]: the (1, KH) depthwise conv
  const float* bh;    // [O]
  const float* wv;    // [O][KV]: the (KV, 1) depthwise conv
  const float* bv;    // [O]
  // The pooled planes, written by avx512_gate_pool_planes, read by avx512_gate_map_items: per group of images
  // [n0, n0 + gn), at n0 * rows * Hg*Wg, `rows` rows of gn * Hg*Wg columns (image n0 + i at column i * Hg*Wg). Without
  // bf16_dot a row is one channel's floats (rows = C); with it, a row of 32-bit words, each channels 2k (low half) and
  // 2k + 1 of a pixel in bfloat16 (rows = ceil(C/2), an odd C's last word padded with zero).
  void* pooled;
  void* map;          // [N][O][Hg*Wg]
  bool map_f32;       // the map is float32 whatever x's dtype
  int64_t N, C, H, W, O, Hg, Wg, KH, KV;
  int64_t Gi, groups;        // images per group (the last may have fewer), and groups
  int64_t Ob, blocks;        // output channels per work item, and items per group
  const uint16_t* colmask;   // avx512_column_masks(KH, Wg, Hg) (kernel_ghost_forward_avx512.h)
};

// Whether this CPU runs the kernel (AVX-512 F/BW/VL/DQ; bfloat16 needs nothing more) for these kernel lengths.
bool avx512_dfc_gate_available(int64_t KH, int64_t KV);

// Rows of a group's pooled planes: C, or ceil(C/2) with bf16_dot (DfcGateAvx512Params::pooled).
int64_t avx512_gate_pooled_rows(const DfcGateAvx512Params& p);

// Pools units [begin, end) of x (unit = n * avx512_gate_pooled_rows(p) + row: one plane, or with bf16_dot the pair
// of planes of one row) into p.pooled; units are independent.
void avx512_gate_pool_planes(const DfcGateAvx512Params& p, int64_t begin, int64_t end);

// Per-thread scratch, in floats, for avx512_gate_map_items.
int64_t avx512_gate_scratch_floats(const DfcGateAvx512Params& p);

// Computes the map for work items [begin, end) (item = group * blocks + block of Ob channels); items write disjoint
// channels, so threads may run disjoint ranges. Needs every pooled plane of the items' images.
void avx512_gate_map_items(const DfcGateAvx512Params& p, int64_t begin, int64_t end, float* scratch);

}  // namespace cpu
}  // namespace ghostkernels
