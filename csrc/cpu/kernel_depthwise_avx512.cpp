// The AVX-512 depthwise convolution and the small-channel dense one (see kernel_depthwise_avx512.h for what they
// compute and why).
//
// As in kernel_ghost_forward_avx512.cpp: no torch header, and the AVX-512 code sits in the AVX-512 region
// (util_avx512_target.h) with internal linkage, so the library still loads and runs on CPUs without AVX-512.
//
// Numerics: float32 accumulation; each output is b + the k*k taps added row by row with fused multiply-adds
// (bfloat16 inputs are widened exactly, only the output is rounded). Results differ from oneDNN's by rounding only.
#include "kernel_depthwise_avx512.h"

#include <array>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../activations.h"
#include "util_cpu_features.h"

#include "util_avx512_target.h"

namespace ghostkernels {
namespace cpu {

namespace {

constexpr int64_t kVecLanes = 16;
// Zeros kept before the first phase plane and after each one: the first tap of the first vector reads up to
// ceil(p/s) elements before a plane, and the unmasked loads of the last vector up to 16 elements past it.
constexpr int64_t kPhaseSlack = 2 * kVecLanes;

constexpr int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// The geometry every tap shares: a tap at offset u = d - p (d = dy or dx) reads phase u mod s at offset
// floor(u / s); the offsets run from lo = floor(-p / s) to hi = floor(p / s).
struct PhaseGeometry {
  int64_t s, p, lo, hi;
  constexpr int64_t offsets() const { return hi - lo + 1; }
};

constexpr PhaseGeometry geometry(int64_t K, int64_t stride) {
  const int64_t p = K / 2;
  return PhaseGeometry{stride, p, floor_div(-p, stride), floor_div(p, stride)};
}

// Floats of one phase plane: rows [lo, Ho + hi), pitch Wo, and the slack after it.
int64_t phase_floats(const DepthwiseAvx512Params& p) {
  const PhaseGeometry g = geometry(p.K, p.stride);
  return (p.Ho + g.hi - g.lo) * p.Wo + kPhaseSlack;
}

}  // namespace

bool avx512_depthwise_available(bool bf16, int64_t K, int64_t stride) {
  (void)bf16;  // bfloat16 is widened on load and rounded by integer arithmetic: no AVX-512 BF16 needed
#if GK_AVX512_KERNELS
  return cpu_has_avx512(false) && (K == 1 || K == 3 || K == 5 || K == 7) && (stride == 1 || stride == 2);
#else
  (void)K;
  (void)stride;
  return false;
#endif
}

std::vector<uint16_t> avx512_depthwise_column_masks(int64_t K, int64_t stride, int64_t Ho, int64_t Wo) {
  const PhaseGeometry g = geometry(K, stride);
  const int64_t n = g.offsets(), vecs = (Ho * Wo + kVecLanes - 1) / kVecLanes;
  std::vector<uint16_t> m(vecs * n);
  for (int64_t v = 0; v < vecs; ++v) {
    for (int64_t o = 0; o < n; ++o) {
      uint16_t bits = 0;
      for (int64_t l = 0; l < kVecLanes; ++l) {
        const int64_t col = (v * kVecLanes + l) % Wo + g.lo + o;
        if (col >= 0 && col < Wo) bits = static_cast<uint16_t>(bits | (1u << l));
      }
      m[v * n + o] = bits;
    }
  }
  return m;
}

int64_t avx512_depthwise_scratch_floats(const DepthwiseAvx512Params& p) {
  return kPhaseSlack + p.stride * p.stride * phase_floats(p);
}

bool avx512_small_conv_available(bool bf16, int64_t Ci, int64_t K, int64_t stride) {
  return Ci >= 1 && Ci <= kSmallConvMaxInputChannels && avx512_depthwise_available(bf16, K, stride);
}

namespace {

// The depthwise geometry of one input plane of a small-channel convolution (phase_floats reads only these fields).
DepthwiseAvx512Params plane_geometry(const SmallConvAvx512Params& p) {
  DepthwiseAvx512Params d{};
  d.H = p.H, d.W = p.W, d.K = p.K, d.stride = p.stride, d.Ho = p.Ho, d.Wo = p.Wo;
  return d;
}

}  // namespace

int64_t avx512_small_conv_scratch_floats(const SmallConvAvx512Params& p) {
  return kPhaseSlack + p.Ci * p.stride * p.stride * phase_floats(plane_geometry(p));
}

#if GK_AVX512_KERNELS
GK_AVX512_REGION_BEGIN

}  // namespace cpu
}  // namespace ghostkernels

