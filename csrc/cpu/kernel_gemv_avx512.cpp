// The AVX-512 kernel of ghostkernels::linear_act (see kernel_gemv_avx512.h for what it computes and why).
//
// As in the other AVX-512 files: no torch header, and the AVX-512 code sits in the AVX-512 region
// (util_avx512_target.h) with internal linkage, so the library still loads and runs on CPUs without AVX-512.
#include "kernel_gemv_avx512.h"

#include <cstdint>
#include <type_traits>

#include "../activations.h"
#include "util_cpu_features.h"

#include "util_avx512_target.h"

namespace ghostkernels {
namespace cpu {

bool avx512_gemv_available(bool bf16) {
  (void)bf16;  // bfloat16 is widened on load and rounded by integer arithmetic: no AVX-512 BF16 needed
#if GK_AVX512_KERNELS
  return cpu_has_avx512(false);
#else
  return false;
#endif
}

bool avx512_gemv_bf16_dot() {
#if GK_AVX512_KERNELS
  return cpu_has_avx512(true);
#else
  return false;
#endif
}

#if GK_AVX512_KERNELS
// avx512bf16 adds the bf16_dot tiles' vdpbf16ps; the other tiles run on AVX-512 CPUs without it.
GK_AVX512_REGION_BEGIN

}  // namespace cpu
}  // namespace ghostkernels

#include "util_avx512_common.h"

namespace ghostkernels {
namespace cpu {
namespace {

inline float to_float(float v) { return v; }
inline float to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}
inline void store_one(float* dst, float v) { *dst = v; }
inline void store_one(uint16_t* dst, float v) { store_f32(dst, 1, _mm512_set1_ps(v)); }

// The next row block's weights, a line per row per step of the k loop, into L1 while this block computes: the R
// rows of a block are one contiguous run of R * K elements and the next block's follow it, so this streams w in its
// memory order one block ahead. Without it the R interleaved row streams (each crossing a 4 KB page every few
// steps) ran at 5-13 GB/s from the last-level cache, a half of GhostNet's head time (bench/NOTES.md, entry 62).
// A hint: past w's end it is harmless.
struct NextBlockPrefetch {
  const char* next;
  int64_t end, off = 0;
  template <int R>
  inline void step() {
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i, off += 64)
      if (off < end) _mm_prefetch(next + off, _MM_HINT_T0);
  }
};

// Rows [o, o + R) for images [n, n + G): R x G accumulators over k, 16 lanes at a time (the last step masked).
// T: the element type of x and y; TW: of w and b.
// Dot (bfloat16 x and w, T = TW = uint16_t): AVX-512 BF16's dot product instead, 32 k per step, each lane summing
// two products per instruction (vdpbf16ps: float32 accumulation rounded to nearest even, denormal inputs and
// results flushed to zero); half the loads and no widening, which took as many instructions as the multiply-adds.
// Its masked tail loads zeros into both operands, so the odd k of a pair adds 0 * 0.
template <int R, int G, typename T, typename TW, bool Dot>
void gemv_tile(const GemvAvx512Params& p, int64_t o, int64_t n) {
  static_assert(!Dot || (std::is_same_v<T, uint16_t> && std::is_same_v<TW, uint16_t>), "Dot is bfloat16 only");
  constexpr int64_t kStep = Dot ? 32 : 16;
  const T* x = static_cast<const T*>(p.x) + n * p.ldx;
  const TW* w = static_cast<const TW*>(p.w) + o * p.K;
  const int64_t K = p.K;
  NextBlockPrefetch pf{reinterpret_cast<const char*>(w + R * K), static_cast<int64_t>(R * K * sizeof(TW))};
  __m512 acc[R][G];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < G; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += kStep) {
    pf.step<R>();
    if constexpr (Dot) {
      const __mmask32 m = K - k >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << (K - k)) - 1u);
      __m512i wv[R], xv[G];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) wv[i] = _mm512_maskz_loadu_epi16(m, w + i * K + k);
#pragma GCC unroll 4
      for (int j = 0; j < G; ++j) xv[j] = _mm512_maskz_loadu_epi16(m, x + j * p.ldx + k);
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < G; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)wv[i], (__m512bh)xv[j]);
    } else {
      const __mmask16 m = lane_range(0, K - k);
      __m512 wv[R], xv[G];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) wv[i] = load_f32(m, w + i * K + k);
#pragma GCC unroll 4
      for (int j = 0; j < G; ++j) xv[j] = load_f32(m, x + j * p.ldx + k);
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < G; ++j) acc[i][j] = _mm512_fmadd_ps(wv[i], xv[j], acc[i][j]);
    }
  }
  const TW* b = static_cast<const TW*>(p.b) + o;
  T* y = static_cast<T*>(p.y) + n * p.ldy + o;
  const Act act = static_cast<Act>(p.act);
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) {
    const float bias = to_float(b[i]);
#pragma GCC unroll 4
    for (int j = 0; j < G; ++j) store_one(y + j * p.ldy + i, act_forward(act, _mm512_reduce_add_ps(acc[i][j]) + bias));
  }
}

// All images for rows [o, o + R): groups of four, then the remainder.
template <int R, typename T, typename TW, bool Dot>
void gemv_rows(const GemvAvx512Params& p, int64_t o) {
  int64_t n = 0;
  for (; n + 4 <= p.N; n += 4) gemv_tile<R, 4, T, TW, Dot>(p, o, n);
  switch (p.N - n) {
    case 3: gemv_tile<R, 3, T, TW, Dot>(p, o, n); break;
    case 2: gemv_tile<R, 2, T, TW, Dot>(p, o, n); break;
    case 1: gemv_tile<R, 1, T, TW, Dot>(p, o, n); break;
    default: break;
  }
}

template <typename T, typename TW, bool Dot = false>
void gemv_blocks(const GemvAvx512Params& p, int64_t begin, int64_t end) {
  for (int64_t blk = begin; blk < end; ++blk) {
    const int64_t o = blk * kGemvRowBlock;
    switch (p.O - o < kGemvRowBlock ? p.O - o : kGemvRowBlock) {
      case 4: gemv_rows<4, T, TW, Dot>(p, o); break;
      case 3: gemv_rows<3, T, TW, Dot>(p, o); break;
      case 2: gemv_rows<2, T, TW, Dot>(p, o); break;
      case 1: gemv_rows<1, T, TW, Dot>(p, o); break;
      default: break;
    }
  }
}

}  // namespace

void avx512_gemv_blocks(const GemvAvx512Params& p, int64_t begin, int64_t end) {
  if (p.bf16 && p.bf16_dot) {
    gemv_blocks<uint16_t, uint16_t, true>(p, begin, end);
  } else if (p.bf16) {
    gemv_blocks<uint16_t, uint16_t>(p, begin, end);
  } else if (p.bf16_weights) {
    gemv_blocks<float, uint16_t>(p, begin, end);
  } else {
    gemv_blocks<float, float>(p, begin, end);
  }
}

GK_AVX512_REGION_END
#else
// Never called: avx512_gemv_available() is false.
void avx512_gemv_blocks(const GemvAvx512Params&, int64_t, int64_t) {}
#endif

}  // namespace cpu
}  // namespace ghostkernels
