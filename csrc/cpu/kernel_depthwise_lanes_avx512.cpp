// The small-map depthwise convolution with channels in the vector lanes (kernel_depthwise_lanes_avx512.h says what
// and why).
//
// As in the other AVX-512 files: no torch header, and the AVX-512 code sits in the AVX-512 region
// (util_avx512_target.h) with internal linkage, so the library still loads and runs on CPUs without AVX-512.
#include "kernel_depthwise_lanes_avx512.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../activations.h"

#include "util_avx512_target.h"

namespace ghostkernels {
namespace cpu {

namespace {

constexpr int64_t kLanes = 16;

int64_t tile_floats(const DepthwiseAvx512Params& p) {
  const int64_t pad = p.K / 2;
  return (p.H + 2 * pad) * (p.W + 2 * pad) * kLanes;
}

// The output buffer: an item's Ho * Wo pixels (16 channels each), rounded up to whole 32-pixel blocks for the
// transpose out.
int64_t out_floats(const DepthwiseAvx512Params& p) {
  return (p.Ho * p.Wo + 2 * kLanes - 1) / (2 * kLanes) * (2 * kLanes) * kLanes;
}

}  // namespace

bool avx512_depthwise_lanes_applies(const DepthwiseAvx512Params& p) {
  const int64_t limit = p.K >= 5 ? kDepthwiseLanesMaxTileBytesK5 : kDepthwiseLanesMaxTileBytes;
  return avx512_depthwise_available(p.bf16, p.K, p.stride) && p.K > 1 &&
         tile_floats(p) * static_cast<int64_t>(sizeof(float)) <= limit;
}

int64_t avx512_depthwise_lanes_scratch_floats(const DepthwiseAvx512Params& p) {
  // + kLanes: room to align the tile to a cache line; then the group's weights and bias, and the table of input
  // pixels' places (int32).
  return kLanes + tile_floats(p) + out_floats(p) + (p.K * p.K + 1) * kLanes + p.H * p.W;
}

#if GK_AVX512_KERNELS
GK_AVX512_REGION_BEGIN

}  // namespace cpu
}  // namespace ghostkernels

#include "util_avx512_common.h"

namespace ghostkernels {
namespace cpu {
namespace {

// Output pixels computed together: their accumulators' multiply-add chains interleave (4 cycles of latency each on
// the CPUs of bench/NOTES.md, one multiply-add issued per cycle), and with 5x5 taps the 25 weight vectors, 4
// accumulators and a temporary fill the 32 registers.
constexpr int kPixels = 4;

// The 16 channels' input planes of one image (nc of them; the rest read as zeros) into the tile's interior: pixel q
// (flat index y * W + x) at tile[at[q]] (row y + pad, column x + pad). 16 x 16 transposes of 32-bit lanes: float32
// takes 16 pixels per transpose; bfloat16 takes 32, a lane holding two neighbouring pixels' words, which a shift
// and a mask then widen apart (half the shuffles of widening first: the transposes were most of a 14x14 item).
inline void transpose_in(const float* x, int64_t nc, int64_t HW, const int32_t* at, float* tile) {
  for (int64_t q0 = 0; q0 < HW; q0 += kLanes) {
    const __mmask16 m = lane_range(0, HW - q0);
    __m512 r[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) r[i] = i < nc ? _mm512_maskz_loadu_ps(m, x + i * HW + q0) : _mm512_setzero_ps();
    transpose_16x16(r);
    const int64_t n = std::min<int64_t>(kLanes, HW - q0);
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) {
      if (j < n) _mm512_store_ps(tile + at[q0 + j], r[j]);
    }
  }
}

inline void transpose_in(const uint16_t* x, int64_t nc, int64_t HW, const int32_t* at, float* tile) {
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t q0 = 0; q0 < HW; q0 += 2 * kLanes) {
    const int64_t n = std::min<int64_t>(2 * kLanes, HW - q0);
    const __mmask32 m = static_cast<__mmask32>(n == 32 ? ~0u : (1u << n) - 1u);
    __m512 r[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      r[i] = i < nc ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m, x + i * HW + q0)) : _mm512_setzero_ps();
    }
    transpose_16x16(r);
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) {
      const __m512i pair = _mm512_castps_si512(r[j]);
      if (2 * j < n) _mm512_store_ps(tile + at[q0 + 2 * j], _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16)));
      if (2 * j + 1 < n) _mm512_store_ps(tile + at[q0 + 2 * j + 1], _mm512_castsi512_ps(_mm512_and_si512(pair, hi)));
    }
  }
}