#include "util_avx512_common.h"

namespace ghostkernels {
namespace cpu {
namespace {

// Rows read ahead (in the same row phase) while splitting a plane: the input rows are read with masked loads, one
// plane after another, and the hardware prefetchers did not keep up with them (`perf`: the loads of split_phases
// were a tenth of a batch-1 forward's samples). 8 rows: bench/NOTES.md entry 34.
constexpr int64_t kPrefetchRows = 8;

// The stride-2 phase rows of an input of at most 32 columns: phase row t of row phase a (t < rows) is input row
// r = 2 * (t + first) + a, given by row_at(r) (nullptr: a zero row), split into its even and odd columns with one
// pair of masked loads, no loop over the row and no memset call. For GhostNet's 28x28 and 14x14 maps the general
// loops spent most of their time on loop control and memset calls (a third of the 14x14 stride-2 convolution's
// time on a Zen 5 VM, bench/NOTES.md entry 62).
// Each phase row is stored as a whole vector, unmasked (Wo <= 16): its lanes past Wo (zeros, from the masked loads)
// land on the next phase row, which is stored after it and overwrites them, or, for a plane's last row, in the slack
// after the plane (kPhaseSlack), which only lanes never stored read. Rows of at most 16 columns take one load.
template <typename RowAt>
void split_narrow_rows(int64_t W, int64_t Wo, int64_t rows, int64_t first, float* phases, int64_t stride_f,
                       RowAt&& row_at) {
  const __mmask16 m_lo = lane_range(0, W), m_hi = lane_range(0, W - kVecLanes);
  const bool two_loads = W > kVecLanes;
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int a = 0; a < 2; ++a) {
    for (int64_t t = 0; t < rows; ++t) {
      float* d0 = phases + (2 * a) * stride_f + t * Wo;
      __m512 e = _mm512_setzero_ps(), o = e;
      if (const auto* src = row_at(2 * (t + first) + a)) {
        const __m512 lo = load_f32(m_lo, src), hi = two_loads ? load_f32(m_hi, src + kVecLanes) : _mm512_setzero_ps();
        e = _mm512_permutex2var_ps(lo, even, hi);
        o = _mm512_permutex2var_ps(lo, odd, hi);
      }
      _mm512_storeu_ps(d0, e);
      _mm512_storeu_ps(d0 + stride_f, o);
    }
  }
}

// Writes the s*s phase planes of one input plane: phase (a, b) row i (i in [lo, Ho + hi)), column j (< Wo) is
// x[s*i + a][s*j + b], zero outside the input. Phase (a, b) starts at phases + (a*s + b) * stride_f, its row lo at
// the start.
template <typename E, int S>
void split_phases(const E* x, int64_t H, int64_t W, int64_t Ho, int64_t Wo, const PhaseGeometry& g, float* phases,
                  int64_t stride_f) {
  const int64_t rows = Ho + g.hi - g.lo;
  if constexpr (S == 2) {
    if (W <= 2 * kVecLanes) {
      // The next plane, prefetched whole (the general loop below prefetches rows ahead).
      prefetch_l1(x + H * W, H * W * static_cast<int64_t>(sizeof(E)));
      split_narrow_rows(W, Wo, rows, g.lo, phases, stride_f,
                        [&](int64_t r) -> const E* { return r >= 0 && r < H ? x + r * W : nullptr; });
      return;
    }
  }
  for (int a = 0; a < S; ++a) {
    for (int64_t t = 0; t < rows; ++t) {
      const int64_t r = S * (t + g.lo) + a;
      float* d0 = phases + (a * S) * stride_f + t * Wo;
      if (r < 0 || r >= H) {
        for (int b = 0; b < S; ++b) std::memset(d0 + b * stride_f, 0, Wo * sizeof(float));
        continue;
      }
      const E* src = x + r * W;
      // The row kPrefetchRows steps ahead in this pass (past the plane's end: the next plane's first rows).
      prefetch_l1(src + S * kPrefetchRows * W, W * static_cast<int64_t>(sizeof(E)));
      if constexpr (S == 1) {
        for (int64_t j = 0; j < Wo; j += kVecLanes) {
          const __mmask16 m = lane_range(0, Wo - j);
          _mm512_mask_storeu_ps(d0 + j, m, load_f32(lane_range(0, W - j), src + j));
        }
      } else {
        // 32 input columns -> 16 of each column phase: even lanes to phase b = 0, odd lanes to b = 1. Loads are
        // masked at the row's end, so columns past W come out as zeros.
        const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        float* d1 = d0 + stride_f;
        int64_t j = 0;
        // Whole vectors first: unmasked loads and stores (masked ones, even with every lane set, were most of the
        // split's time on a Zen 5 core, bench/NOTES.md entry 62).
        for (; 2 * j + 2 * kVecLanes <= W && j + kVecLanes <= Wo; j += kVecLanes) {
          const __m512 lo = load_f32(src + 2 * j), hi = load_f32(src + 2 * j + kVecLanes);
          _mm512_storeu_ps(d0 + j, _mm512_permutex2var_ps(lo, even, hi));
          _mm512_storeu_ps(d1 + j, _mm512_permutex2var_ps(lo, odd, hi));
        }
        for (; j < Wo; j += kVecLanes) {
          const int64_t c = 2 * j;
          const __m512 lo = load_f32(lane_range(0, W - c), src + c);
          const __m512 hi = load_f32(lane_range(0, W - c - kVecLanes), src + c + kVecLanes);
          const __mmask16 m = lane_range(0, Wo - j);
          _mm512_mask_storeu_ps(d0 + j, m, _mm512_permutex2var_ps(lo, even, hi));
          _mm512_mask_storeu_ps(d1 + j, m, _mm512_permutex2var_ps(lo, odd, hi));
        }
      }
    }
  }
}

// The column-mask index of each of the K*K taps (offset index into a vector's masks; -1: the centre column's offset,
// no mask), known at compile time so that the unrolled tap loop has no select between a masked and a plain load.
template <int K, int S>
constexpr std::array<int, K * K> tap_mask_index() {
  constexpr PhaseGeometry g = geometry(K, S);
  std::array<int, K * K> m{};
  for (int dy = 0; dy < K; ++dy) {
    for (int dx = 0; dx < K; ++dx) {
      const int64_t jo = floor_div(dx - K / 2, S);
      m[dy * K + dx] = jo == 0 ? -1 : static_cast<int>(jo - g.lo);
    }
  }
  return m;
}

// Per tap, where its phase plane's row 0 starts for output vector 0 (phases: the S*S phase planes, stride_f floats
// apart, row 0 at the first output row's offset lo; pitch Wo). The same for every plane split into the same scratch,
// so computed once per call rather than once per plane (on GhostNet's 7x7 outputs this setup was a large part of a
// plane's 4 vectors of taps).
template <int K, int S>
struct TapBases {
  const float* base[K * K];
  TapBases(const float* phases, int64_t stride_f, int64_t Wo) {
    constexpr int P = K / 2;
    constexpr PhaseGeometry g = geometry(K, S);
    for (int dy = 0; dy < K; ++dy) {
      const int64_t u = dy - P, a = u - S * floor_div(u, S), io = floor_div(u, S);
      for (int dx = 0; dx < K; ++dx) {
        const int64_t v = dx - P, b = v - S * floor_div(v, S), jo = floor_div(v, S);
        base[dy * K + dx] = phases + (a * S + b) * stride_f + (io - g.lo) * Wo + jo;
      }
    }
  }
};

// Output vectors [v0, v0 + V) of a plane (16 consecutive outputs each) into acc: bias plus the K*K taps, each tap
// one load per vector (masked where its column offset would wrap into the neighbouring row) and one multiply-add by
// the tap's weight. The V accumulators are independent, so their multiply-adds overlap: with one accumulator per
// vector, a vector's K*K multiply-adds formed one dependency chain, and the 5x5 stride-2 convolutions on 14x14
// maps ran at about a quarter of the multiply-add rate (bench/NOTES.md, entry 62).
constexpr int kTapVectors = 4;
template <int K, int S, int V>
inline void taps_vectors(const TapBases<K, S>& tb, const float* w, __m512 bias, const uint16_t* colmask,
                         int64_t v0, __m512* acc) {
  constexpr std::array<int, K * K> mask_index = tap_mask_index<K, S>();
  constexpr int64_t n_off = geometry(K, S).offsets();
  const uint16_t* cm[V];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) {
    cm[v] = colmask + (v0 + v) * n_off;
    acc[v] = bias;
  }
#pragma GCC unroll 49
  for (int t = 0; t < K * K; ++t) {
    const __m512 wt = _mm512_set1_ps(w[t]);
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      const float* src = tb.base[t] + (v0 + v) * kVecLanes;
      const __m512 xv = mask_index[t] < 0 ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(cm[v][mask_index[t]], src);
      acc[v] = _mm512_fmadd_ps(xv, wt, acc[v]);
    }
  }
}

