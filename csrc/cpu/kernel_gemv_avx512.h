// The AVX-512 kernel of ghostkernels::linear_act: y[n][o] = act(b[o] + sum_k w[o][k] * x[n][k]) for the rows of x
// (one per image), float32 or bfloat16; a params struct and a launch function, no torch.
//
// Why not the BLAS: at batch 1 this is a matrix-vector product, bound by reading w once. GhostNet's head reads
// 10 MB of weights per forward (conv_head 960 -> 1280 and the 1280 -> 1000 classifier, both at 1x1), and the
// network's own activations push them out of the last-level cache between forwards, so they stream from memory;
// ATen's 1x1 convolution (im2col + GEMM) and MKL's sgemv ran those products on one of the two threads at ~10 GB/s
// (bench/NOTES.md, entry 19). Here the rows of w are split over the threads, and each block of four rows is read
// once for the whole batch: four rows x four images are sixteen accumulators, 16 lanes of k at a time. Built for
// small batches, it still beat ATen's addmm at every batch measured on the 2-core VM (960 -> 1280: 69 against 224
// us at batch 8, 1.67 against 3.14 ms at batch 256), so there is no size above which the op hands over.
//
// Numerics: float32 accumulation in lane order (lane l sums k = l, l + 16, ...), then a tree over the lanes, then
// the bias and the activation; bfloat16 inputs are widened exactly and only a bfloat16 y is rounded (to nearest
// even). Results differ from the BLAS's by rounding only. With bf16_dot (bfloat16 x and w on CPUs with AVX-512
// BF16) lane l sums the pairs k = 2l, 2l + 1, 2l + 32, ... by vdpbf16ps, which flushes denormals to zero.
#pragma once

#include <cstdint>

namespace ghostkernels {
namespace cpu {

struct GemvAvx512Params {
  bool bf16;        // x, w, b and y are bfloat16 (raw 16-bit words), else float32
  bool bf16_weights = false;  // (with bf16 false) w and b are bfloat16, x and y float32: the squeeze-excite of a
                              // bfloat16 network, whose means and hidden vector stay float32
  bool bf16_dot = false;      // (with bf16) on AVX-512 BF16's dot product (avx512_gemv_bf16_dot() must be true)
  const void* x;    // [N][K], rows ldx apart
  const void* w;    // [O][K], contiguous
  const void* b;    // [O]
  void* y;          // [N][O], rows ldy apart
  int64_t N, K, O, ldx, ldy;
  int act;          // ghostkernels::Act
};

// Whether this CPU runs the kernel: AVX-512 F/BW/VL/DQ (bfloat16 needs nothing more).
bool avx512_gemv_available(bool bf16);

// Whether bf16_dot may be set: the CPU has AVX-512 BF16.
bool avx512_gemv_bf16_dot();

// Output rows are computed four at a time; row block i is rows [4i, 4i + 4).
constexpr int64_t kGemvRowBlock = 4;

// Computes y[n][o] for every n and the rows o of row blocks [begin, end). Blocks write disjoint columns of y, so
// threads may run disjoint ranges.
void avx512_gemv_blocks(const GemvAvx512Params& p, int64_t begin, int64_t end);

}  // namespace cpu
}  // namespace ghostkernels