// NP output pixels, flat indices q .. q + NP - 1 of the Ho x Wo output, into o (16 floats each): bias plus the K*K
// taps of each, an aligned tile load times the tap's weight vector; returns their sum (after the activation).
template <int K, int S, Act A, int NP>
inline __m512 pixels(const float* tile, int64_t Wt, int64_t Wo, int64_t q, const __m512 (&wv)[K * K], __m512 bias,
                     float* o) {
  const float* base[NP];
  __m512 acc[NP];
  for (int r = 0; r < NP; ++r) {
    const int64_t oy = (q + r) / Wo, ox = (q + r) % Wo;
    base[r] = tile + (S * oy * Wt + S * ox) * kLanes;
    acc[r] = bias;
  }
#pragma GCC unroll 7
  for (int ky = 0; ky < K; ++ky) {
#pragma GCC unroll 7
    for (int kx = 0; kx < K; ++kx) {
#pragma GCC unroll 4
      for (int r = 0; r < NP; ++r) {
        acc[r] = _mm512_fmadd_ps(_mm512_load_ps(base[r] + (ky * Wt + kx) * kLanes), wv[ky * K + kx], acc[r]);
      }
    }
  }
  __m512 sum = _mm512_setzero_ps();
  for (int r = 0; r < NP; ++r) {
    acc[r] = act_v<A>(acc[r]);
    sum = _mm512_add_ps(sum, acc[r]);
    _mm512_store_ps(o + r * kLanes, acc[r]);
  }
  return sum;
}

// The buffered output pixels (n of them; o holds whole 32-pixel blocks) into the nc output planes (out: the
// group's first plane), 16 x 16 transposes of 32-bit lanes as in transpose_in: float32 16 pixels at a time,
// bfloat16 32 (two neighbouring pixels rounded and packed into a lane first).
inline void transpose_out(const float* o, int64_t n, int64_t nc, float* out) {
  for (int64_t q0 = 0; q0 < n; q0 += kLanes) {
    __m512 r[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) r[j] = _mm512_load_ps(o + (q0 + j) * kLanes);
    transpose_16x16(r);
    const __mmask16 m = lane_range(0, n - q0);
#pragma GCC unroll 16
    for (int c = 0; c < 16; ++c) {
      if (c < nc) _mm512_mask_storeu_ps(out + c * n + q0, m, r[c]);
    }
  }
}

inline void transpose_out(const float* o, int64_t n, int64_t nc, uint16_t* out) {
  for (int64_t q0 = 0; q0 < n; q0 += 2 * kLanes) {
    __m512 r[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) {
      const float* e = o + (q0 + 2 * j) * kLanes;
      const __m512i lo = _mm512_srli_epi32(round_to_bf16_hi(_mm512_load_ps(e)), 16);
      r[j] = _mm512_castsi512_ps(_mm512_or_si512(lo, round_to_bf16_hi(_mm512_load_ps(e + kLanes))));
    }
    transpose_16x16(r);
    const int64_t left = std::min<int64_t>(2 * kLanes, n - q0);
    const __mmask32 m = static_cast<__mmask32>(left == 32 ? ~0u : (1u << left) - 1u);
#pragma GCC unroll 16
    for (int c = 0; c < 16; ++c) {
      if (c < nc) _mm512_mask_storeu_epi16(out + c * n + q0, m, _mm512_castps_si512(r[c]));
    }
  }
}

// Group g's weights as K*K vectors of its 16 channels' tap t, then its bias (lanes past the group's nc channels
// zero): the group's [nc][K*K] block of p.w transposed, 16 taps at a time.
void pack_group(const DepthwiseAvx512Params& p, int64_t c0, int64_t nc, float* packed) {
  const int64_t taps = p.K * p.K;
  for (int64_t t0 = 0; t0 < taps; t0 += kLanes) {
    const __mmask16 m = lane_range(0, taps - t0);
    __m512 r[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) r[i] = i < nc ? _mm512_maskz_loadu_ps(m, p.w + (c0 + i) * taps + t0) : _mm512_setzero_ps();
    transpose_16x16(r);
#pragma GCC unroll 16
    for (int t = 0; t < 16; ++t) {
      if (t0 + t < taps) _mm512_store_ps(packed + (t0 + t) * kLanes, r[t]);
    }
  }
  _mm512_store_ps(packed + taps * kLanes, _mm512_maskz_loadu_ps(lane_range(0, nc), p.b + c0));
}