// The n outputs of channel c from its phase planes (tb), written to out; returns their sum (after the activation)
// when `sum` is set, else 0.
template <typename E, int K, int S, Act A>
float plane_taps(const DepthwiseAvx512Params& p, int64_t c, const TapBases<K, S>& tb, E* out, int64_t n, bool sum) {
  const float* w = p.w + c * K * K;
  const __m512 bias = _mm512_set1_ps(p.b[c]);
  __m512 total = _mm512_setzero_ps();
  const auto finish = [&](__m512 acc, int64_t q0) {
    acc = act_v<A>(acc);
    const __mmask16 valid = lane_range(0, n - q0);
    store_f32(out + q0, valid, acc);
    if (sum) total = _mm512_mask_add_ps(total, valid, total, acc);
  };
  // Groups of kTapVectors output vectors, then the last 1-3.
  const int64_t vectors = (n + kVecLanes - 1) / kVecLanes;
  int64_t v0 = 0;
  for (; v0 + kTapVectors <= vectors; v0 += kTapVectors) {
    __m512 acc[kTapVectors];
    taps_vectors<K, S, kTapVectors>(tb, w, bias, p.colmask, v0, acc);
    for (int v = 0; v < kTapVectors; ++v) finish(acc[v], (v0 + v) * kVecLanes);
  }
  __m512 acc[kTapVectors];
  switch (vectors - v0) {
    case 3: taps_vectors<K, S, 3>(tb, w, bias, p.colmask, v0, acc); break;
    case 2: taps_vectors<K, S, 2>(tb, w, bias, p.colmask, v0, acc); break;
    case 1: taps_vectors<K, S, 1>(tb, w, bias, p.colmask, v0, acc); break;
    default: break;
  }
  for (int64_t v = 0; v < vectors - v0; ++v) finish(acc[v], (v0 + v) * kVecLanes);
  return sum ? _mm512_reduce_add_ps(total) : 0.f;
}

