// The AVX-512 kernel of ghost_bn_backward_reduce's cheap-channel sums (see kernel_bn_reduce_avx512.h).
//
// As in the other AVX-512 files: no torch header, and the AVX-512 code sits in the AVX-512 region
// (util_avx512_target.h) with internal linkage, so the library still loads and runs on CPUs without AVX-512.
#include "kernel_bn_reduce_avx512.h"

#include <cstdint>

#include "../activations.h"
#include "util_cpu_features.h"

#include "util_avx512_target.h"

namespace ghostkernels {
namespace cpu {

bool avx512_bn_cheap_sums_available(int act) {
#if GK_AVX512_KERNELS
  return cpu_has_avx512(false) && (act == static_cast<int>(Act::ReLU) || act == static_cast<int>(Act::Identity));
#else
  (void)act;
  return false;
#endif
}

#if GK_AVX512_KERNELS
GK_AVX512_REGION_BEGIN

}  // namespace cpu
}  // namespace ghostkernels

#include "util_avx512_common.h"

namespace ghostkernels {
namespace cpu {
namespace {

// Masked-off lanes load zeros: grad and the stencil outputs are then 0, so every sum gets +0 from them.
template <bool Relu>
void cheap_sums(const BnCheapSumsAvx512Params& p, float out[8]) {
  const __m512 mean = _mm512_set1_ps(p.mean), invstd = _mm512_set1_ps(p.invstd);
  const __m512 weight = _mm512_set1_ps(p.weight), bias = _mm512_set1_ps(p.bias), zero = _mm512_setzero_ps();
  __m512 s[8];
  for (int r = 0; r < 8; ++r) s[r] = zero;
  for (int64_t q = 0; q < p.n; q += 16) {
    const __mmask16 m = lane_range(0, p.n - q);
    const __m512 z = _mm512_maskz_loadu_ps(m, p.z2 + q);
    const __m512 a = _mm512_maskz_loadu_ps(m, p.da + q);
    const __m512 e = _mm512_maskz_loadu_ps(m, p.dq + q);
    __m512 g2 = _mm512_maskz_loadu_ps(m, p.grad + q);
    const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(z, mean), invstd);
    if (Relu) {
      const __m512 pre = _mm512_fmadd_ps(weight, xh, bias);
      g2 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(pre, zero, _CMP_GT_OQ), g2);
    }
    s[0] = _mm512_add_ps(s[0], g2);
    s[1] = _mm512_fmadd_ps(g2, xh, s[1]);
    s[2] = _mm512_fmadd_ps(a, g2, s[2]);
    s[3] = _mm512_add_ps(s[3], a);
    s[4] = _mm512_fmadd_ps(a, xh, s[4]);
    s[5] = _mm512_fmadd_ps(e, g2, s[5]);
    s[6] = _mm512_add_ps(s[6], e);
    s[7] = _mm512_fmadd_ps(e, xh, s[7]);
  }
  for (int r = 0; r < 8; ++r) out[r] = _mm512_reduce_add_ps(s[r]);
}

}  // namespace

void avx512_bn_cheap_sums(const BnCheapSumsAvx512Params& p, float out[8]) {
  if (p.act == static_cast<int>(Act::ReLU)) {
    cheap_sums<true>(p, out);
  } else {
    cheap_sums<false>(p, out);
  }
}

GK_AVX512_REGION_END
#else
// Never called: avx512_bn_cheap_sums_available() is false.
void avx512_bn_cheap_sums(const BnCheapSumsAvx512Params&, float[8]) {}
#endif

}  // namespace cpu
}  // namespace ghostkernels
