// The AVX-512 forward kernel for float32 and bfloat16 NCHW tensors: a params struct and launch functions, no torch.
//
// What it computes is the ghost_module contract (see launch_ghost_module.cpp for the generic kernel it replaces on
// CPUs with AVX-512). Per work item (images x primary-channel block x row band, planned by util_work_plan.h) and per
// tile of kMR primary channels:
//   1. z1 = W1 . x with a register-blocked microkernel (kMR channels x 64 pixels of accumulators, one broadcast
//      of a weight and four loads of x per input channel); its epilogue adds b1, applies the activation and
//      writes x1 straight from registers into the tile's compact planes and, for the band's own rows, into the
//      primary half of the output: no z1 buffer, no second pass over it;
//   2. while the planes are in L1, the cheap channels of those kMR primaries: act(b2 + depthwise(x1)) with one
//      accumulator register per 16 outputs; each of the k*k taps is one masked load (the mask zeroes taps that
//      would wrap into the neighbouring row), so the k*k-tap sum never touches memory.
// x of a group of small images is first packed into one [C, g*pixels] panel so a strip of 64 pixels can span
// images (7x7 images are 49 pixels: unpacked, a quarter of every vector would be wasted).
// bfloat16: the GEMM is the CPU's bf16 dot product (vdpbf16ps: two bf16 products per float lane, accumulated in
// float), twice the multiply-adds of float32 per instruction; x is packed as pairs of neighbouring input channels
// per pixel, the layout that instruction reads. x1 and the depthwise conv stay in float (eager rounds x1 to bf16
// first, so ours is the more accurate), and only the two halves of the output are rounded to bfloat16.
#pragma once

#include <cstdint>
#include <vector>

namespace ghostkernels {
namespace cpu {

// Primary channels per microkernel tile (its accumulators are kForwardTileChannels x 4 vectors of 16 floats).
constexpr int64_t kForwardTileChannels = 6;

struct ForwardAvx512Params {
  bool bf16;        // the dtype of x and out: bfloat16 (raw 16-bit words) or float32
  const void* x;    // [N, C, H, W] contiguous
  const void* w1;   // float32: [I, C]; bfloat16: [I, ceil(C/2)] 32-bit words, each two weights of neighbouring
                    // input channels (a zero weight pads an odd C), the operand layout of the bf16 dot product
  const float* b1;  // [I]
  const float* w2;  // [I*M, K*K]
  const float* b2;  // [I*M]
  void* out;        // [N, OC, H, W] contiguous, x's dtype
  const void* residual;  // nullptr, or [N, OC, H, W] contiguous in x's dtype: added to the output (after the
                         // activation; a bottleneck's shortcut)
  int64_t N, C, H, W, I, M, K, OC;
  int64_t n_primary, n_cheap;  // channels of each half kept by the slice
  int act;                     // ghostkernels::Act
  // Work plan (util_work_plan.h): G images, Ib primary channels, B rows per item, and how many of each.
  int64_t G, Ib, B, groups, blocks, bands;
  // avx512_column_masks(K, W, B): for each 16-output vector of a band and each column offset dx, the lanes whose
  // tap stays inside the row.
  const uint16_t* colmask;
};

// Whether this CPU runs the kernel (AVX-512 F/BW/VL/DQ, and BF16 for bfloat16) and the kernel handles this
// depthwise kernel size.
bool avx512_forward_available(bool bf16, int64_t K);

std::vector<uint16_t> avx512_column_masks(int64_t K, int64_t W, int64_t B);

// Per-thread scratch, in 4-byte words, for avx512_forward_items.
int64_t avx512_forward_scratch_words(const ForwardAvx512Params& p);

// Runs work items [begin, end). Items write disjoint parts of the output, so threads may run disjoint ranges.
void avx512_forward_items(const ForwardAvx512Params& p, int64_t begin, int64_t end, void* scratch);

// Plain float32 GEMMs on the same microkernel, for the backward pass (whose three 1x1 GEMMs per work item are small
// and were the slowest part of it when run by the BLAS). Row-major, leading dimensions in elements; available
// where avx512_forward_available(false, 1) is.
// C[m][n] = (accumulate ? C[m][n] : 0) + sum_k A[m][k] * B[k][n]
void avx512_sgemm_nn(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                     float* C, int64_t ldc, bool accumulate);
// dst[c][r] = src[r][c] for r < rows, c < cols (16 x 16 blocks transposed in registers).
void avx512_transpose(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst, int64_t ldd);

// The depthwise half of the float32 NCHW backward for one image of a backward work item (rows [r0, r0 + own)),
// after z1 has been recomputed and x1 = act(z1 + b1) written into planes:
//   g2 = grad_out(cheap) * act'(z2) on rows [r0 - p, r0 + own + p), z2 recomputed from x1 with masked-load taps; in
//   the same pass, on the own rows, grad b2 += g2 and grad w2[t] += g2 * tap_t (the taps z2 was made of);
//   g1 = (grad_out(primary) + transposed depthwise of g2) * act'(z1) on the own rows, grad b1 += g1.
// The weight gradients are added to per-thread partial sums.
struct DepthwiseBackwardImage {
  const float* x1;   // channel 0's plane at image row r0 - 2p; planes x1_stride apart
  int64_t x1_stride;
  float* g2;         // cheap channel 0's plane at image row r0 - p; planes g2_stride apart (written here)
  int64_t g2_stride;
  const float* go;   // grad_out of this image, [OC][H][W]
  const float* z1;   // z1 of channel 0 at image row z1_row0; channels z1_cstride apart, rows W apart
  int64_t z1_cstride, z1_row0;
  float* g1;         // g1 of channel 0 on the own rows; channels g1_cstride apart (written here)
  int64_t g1_cstride;
  const float* b1;
  const float* w2;       // [I*M][K*K]
  const float* w2_flip;  // taps flipped: w2_flip[j][t] = w2[j][K*K-1-t]
  const float* b2;
  float* pw2;  // [I*M][K*K] partial sums
  float* pb2;  // [I*M]
  float* pb1;  // [I]
  int64_t H, W, I, M, K, OC, n_cheap, r0, own;
  const uint16_t* colmask;  // avx512_column_masks(K, W, rows) with rows >= own + 2p
  int act;
};
void avx512_depthwise_backward_image(const DepthwiseBackwardImage& p);

}  // namespace cpu
}  // namespace ghostkernels