template <typename E, int K, int S, Act A>
void plane(const DepthwiseAvx512Params& p, int64_t pl, float* phases, const TapBases<K, S>& tb) {
  const PhaseGeometry g = geometry(K, S);
  const int64_t stride_f = phase_floats(p), n = p.Ho * p.Wo;
  split_phases<E, S>(static_cast<const E*>(p.x) + pl * p.H * p.W, p.H, p.W, p.Ho, p.Wo, g, phases, stride_f);
  E* out = static_cast<E*>(p.out) + pl * n;
  const float total = plane_taps<E, K, S, A>(p, pl % p.C, tb, out, n, p.plane_sums != nullptr);
  if (p.plane_sums != nullptr) p.plane_sums[pl] = total;
}

template <typename E, int K, int S, Act A>
void planes(const DepthwiseAvx512Params& p, int64_t begin, int64_t end, float* scratch) {
  float* phases = scratch + kPhaseSlack;
  const TapBases<K, S> tb(phases, phase_floats(p), p.Wo);
  for (int64_t pl = begin; pl < end; ++pl) plane<E, K, S, A>(p, pl, phases, tb);
}

// avx512_depthwise_band's phase planes: the phase rows of output rows [o0, o0 + bo) from a float plane `in` that
// holds input rows [in_row0, in_row1) (pitch W); other rows, inside the image or not, read as zero (the taps of the
// band never read the ones inside the image: the caller provides every row they need).
template <int S>
void split_band_phases(const float* in, int64_t in_row0, int64_t in_row1, int64_t W, int64_t o0, int64_t bo,
                       int64_t Wo, const PhaseGeometry& g, float* phases, int64_t stride_f) {
  const int64_t rows = bo + g.hi - g.lo;
  if constexpr (S == 2) {
    if (W <= 2 * kVecLanes) {
      split_narrow_rows(W, Wo, rows, o0 + g.lo, phases, stride_f, [&](int64_t r) -> const float* {
        return r >= in_row0 && r < in_row1 ? in + (r - in_row0) * W : nullptr;
      });
      return;
    }
  }
  for (int a = 0; a < S; ++a) {
    for (int64_t t = 0; t < rows; ++t) {
      const int64_t r = S * (o0 + t + g.lo) + a;
      float* d0 = phases + (a * S) * stride_f + t * Wo;
      if (r < in_row0 || r >= in_row1) {
        for (int b = 0; b < S; ++b) std::memset(d0 + b * stride_f, 0, Wo * sizeof(float));
        continue;
      }
      const float* src = in + (r - in_row0) * W;
      for (int64_t j = 0; j < Wo; j += kVecLanes) {
        const __mmask16 m = lane_range(0, Wo - j);
        if constexpr (S == 1) {
          _mm512_mask_storeu_ps(d0 + j, m, _mm512_maskz_loadu_ps(lane_range(0, W - j), src + j));
        } else {
          // Even input columns to column phase 0, odd ones to phase 1 (loads masked at the row's end).
          const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
          const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
          const int64_t c = 2 * j;
          const __m512 lo = _mm512_maskz_loadu_ps(lane_range(0, W - c), src + c);
          const __m512 hi = _mm512_maskz_loadu_ps(lane_range(0, W - c - kVecLanes), src + c + kVecLanes);
          _mm512_mask_storeu_ps(d0 + j, m, _mm512_permutex2var_ps(lo, even, hi));
          _mm512_mask_storeu_ps(d0 + stride_f + j, m, _mm512_permutex2var_ps(lo, odd, hi));
        }
      }
    }
  }
}

