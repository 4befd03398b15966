// The AVX-512 forward kernel for float32 and bfloat16 NCHW tensors: a params struct and launch functions, no torch.
//
// What it computes is the ghost_module contract (see launch_ghost_forward.cpp for the generic kernel it replaces on
// CPUs with AVX-512). Per work item (images x primary-channel block x row band, planned by util_work_plan.h) and per
// tile of kMR primary channels:
//   1. z1 = W1 . x with a register-blocked microkernel (kMR channels x 64 pixels of accumulators, one broadcast
//      of a weight and four loads of x per input channel; float32 and bf16-dot-product items of one image of at
//      most 256 pixels, GhostNet's 14x14 and 7x7 layers: 8 channels x 48 pixels, in groups of tiles that share each strip of x, and an image's last
//      HW % 16 pixels, where that is 1-4, as dot products over the input channels); its epilogue adds b1, applies
//      the activation and writes x1 straight from registers into the tile's compact planes and, for the band's own
//      rows, into the primary half of the output: no z1 buffer, no second pass over it;
//   2. while the planes are in L1, the cheap channels of those kMR primaries: act(b2 + depthwise(x1)) with one
//      accumulator register per 16 outputs; each of the k*k taps is one masked load (the mask zeroes taps that
//      would wrap into the neighbouring row), so the k*k-tap sum never touches memory.
// x of a group of small images is first packed into one [C, g*pixels] panel so a strip of 64 pixels can span
// images (7x7 images are 49 pixels: unpacked, a quarter of every vector would be wasted).
// bfloat16: on CPUs with AVX-512 BF16 the GEMM is the CPU's bf16 dot product (vdpbf16ps: two bf16 products per
// float lane, accumulated in float), twice the multiply-adds of float32 per instruction; x is packed as pairs of
// neighbouring input channels per pixel, the layout that instruction reads. On CPUs with AMX-BF16 (Sapphire Rapids
// and later) the same panel is the B operand of the tile dot product (tdpbf16ps: a 16 x 32 by 32 x 16 product per
// instruction, 16x the multiply-adds of vdpbf16ps): tiles of 32 channels x 32 pixels, their z1 stored through a small
// buffer into the same epilogue (bench/NOTES.md entry 60). On AVX-512 CPUs without BF16 x is widened
// to float as it is packed and the float32 GEMM runs (bf16_dot false). x1 and the depthwise conv stay in float
// (eager rounds x1 to bf16 first, so ours is the more accurate), and only the two halves of the output are rounded
// to bfloat16.
// GhostNetV2's gated module (gate set): both halves are multiplied by the upsampled DFC map as they are stored. The
// map element of each output pixel comes from a table (gate_index: nearest upsampling's index formula, computed once
// per call). The index is not monotone along a plane (rows sharing a map row start over at its first element), but
// 16 consecutive pixels of GhostNetV2's maps touch at most two map rows, so a vector's lanes read a window of the map:
// two loads and a permute (a gather where the window is wider than 32 elements).
#pragma once

#include <cstdint>
#include <vector>