template <typename E, int K, int S, Act A>
void lanes_items(const DepthwiseAvx512Params& p, int64_t N, int64_t begin, int64_t end, float* scratch) {
  constexpr int64_t pad = K / 2, taps = K * K;
  const int64_t Wt = p.W + 2 * pad, n_out = p.Ho * p.Wo;
  // The tile at a cache-line boundary: every tap load is then one aligned line.
  float* tile = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t{63});
  float* o = tile + tile_floats(p);
  float* packed = o + out_floats(p);
  // Each input pixel's place in the tile (in floats), once per call.
  int32_t* at = reinterpret_cast<int32_t*>(packed + (taps + 1) * kLanes);
  for (int64_t y = 0; y < p.H; ++y) {
    for (int64_t x = 0; x < p.W; ++x) at[y * p.W + x] = static_cast<int32_t>(((y + pad) * Wt + x + pad) * kLanes);
  }
  // The border is never written by transpose_in: zeroed once per call (per thread), the interior overwritten by
  // every item.
  std::memset(tile, 0, tile_floats(p) * sizeof(float));
  int64_t packed_group = -1;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t g = item / N, n = item % N, c0 = g * kLanes, nc = std::min(kLanes, p.C - c0);
    if (g != packed_group) {
      pack_group(p, c0, nc, packed);
      packed_group = g;
    }
    transpose_in(static_cast<const E*>(p.x) + (n * p.C + c0) * p.H * p.W, nc, p.H * p.W, at, tile);
    __m512 wv[taps];
    for (int64_t t = 0; t < taps; ++t) wv[t] = _mm512_load_ps(packed + t * kLanes);
    const __m512 bias = _mm512_load_ps(packed + taps * kLanes);
    __m512 sum = _mm512_setzero_ps();
    int64_t q = 0;
    for (; q + kPixels <= n_out; q += kPixels) {
      sum = _mm512_add_ps(sum, pixels<K, S, A, kPixels>(tile, Wt, p.Wo, q, wv, bias, o + q * kLanes));
    }
    for (; q < n_out; ++q) sum = _mm512_add_ps(sum, pixels<K, S, A, 1>(tile, Wt, p.Wo, q, wv, bias, o + q * kLanes));
    transpose_out(o, n_out, nc, static_cast<E*>(p.out) + (n * p.C + c0) * n_out);
    if (p.plane_sums != nullptr) _mm512_mask_storeu_ps(p.plane_sums + n * p.C + c0, lane_range(0, nc), sum);
  }
}

}  // namespace

void avx512_depthwise_lanes(const DepthwiseAvx512Params& p, int64_t N, int64_t begin, int64_t end, float* scratch) {
  const auto run = [&](auto e, auto k, auto s) {
    dispatch_act(static_cast<Act>(p.act), [&](auto a) {
      lanes_items<decltype(e), decltype(k)::value, decltype(s)::value, decltype(a)::value>(p, N, begin, end, scratch);
    });
  };
  const auto with_k = [&](auto e, auto s) {
    switch (p.K) {
      case 3: run(e, std::integral_constant<int, 3>{}, s); break;
      case 5: run(e, std::integral_constant<int, 5>{}, s); break;
      default: run(e, std::integral_constant<int, 7>{}, s); break;
    }
  };
  const auto with_stride = [&](auto e) {
    if (p.stride == 1) {
      with_k(e, std::integral_constant<int, 1>{});
    } else {
      with_k(e, std::integral_constant<int, 2>{});
    }
  };
  if (p.bf16) {
    with_stride(uint16_t{});
  } else {
    with_stride(float{});
  }
}

GK_AVX512_REGION_END
#else
// Never called: avx512_depthwise_lanes_applies() is false.
void avx512_depthwise_lanes(const DepthwiseAvx512Params&, int64_t, int64_t, int64_t, float*) {}
#endif

}  // namespace cpu
}  // namespace ghostkernels
