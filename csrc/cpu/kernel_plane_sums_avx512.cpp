// The AVX-512 plane sums (kernel_plane_sums_avx512.h says what and why).
//
// As in the other AVX-512 files: no torch header, and the AVX-512 code sits in the AVX-512 region
// (util_avx512_target.h) with internal linkage, so the library still loads and runs on CPUs without AVX-512.
#include "kernel_plane_sums_avx512.h"

#include <cstdint>

#include "../activations.h"
#include "util_cpu_features.h"

#include "util_avx512_target.h"

namespace ghostkernels {
namespace cpu {

bool avx512_plane_sums_available() {
#if GK_AVX512_KERNELS
  return cpu_has_avx512(false);
#else
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

// The 16 lanes of plane p's partial sums: whole vectors, then the last HW % 16 elements masked.
template <typename E>
inline __m512 plane_partial(const E* plane, int64_t HW, __mmask16 tail) {
  __m512 acc = _mm512_setzero_ps();
  int64_t q = 0;
  for (; q + 16 <= HW; q += 16) acc = _mm512_add_ps(acc, load_f32(plane + q));
  return tail != 0 ? _mm512_add_ps(acc, load_f32(tail, plane + q)) : acc;
}

template <typename E>
void plane_sums(const E* x, int64_t HW, int64_t begin, int64_t end, float* sums) {
  const __mmask16 tail = lane_range(0, HW % 16);
  for (int64_t p0 = begin; p0 < end; p0 += 16) {
    const int64_t n = imin(16, end - p0);
    __m512 r[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) r[i] = i < n ? plane_partial(x + (p0 + i) * HW, HW, tail) : _mm512_setzero_ps();
    // After the transpose lane i of r[j] is lane j of plane i's partial sums: adding the 16 vectors sums each plane.
    transpose_16x16(r);
#pragma GCC unroll 8
    for (int s = 8; s >= 1; s /= 2) {
#pragma GCC unroll 8
      for (int j = 0; j < s; ++j) r[j] = _mm512_add_ps(r[j], r[j + s]);
    }
    _mm512_mask_storeu_ps(sums + p0, lane_range(0, n), r[0]);
  }
}

}  // namespace

void avx512_plane_sums(bool bf16, const void* x, int64_t HW, int64_t begin, int64_t end, float* sums) {
  if (bf16) {
    plane_sums(static_cast<const uint16_t*>(x), HW, begin, end, sums);
  } else {
    plane_sums(static_cast<const float*>(x), HW, begin, end, sums);
  }
}

GK_AVX512_REGION_END
#else
// Never called: avx512_plane_sums_available() is false.
void avx512_plane_sums(bool, const void*, int64_t, int64_t, int64_t, float*) {}
#endif

}  // namespace cpu
}  // namespace ghostkernels
