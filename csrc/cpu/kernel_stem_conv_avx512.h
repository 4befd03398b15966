// The AVX-512 kernel of GhostNet's stem: a dense 3x3 stride-2 convolution (padding 1) with few input channels
// (3 -> 16 at 224x224), bias and activation, float32 or bfloat16 NCHW: a params struct and launch functions, no
// torch.
//
// Why not the small-channel kernel of kernel_depthwise_avx512.h (which still runs the other kernel sizes and
// strides): it splits a whole image's input planes into stride phases (600 KB for the stem, far beyond L1 and half
// of L2) and then reads them back once per block of 4 output channels; with the column masks built per call that
// made the stem ~15 GMAC/s on one core, against ~60-80 us of arithmetic per image (bench/NOTES.md entry 53).
//
// Here a work item is one output row of one image, cut into tiles of 16 accumulator registers: two vectors of 16
// consecutive outputs x 8 output channels (the last vector of a row with an odd count: 16 channels), each taking
// Ci * 9 taps: per tap one load of 16 inputs per vector and one weight broadcast per channel shared by the vectors
// (the 16 weights of a tap in one L1 line). The inputs come from the
// three input rows the output row reads, each split once into its even and odd columns in a few KB of per-thread
// scratch (an odd input row serves two output rows, so the last two are kept), with the padding column in front of
// the odd half: taps dx = 0, 1, 2 read odd[j], even[j] and odd[j + 1] without masks. Rows outside the input read a
// zero row. So each input element is read from memory once and each output written once, and everything else stays
// in L1.
#pragma once

#include <cstdint>

namespace ghostkernels {
namespace cpu {

struct StemConvAvx512Params {
  bool bf16;      // x and out are bfloat16 (raw 16-bit words), else float32
  const void* x;  // [N][Ci][H][W]
  const float* w; // [Co][Ci][3][3]
  const float* b; // [Co]
  void* out;      // [N][Co][Ho][Wo], Ho = (H + 1) / 2, Wo = (W + 1) / 2
  int64_t N, Ci, Co, H, W, Ho, Wo;
  int act;  // ghostkernels::Act
};

// The most input channels it takes (the scratch holds 3 split rows per input channel; wider inputs belong to a
// GEMM-based convolution).
constexpr int64_t kStemConvMaxInputChannels = 4;

// Whether this CPU and the kernel handle it: AVX-512 F/BW/VL/DQ (bfloat16 needs nothing more), K == 3, stride 2,
// 1 <= Ci <= kStemConvMaxInputChannels.
bool avx512_stem_conv_available(bool bf16, int64_t Ci, int64_t K, int64_t stride);

// Per-thread scratch, in floats, for avx512_stem_conv_rows (any contents: the kernel writes what it reads).
int64_t avx512_stem_conv_scratch_floats(const StemConvAvx512Params& p);

// Computes output rows [begin, end) of the batch (row n * Ho + i); rows are independent, so threads may run
// disjoint ranges, and contiguous ones share the split of the input row between two output rows.
void avx512_stem_conv_rows(const StemConvAvx512Params& p, int64_t begin, int64_t end, float* scratch);

}  // namespace cpu
}  // namespace ghostkernels
