// The AVX-512 depthwise convolution (one filter per channel, stride 1 or 2, zero padding k//2, bias, activation)
// for float32 and bfloat16 NCHW tensors: a params struct and launch functions, no torch.
//
// GhostNet's bottleneck has two of them outside its Ghost modules: conv_dw (k x k, stride 2, after ghost1) and the
// shortcut's depthwise conv (stride 1 or 2). oneDNN runs them on NCHW tensors by reordering the input into its
// blocked layout and the output back, two extra passes over memory per call; on the 2-core VM of bench/NOTES.md
// the first stride-2 one of GhostNet 1.0x took longer than the Ghost module in front of it.
//
// Per plane (image, channel): a stride-2 convolution is a sum of stride-1 convolutions over the input's four
// "phases" (even/odd rows x even/odd columns), each tap of the k x k kernel reading one phase at a row and column
// offset of -1, 0 or +1. So the plane is first split into s*s phase planes in float (pitch Wo, zero rows above and
// below, zero where the input ends), and then every 16 consecutive outputs (across row ends) are one accumulator
// register: each tap is one load from a phase plane, masked where its column offset would wrap into the
// neighbouring row (as in the Ghost-module kernel). Stride 1 is the same with one phase: a padded copy.
#pragma once

#include <cstdint>
#include <vector>

namespace ghostkernels {
namespace cpu {

struct DepthwiseAvx512Params {
  bool bf16;          // x and out are bfloat16 (raw 16-bit words), else float32
  const void* x;      // [planes][H][W], plane = n * C + c
  const float* w;     // [C][K*K]
  const float* b;     // [C]
  void* out;          // [planes][Ho][Wo]
  float* plane_sums;  // [planes], or nullptr: the sum of each output plane (after the activation), for a
                      // squeeze-excite that follows
  int64_t C, H, W, K, stride, Ho, Wo;
  int act;                   // ghostkernels::Act
  const uint16_t* colmask;   // avx512_depthwise_column_masks(K, stride, Ho, Wo)
};

// Whether this CPU and the kernel handle it: AVX-512 F/BW/VL/DQ (bfloat16 needs nothing more), K in {1, 3, 5, 7},
// stride 1 or 2.
bool avx512_depthwise_available(bool bf16, int64_t K, int64_t stride);

// Output size of the convolution along one dimension (padding K/2).
inline int64_t depthwise_output_size(int64_t in, int64_t K, int64_t stride) { return (in + 2 * (K / 2) - K) / stride + 1; }

std::vector<uint16_t> avx512_depthwise_column_masks(int64_t K, int64_t stride, int64_t Ho, int64_t Wo);

// Per-thread scratch, in floats, for avx512_depthwise_planes. It must be zero where it has never been written (a
// buffer zero-filled when allocated), so the lanes read past a plane are never NaN or denormal.
int64_t avx512_depthwise_scratch_floats(const DepthwiseAvx512Params& p);

// Computes planes [begin, end); planes are independent, so threads may run disjoint ranges.
void avx512_depthwise_planes(const DepthwiseAvx512Params& p, int64_t begin, int64_t end, float* scratch);

// One band of output rows of one plane, its input a float plane held elsewhere: the fused bottleneck front
// (launch_ghost_dw_front.cpp) keeps ghost1's planes in per-thread scratch and never writes them to memory.
struct DepthwiseBand {
  int64_t c;             // the channel (its weights and bias)
  const float* in;       // rows [in_row0, in_row0 + in_rows) of the channel's H x W input, pitch W; every row inside
  int64_t in_row0;       // the image that output rows [o0, o1) read must be among them (rows outside the image
  int64_t in_rows;       // are the zero padding)
  void* out;             // output row o0 of the plane (pitch Wo; x's element type: p.bf16)
  int64_t o0, o1;        // the output rows
  bool want_sum;         // return the band's sum (after the activation)
};

// Computes band b with p's weights, sizes and activation (p.x, p.out and p.plane_sums are not read); returns the
// band's sum where b.want_sum, else 0. scratch: avx512_depthwise_scratch_floats(p), as for avx512_depthwise_planes.
float avx512_depthwise_band(const DepthwiseAvx512Params& p, const DepthwiseBand& b, float* scratch);

// A dense convolution with few input channels on the same phase planes: out[n][o] = act(b[o] + sum over ci of the
// k x k convolution of x[n][ci] with w[o][ci]), stride 1 or 2, padding K/2; the 3x3 stride-2 ones (GhostNet's stem)
// run on kernel_stem_conv_avx512.h instead. Each image's Ci planes are split into phases once per thread, and every 16
// consecutive outputs of a channel are one accumulator register taking Ci * K * K taps (27 for the stem), each one
// load and one fused multiply-add, as in the depthwise kernel.
struct SmallConvAvx512Params {
  bool bf16;          // x and out are bfloat16 (raw 16-bit words), else float32
  const void* x;      // [N][Ci][H][W]
  const float* w;     // [Co][Ci][K*K]
  const float* b;     // [Co]
  void* out;          // [N][Co][Ho][Wo]
  int64_t N, Ci, Co, H, W, K, stride, Ho, Wo;
  int act;                  // ghostkernels::Act
  const uint16_t* colmask;  // avx512_depthwise_column_masks(K, stride, Ho, Wo)
};

// The most input channels the small-channel kernel takes: its per-thread scratch holds all of an image's phase
// planes, and beyond a few channels a GEMM-based convolution is the better tool.
constexpr int64_t kSmallConvMaxInputChannels = 4;

// Whether this CPU and the kernel handle it: as avx512_depthwise_available, and Ci <= kSmallConvMaxInputChannels.
bool avx512_small_conv_available(bool bf16, int64_t Ci, int64_t K, int64_t stride);

// Per-thread scratch, in floats, for avx512_small_conv_items (zero where never written, as for the depthwise one).
int64_t avx512_small_conv_scratch_floats(const SmallConvAvx512Params& p);

// Items of the small-channel convolution: an image's output channels in blocks of 4 (which share every input load).
inline int64_t avx512_small_conv_item_count(const SmallConvAvx512Params& p) { return p.N * ((p.Co + 3) / 4); }

// Computes items [begin, end), image-major; a thread splits an image's input into phases when its first item of
// that image comes, so contiguous ranges of items split each image once.
void avx512_small_conv_items(const SmallConvAvx512Params& p, int64_t begin, int64_t end, float* scratch);

}  // namespace cpu
}  // namespace ghostkernels