namespace ghostkernels {
namespace cpu {

// Primary channels per microkernel tile (its accumulators are kForwardTileChannels x 4 vectors of 16 floats).
constexpr int64_t kForwardTileChannels = 6;
constexpr int64_t kForwardTileVectors = 4;

struct ForwardAvx512Params {
  bool bf16;        // the dtype of x and out: bfloat16 (raw 16-bit words) or float32
  const void* x;    // [N, C, H, W] contiguous
  const void* w1;   // float32 (and bfloat16 without bf16_dot): float [I, C]; bfloat16 with bf16_dot:
                    // [I, ceil(C/2)] 32-bit words, each two weights of neighbouring input channels (a zero weight
                    // pads an odd C), the operand layout of the bf16 dot product
  const float* b1;  // [I]
  const float* w2;  // [I*M, K*K]
  const float* b2;  // [I*M]
  void* out;        // [N, OC, H, W] contiguous, x's dtype
  const void* residual;  // nullptr, or [N, OC, H, W] contiguous in x's dtype: added to the output (after the
                         // activation and the gate; a bottleneck's shortcut)
  bool bf16_dot;         // bfloat16 on the bf16 dot product (w1 as channel pairs); false: w1 float [I, C]
  bool amx;              // with bf16_dot: the GEMM on AMX tiles (avx512_forward_amx); w1 is then
                         // [avx512_amx_rows(I), avx512_amx_words(C)] words, zero-padded (a tile's 16 rows of 16 words)
  const float* gate;     // nullptr, or the gated module's map [N, OC, gate_plane] float32, multiplied into the output
  const float* gate_end;      // the end of the memory holding the map (window loads may run up to 31 floats past a
                              // plane's last element, but never past this)
  int64_t gate_plane;         // elements per map plane (Hg * Wg)
  const int32_t* gate_index;  // [H * W]: the map element (within its plane) that each output pixel reads
  int64_t N, C, H, W, I, M, K, OC;
  int64_t n_primary, n_cheap;  // channels of each half kept by the slice
  int act;                     // ghostkernels::Act
  // Work plan (util_work_plan.h): G images, Ib primary channels, B rows per item, and how many of each.
  int64_t G, Ib, B, groups, blocks, bands;
  // avx512_column_masks(K, W, B): for each 16-output vector of a band and each column offset dx, the lanes whose
  // tap stays inside the row.
  const uint16_t* colmask;
  // Output addressing. out_plane == 0 (a value-initialized struct): out is the [N, OC, H, W] tensor. A caller that
  // keeps the planes elsewhere (the fused bottleneck front, launch_ghost_dw_front.cpp: one channel block's planes,
  // a band of rows, in per-thread scratch) sets out_plane > 0: in-image pixel q of primary channel c of image n is
  // then stored at out + n * out_image + (c + out_primary_shift) * out_plane + q + out_pixel_shift, and of cheap
  // channel j (output channel I + j) at the same place with (j + out_cheap_shift) for (c + out_primary_shift).
  // residual must then be nullptr (it is read at the output's offsets). The gate stays indexed by image and output
  // channel ([N, OC, gate_plane]) either way.
  int64_t out_image, out_plane, out_primary_shift, out_cheap_shift, out_pixel_shift;
  // bfloat16 with bf16_dot and out_plane > 0 only: the planes at out are float32 (the fused front's scratch: x1 and
  // the cheap half unrounded for the depthwise conv after them, as in float32).
  bool out_float;
};

// Whether this CPU runs the kernel (AVX-512 F/BW/VL/DQ; bfloat16 needs nothing more) and the kernel handles this
// depthwise kernel size.
bool avx512_forward_available(bool bf16, int64_t K);

// Whether bfloat16 calls can take the bf16 dot product (the CPU has AVX-512 BF16): ForwardAvx512Params::bf16_dot.
bool avx512_forward_bf16_dot();

// Whether bfloat16 calls with bf16_dot can run their GEMM on AMX tiles (ForwardAvx512Params::amx): the CPU has
// AMX-BF16, Linux granted this process the tile state (asked once), and GHOSTKERNELS_CPU_AMX is not "0" (read per
// call, so a test or an A/B can compare both paths in one process).
bool avx512_forward_amx();
// The AMX weight layout's padded sizes: primary channels to whole tiles of 16 rows and one more tile (a block of
// channels that starts inside a tile reads up to 31 rows on), input channel pairs (words) to whole tiles of 16 words.
inline int64_t avx512_amx_rows(int64_t I) { return (I + 15) / 16 * 16 + 16; }
inline int64_t avx512_amx_words(int64_t C) { return ((C + 1) / 2 + 15) / 16 * 16; }

// For each 16-output vector of a band of B rows and each column offset dx, the lanes whose tap stays inside the row
// (the forward's colmask; the depthwise backward, kernel_ghost_backward_avx512.h, reads the same masks).
std::vector<uint16_t> avx512_column_masks(int64_t K, int64_t W, int64_t B);

// Per-thread scratch, in 4-byte words, for avx512_forward_items.
int64_t avx512_forward_scratch_words(const ForwardAvx512Params& p);

// Runs work items [begin, end). Items write disjoint parts of the output, so threads may run disjoint ranges.
void avx512_forward_items(const ForwardAvx512Params& p, int64_t begin, int64_t end, void* scratch);

// Runs one item that the caller cut itself: image n, primary channels [c0, c1) with their cheap channels, own rows
// [r0, r1), r1 - r0 <= p.B (the halo rows its cheap half needs are computed too). p.G must be 1; groups, blocks and
// bands are not read. scratch: avx512_forward_scratch_words(p) words, as for avx512_forward_items.
// panel_packed: the previous call on this scratch had the same p.x, n, r0 and r1 (only the channels differ), so the
// x panel it packed there (bfloat16: channel pairs) is reused instead of packed again; ignored where x is not packed.
void avx512_forward_region(const ForwardAvx512Params& p, int64_t n, int64_t c0, int64_t c1, int64_t r0, int64_t r1,
                           void* scratch, bool panel_packed = false);

// The cheap half's stencil on its own, for the train-mode BatchNorm passes (launch_bn_z1_passes.cpp):
// dst[q] = sum_{dy,dx} w[dy*K+dx] * plane(q + (dy-p)*W + dx-p) for q in [0, n), no bias, no activation. `centre` is a
// compact plane (pitch W, zero rows for the padding) at the first output row, with at least (K/2 + 1) * W + 32
// readable floats before it and after its last output; colmask = avx512_column_masks(K, W, rows) with
// rows * W >= n.
void avx512_depthwise_taps(const float* centre, float* dst, int64_t n, int64_t W, int64_t K, const float* w,
                           const uint16_t* colmask);

}  // namespace cpu
}  // namespace ghostkernels
