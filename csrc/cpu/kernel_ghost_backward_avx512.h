// The AVX-512 depthwise half of the Ghost-module backward pass, float32 NCHW: a params struct and a launch function,
// no torch. launch_ghost_backward.cpp runs it where avx512_forward_available(false, K) holds (an AVX-512 CPU, a
// depthwise kernel size the forward kernel has), after recomputing z1 and x1 on the GEMMs of
// kernel_backward_gemm_avx512.h.
#pragma once

#include <cstdint>

namespace ghostkernels {
namespace cpu {

// The depthwise half of the float32 NCHW backward for one image of a backward work item (rows [r0, r0 + own)),
// after z1 has been recomputed and x1 = act(z1 + b1) written into planes:
//   g2 = grad_out(cheap) * act'(z2) on rows [r0 - p, r0 + own + p), z2 recomputed from x1 with masked-load taps; in
//   the same pass, on the own rows, grad b2 += g2 and grad w2[t] += g2 * tap_t (the taps z2 was made of);
//   g1 = (grad_out(primary) + transposed depthwise of g2) * act'(z1) on the own rows, grad b1 += g1.
// The weight gradients are added to per-thread partial sums.
// With `bn` (train-mode BatchNorm, launch_ghost_backward.cpp's Coefficients): a stage's pre-activation is
// y = weight * xhat + bias with xhat = (s - mean) * invstd (s = z1 + b1, z2 with b2 added), and what is stored,
// summed and convolved in place of g2 and g1 is dz = dz_scale * (g - mean_dy - xhat * mean_dy_xhat).
struct BnCoefficients {
  const float *mean, *invstd, *weight, *bias, *mean_dy, *mean_dy_xhat, *dz_scale;
};

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
  bool bn;                  // train-mode BatchNorm: bn1 (primary) and bn2 (cheap) apply
  BnCoefficients bn1, bn2;
};
void avx512_depthwise_backward_image(const DepthwiseBackwardImage& p);

}  // namespace cpu
}  // namespace ghostkernels