template <typename E, int K, int S, Act A>
float band(const DepthwiseAvx512Params& p, const DepthwiseBand& b, float* scratch) {
  const PhaseGeometry g = geometry(K, S);
  const int64_t stride_f = phase_floats(p), bo = b.o1 - b.o0;
  float* phases = scratch + kPhaseSlack;
  const int64_t r0 = std::max<int64_t>(0, b.in_row0), r1 = std::min<int64_t>(p.H, b.in_row0 + b.in_rows);
  split_band_phases<S>(b.in + (r0 - b.in_row0) * p.W, r0, r1, p.W, b.o0, bo, p.Wo, g, phases, stride_f);
  return plane_taps<E, K, S, A>(p, b.c, TapBases<K, S>(phases, stride_f, p.Wo), static_cast<E*>(b.out), bo * p.Wo,
                                b.want_sum);
}

// Calls fn(E{}, K, S, A) with the element type, kernel size, stride and activation as compile-time constants
// (std::integral_constant), for both kernels of this file.
template <typename Fn>
void with_constants(bool bf16, int64_t K, int64_t stride, int act, Fn&& fn) {
  const auto with_act = [&](auto e, auto k, auto s) {
    dispatch_act(static_cast<Act>(act), [&](auto a) { fn(e, k, s, a); });
  };
  const auto with_k = [&](auto e, auto s) {
    switch (K) {
      case 1: with_act(e, std::integral_constant<int, 1>{}, s); break;
      case 3: with_act(e, std::integral_constant<int, 3>{}, s); break;
      case 5: with_act(e, std::integral_constant<int, 5>{}, s); break;
      default: with_act(e, std::integral_constant<int, 7>{}, s); break;
    }
  };
  const auto with_stride = [&](auto e) {
    if (stride == 1) {
      with_k(e, std::integral_constant<int, 1>{});
    } else {
      with_k(e, std::integral_constant<int, 2>{});
    }
  };
  if (bf16) {
    with_stride(uint16_t{});
  } else {
    with_stride(float{});
  }
}

