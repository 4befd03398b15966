// The eight per-pixel sums of one cheap channel in ghost_bn_backward_reduce (launch_bn_z1_passes.cpp), 16 lanes at
// a time. Torch-free; compiled for AVX-512 in its own region (util_avx512_target.h).
//
// With xh = (z2 - mean) * invstd, g2 = grad_out * act'(weight * xh + bias), a = dwconv(a1) and e = dwconv(a1 * xhat1)
// (csrc/ghost_module.cpp has the math), out = {sum g2, sum g2*xh, sum a*g2, sum a, sum a*xh, sum e*g2, sum e,
// sum e*xh} over q in [0, n). The compiler's own vectorization of the generic loop (lane_sums) uses 256-bit
// vectors and re-evaluates the BN per sum; here one pass of 512-bit FMAs, the last vector masked.
#pragma once

#include <cstdint>

namespace ghostkernels {
namespace cpu {

struct BnCheapSumsAvx512Params {
  const float *z2, *da, *dq, *grad;  // n values each
  int64_t n;
  float mean, invstd, weight, bias;  // the cheap channel's BN
  int act;                           // ghostkernels::Act
};

// Whether avx512_bn_cheap_sums runs for this activation on this CPU (GhostNet's ReLU and Identity; the others take
// the generic loop).
bool avx512_bn_cheap_sums_available(int act);

void avx512_bn_cheap_sums(const BnCheapSumsAvx512Params& p, float out[8]);

}  // namespace cpu
}  // namespace ghostkernels
