// Small AVX-512 helpers shared by the AVX-512 kernel files. Include it only inside a file's AVX-512 region, right
// after GK_AVX512_REGION_BEGIN (util_avx512_target.h, which also includes <immintrin.h>), and outside any namespace;
// include its own headers (<cmath>, <cstdint>, activations.h) before the region, so their inline functions are not
// compiled for AVX-512.
//
// Everything here has internal linkage (an anonymous namespace) on purpose: an inline function with external
// linkage compiled with AVX-512 in one file and without it in another is one symbol to the linker, which may keep
// the AVX-512 copy for every caller; on a CPU without AVX-512 that would be an illegal instruction in the generic
// kernels.
#pragma once

#include <cmath>
#include <cstdint>

#include "../activations.h"

namespace ghostkernels {
namespace cpu {
namespace {

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// Asks for the `bytes` bytes at p to be brought into L1 ahead of use, one prefetch per 64-byte cache line. For
// reads the hardware prefetchers were measured not to hide (bench/NOTES.md entries 33 and 34); a hint, so an
// address past the end of an allocation is harmless.
inline void prefetch_l1(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_T0);
}

// Lanes [lo, hi) of a 16-lane vector, both clamped to [0, 16].
inline __mmask16 lane_range(int64_t lo, int64_t hi) {
  lo = imax(lo, 0);
  hi = imin(hi, 16);
  if (hi <= lo) return 0;
  return static_cast<__mmask16>(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

// The same functions as act_forward in activations.h, 16 lanes at a time.
template <Act A>
inline __m512 act_v(__m512 z) {
  const __m512 zero = _mm512_setzero_ps();
  if constexpr (A == Act::ReLU) {
    return _mm512_max_ps(z, zero);
  } else if constexpr (A == Act::ReLU6) {
    return _mm512_min_ps(_mm512_max_ps(z, zero), _mm512_set1_ps(6.f));
  } else if constexpr (A == Act::HardSwish) {
    const __m512 r = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(z, _mm512_set1_ps(3.f)), zero), _mm512_set1_ps(6.f));
    return _mm512_div_ps(_mm512_mul_ps(z, r), _mm512_set1_ps(6.f));
  } else if constexpr (A == Act::SiLU) {
    // No vector exp in the ISA; a lane loop over expf keeps the result identical to the scalar kernels.
    alignas(64) float t[16];
    _mm512_store_ps(t, z);
    for (int l = 0; l < 16; ++l) t[l] = t[l] / (1.f + std::exp(-t[l]));
    return _mm512_load_ps(t);
  } else {
    return z;
  }
}

// 16 elements (the lanes `mask`, the others zero) as floats, from float32 or raw bfloat16 memory.
inline __m512 load_f32(__mmask16 mask, const float* src) { return _mm512_maskz_loadu_ps(mask, src); }
inline __m512 load_f32(__mmask16 mask, const uint16_t* src) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, src)), 16));
}

// 16 elements as floats, unmasked.
inline __m512 load_f32(const float* src) { return _mm512_loadu_ps(src); }
inline __m512 load_f32(const uint16_t* src) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src))), 16));
}

// v rounded to bfloat16 (to nearest even; NaN stays a quiet NaN), the 16 words in a 256-bit vector. Integer
// arithmetic rather than AVX-512 BF16's vcvtneps2bf16, so that the bfloat16 kernels also run on AVX-512 CPUs
// without BF16 (Ice Lake, Zen 3); the two differ only for denormal inputs, which that instruction flushes to zero.
// round_to_bf16_hi: the same rounding, each bfloat16 left in the upper half of its 32-bit lane (the lower half
// zero), i.e. the rounded value as a float32 bit pattern; two such vectors pack into pairs with a shift and an or.
inline __m512i round_to_bf16_hi(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v), hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_and_si512(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), hi);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_and_si512(bits, hi), _mm512_set1_epi32(0x400000)));
}
inline __m256i round_to_bf16(__m512 v) { return _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_to_bf16_hi(v), 16)); }

// Stores the lanes `mask` of v to float32 memory, or to bfloat16 memory rounding to nearest even.
inline void store_f32(float* dst, __mmask16 mask, __m512 v) { _mm512_mask_storeu_ps(dst, mask, v); }
inline void store_f32(uint16_t* dst, __mmask16 mask, __m512 v) {
  _mm256_mask_storeu_epi16(dst, mask, round_to_bf16(v));
}

// exp(z) for every lane: Cephes' expf (z = n ln 2 + r, |r| <= ln 2 / 2, a degree-6 polynomial for e^r, then a scale
// by 2^n), within 2 ulp of expf over float's range; z is clamped to [-87.3, 88.3] first (e^z stays finite and
// normal). For the DFC gate's sigmoid, where a lane loop over expf (act_v's SiLU) would cost more than the gate.
inline __m512 exp_v(__m512 z) {
  z = _mm512_min_ps(_mm512_max_ps(z, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(z, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), z);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(_mm512_mul_ps(y, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(y, n);
}

// 1 / (1 + exp(-z)) for every lane.
inline __m512 sigmoid_v(__m512 z) {
  const __m512 one = _mm512_set1_ps(1.f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp_v(_mm512_sub_ps(_mm512_setzero_ps(), z))));
}

// Transposes the 16 x 16 floats of r in place (afterwards r[j] lane i is what r[i] lane j was): four rounds of 16
// shuffles (pairs of rows, then quads within 128-bit lanes, then 128-bit lanes across rows in two). Callers index r
// with constants only (loops fully unrolled), so that it stays in registers: a runtime index puts it on the stack.
inline void transpose_16x16(__m512 (&r)[16]) {
  __m512 t[16];
  // t[2i], 128-bit lane L: r2i[4L], r2i+1[4L], r2i[4L+1], r2i+1[4L+1]; t[2i+1] the same for 4L+2, 4L+3.
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // r[4g + j], 128-bit lane L: column 4L + j of rows 4g .. 4g + 3.
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {
    r[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    r[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
    r[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    r[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
  // Column 4L + j = 128-bit lane L of r[j], r[4 + j], r[8 + j], r[12 + j], gathered in two rounds of 128-bit shuffles.
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512 v0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x44), v1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xEE);
    const __m512 w0 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x44);
    const __m512 w1 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xEE);
    t[j] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    t[4 + j] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
    t[8 + j] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

}  // namespace
}  // namespace cpu
}  // namespace ghostkernels