// Output channels [o0, o0 + NB) of image n of the small-channel convolution, from the phase planes of image n's Ci
// input planes (phases + ci * S * S * stride_f). NB channels share every input load: one load and NB fused
// multiply-adds per tap (a broadcast weight operand each), instead of two loads per multiply-add.
template <typename E, int K, int S, Act A, int NB>
void small_conv_block(const SmallConvAvx512Params& p, int64_t n, int64_t o0, const float* phases, int64_t stride_f) {
  constexpr int P = K / 2;
  const PhaseGeometry g = geometry(K, S);
  const int64_t n_px = p.Ho * p.Wo, n_off = g.offsets();
  // Per tap of one input plane: the offset of its phase plane's row 0 (the output vector's offset is added below)
  // and its column mask's index (-1: the centre column, no mask).
  int64_t offset[K * K], mask_index[K * K];
  for (int dy = 0; dy < K; ++dy) {
    const int64_t u = dy - P, a = u - S * floor_div(u, S), io = floor_div(u, S);
    for (int dx = 0; dx < K; ++dx) {
      const int64_t v = dx - P, b = v - S * floor_div(v, S), jo = floor_div(v, S);
      offset[dy * K + dx] = (a * S + b) * stride_f + (io - g.lo) * p.Wo + jo;
      mask_index[dy * K + dx] = jo == 0 ? -1 : jo - g.lo;
    }
  }
  const int64_t Ci = p.Ci, plane_floats = S * S * stride_f, taps = Ci * K * K;
  const float* w = p.w + o0 * taps;
  E* out = static_cast<E*>(p.out) + (n * p.Co + o0) * n_px;
  for (int64_t q0 = 0; q0 < n_px; q0 += kVecLanes) {
    const uint16_t* cm = p.colmask + (q0 / kVecLanes) * n_off;
    __m512 acc[NB];
    for (int j = 0; j < NB; ++j) acc[j] = _mm512_set1_ps(p.b[o0 + j]);
    for (int64_t ci = 0; ci < Ci; ++ci) {
      const float* base = phases + ci * plane_floats + q0;
      const float* wc = w + ci * K * K;
#pragma GCC unroll 49
      for (int t = 0; t < K * K; ++t) {
        const float* src = base + offset[t];
        const __m512 xv = mask_index[t] < 0 ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(cm[mask_index[t]], src);
        for (int j = 0; j < NB; ++j) acc[j] = _mm512_fmadd_ps(xv, _mm512_set1_ps(wc[j * taps + t]), acc[j]);
      }
    }
    const __mmask16 valid = lane_range(0, n_px - q0);
    for (int j = 0; j < NB; ++j) store_f32(out + j * n_px + q0, valid, act_v<A>(acc[j]));
  }
}

// Output channels are taken kSmallConvBlock at a time (the last block may be smaller).
constexpr int64_t kSmallConvBlock = 4;

template <typename E, int K, int S, Act A>
void small_conv_items(const SmallConvAvx512Params& p, int64_t begin, int64_t end, float* scratch) {
  const PhaseGeometry g = geometry(K, S);
  const int64_t stride_f = phase_floats(plane_geometry(p));
  const int64_t blocks = (p.Co + kSmallConvBlock - 1) / kSmallConvBlock;
  float* phases = scratch + kPhaseSlack;
  int64_t split_image = -1;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / blocks, o0 = (item % blocks) * kSmallConvBlock;
    if (n != split_image) {
      for (int64_t ci = 0; ci < p.Ci; ++ci) {
        split_phases<E, S>(static_cast<const E*>(p.x) + (n * p.Ci + ci) * p.H * p.W, p.H, p.W, p.Ho, p.Wo, g,
                           phases + ci * S * S * stride_f, stride_f);
      }
      split_image = n;
    }
    switch (std::min<int64_t>(kSmallConvBlock, p.Co - o0)) {
      case 1: small_conv_block<E, K, S, A, 1>(p, n, o0, phases, stride_f); break;
      case 2: small_conv_block<E, K, S, A, 2>(p, n, o0, phases, stride_f); break;
      case 3: small_conv_block<E, K, S, A, 3>(p, n, o0, phases, stride_f); break;
      default: small_conv_block<E, K, S, A, 4>(p, n, o0, phases, stride_f); break;
    }
  }
}

}  // namespace

void avx512_small_conv_items(const SmallConvAvx512Params& p, int64_t begin, int64_t end, float* scratch) {
  with_constants(p.bf16, p.K, p.stride, p.act, [&](auto e, auto k, auto s, auto a) {
    small_conv_items<decltype(e), decltype(k)::value, decltype(s)::value, decltype(a)::value>(p, begin, end, scratch);
  });
}

void avx512_depthwise_planes(const DepthwiseAvx512Params& p, int64_t begin, int64_t end, float* scratch) {
  with_constants(p.bf16, p.K, p.stride, p.act, [&](auto e, auto k, auto s, auto a) {
    planes<decltype(e), decltype(k)::value, decltype(s)::value, decltype(a)::value>(p, begin, end, scratch);
  });
}

float avx512_depthwise_band(const DepthwiseAvx512Params& p, const DepthwiseBand& b, float* scratch) {
  float total = 0.f;
  with_constants(p.bf16, p.K, p.stride, p.act, [&](auto e, auto k, auto s, auto a) {
    total = band<decltype(e), decltype(k)::value, decltype(s)::value, decltype(a)::value>(p, b, scratch);
  });
  return total;
}

GK_AVX512_REGION_END
#else
// Never called: avx512_depthwise_available() and avx512_small_conv_available() are false.
void avx512_depthwise_planes(const DepthwiseAvx512Params&, int64_t, int64_t, float*) {}
float avx512_depthwise_band(const DepthwiseAvx512Params&, const DepthwiseBand&, float*) { return 0.f; }
void avx512_small_conv_items(const SmallConvAvx512Params&, int64_t, int64_t, float*) {}
#endif

}  // namespace cpu
}  // namespace ghostkernels
