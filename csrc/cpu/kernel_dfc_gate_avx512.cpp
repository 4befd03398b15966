// The AVX-512 kernel of ghostkernels::dfc_gate (see kernel_dfc_gate_avx512.h for what it computes and why).
//
// No torch header here; only the code between GK_AVX512_REGION_BEGIN and GK_AVX512_REGION_END is compiled for
// AVX-512 (util_avx512_target.h), with internal linkage apart from the exported entry points, so the library still
// loads on CPUs without it (avx512_dfc_gate_available() keeps them away from this code).
#include "kernel_dfc_gate_avx512.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../activations.h"
#include "kernel_backward_gemm_avx512.h"
#include "util_cpu_features.h"

#include "util_avx512_target.h"

namespace ghostkernels {
namespace cpu {

namespace {
constexpr int64_t kLanes = 16;
// Longest (1, k) / (k, 1) kernel the map pass takes: GhostNetV2's are 5; longer ones run on ATen.
constexpr int64_t kMaxTaps = 9;
int64_t plane_floats(const DfcGateAvx512Params& p) { return p.Hg * p.Wg; }
// The vertical pass's padded plane: KV/2 zero rows above and below the map rows, and a vector of slack.
int64_t padded_plane_floats(const DfcGateAvx512Params& p) { return (p.Hg + 2 * (p.KV / 2)) * p.Wg + kLanes; }
// Channels whose map passes run together (finish_channels).
constexpr int64_t kGateChannels = 4;
}  // namespace

bool avx512_dfc_gate_available(int64_t KH, int64_t KV) {
#if GK_AVX512_KERNELS
  return cpu_has_avx512(false) && KH <= kMaxTaps && KV <= kMaxTaps;
#else
  (void)KH;
  (void)KV;
  return false;
#endif
}

int64_t avx512_gate_pooled_rows(const DfcGateAvx512Params& p) { return p.bf16_dot ? (p.C + 1) / 2 : p.C; }

int64_t avx512_gate_scratch_floats(const DfcGateAvx512Params& p) {
  return p.Ob * p.Gi * plane_floats(p) + kGateChannels * padded_plane_floats(p) + 2 * kLanes;
}

#if GK_AVX512_KERNELS
GK_AVX512_REGION_BEGIN

}  // namespace cpu
}  // namespace ghostkernels

#include "util_avx512_common.h"

namespace ghostkernels {
namespace cpu {
namespace {

// 2x2 means of rows r0 and r1 (pairs of input columns) into `out` (Wg floats).
template <typename elem>
void pool_row_pair(const elem* r0, const elem* r1, float* out, int64_t Wg) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512 quarter = _mm512_set1_ps(0.25f);
  for (int64_t c0 = 0; c0 < Wg; c0 += kLanes) {
    const int64_t n_in = 2 * imin(kLanes, Wg - c0);  // input columns 2*c0 .. 2*c0 + n_in of each row
    const __mmask16 lo = lane_range(0, n_in), hi = lane_range(0, n_in - kLanes);
    const elem* a = r0 + 2 * c0;
    const elem* b = r1 + 2 * c0;
    const __m512 s_lo = _mm512_add_ps(load_f32(lo, a), load_f32(lo, b));
    const __m512 s_hi = _mm512_add_ps(load_f32(hi, a + kLanes), load_f32(hi, b + kLanes));
    const __m512 sum = _mm512_add_ps(_mm512_permutex2var_ps(s_lo, even, s_hi), _mm512_permutex2var_ps(s_lo, odd, s_hi));
    _mm512_mask_storeu_ps(out + c0, lane_range(0, Wg - c0), _mm512_mul_ps(sum, quarter));
  }
}

// Where image n's plane of pooled row `row` starts in p.pooled, in 4-byte elements (its group's rows are
// gn * Hg*Wg apart).
int64_t pooled_offset(const DfcGateAvx512Params& p, int64_t n, int64_t row) {
  const int64_t G = plane_floats(p), rows = avx512_gate_pooled_rows(p);
  const int64_t n0 = n / p.Gi * p.Gi, gn = imin(p.Gi, p.N - n0);
  return n0 * rows * G + row * gn * G + (n - n0) * G;
}

template <typename elem>
void pool_planes(const DfcGateAvx512Params& p, int64_t begin, int64_t end) {
  const elem* x = static_cast<const elem*>(p.x);
  const int64_t HW = p.H * p.W;
  for (int64_t plane = begin; plane < end; ++plane) {
    const int64_t n = plane / p.C, c = plane % p.C;
    const elem* src = x + plane * HW;
    float* dst = static_cast<float*>(p.pooled) + pooled_offset(p, n, c);
    for (int64_t y = 0; y < p.Hg; ++y) pool_row_pair(src + 2 * y * p.W, src + (2 * y + 1) * p.W, dst + y * p.Wg, p.Wg);
  }
}

// bf16_dot: planes 2k and 2k + 1 of an image pooled, rounded to bfloat16 and interleaved into the words of pooled row
// k (an odd C's last row pairs its plane with zeros). `rowbuf`: 2 * Wg + 16 floats.
void pool_plane_pairs(const DfcGateAvx512Params& p, int64_t begin, int64_t end, float* rowbuf) {
  const uint16_t* x = static_cast<const uint16_t*>(p.x);
  const int64_t HW = p.H * p.W, rows = avx512_gate_pooled_rows(p), Wg = p.Wg;
  float* lo = rowbuf;
  float* hi = rowbuf + Wg + kLanes;
  for (int64_t unit = begin; unit < end; ++unit) {
    const int64_t n = unit / rows, k = unit % rows;
    const uint16_t* a = x + (n * p.C + 2 * k) * HW;
    const bool pair = 2 * k + 1 < p.C;
    uint32_t* dst = static_cast<uint32_t*>(p.pooled) + pooled_offset(p, n, k);
    for (int64_t y = 0; y < p.Hg; ++y) {
      pool_row_pair(a + 2 * y * p.W, a + (2 * y + 1) * p.W, lo, Wg);
      if (pair) pool_row_pair(a + HW + 2 * y * p.W, a + HW + (2 * y + 1) * p.W, hi, Wg);
      for (int64_t c0 = 0; c0 < Wg; c0 += kLanes) {
        const __mmask16 m = lane_range(0, Wg - c0);
        const __m512i l = _mm512_cvtepu16_epi32(round_to_bf16(_mm512_maskz_loadu_ps(m, lo + c0)));
        const __m512i h = pair ? _mm512_cvtepu16_epi32(round_to_bf16(_mm512_maskz_loadu_ps(m, hi + c0)))
                               : _mm512_setzero_si512();
        _mm512_mask_storeu_epi32(dst + y * Wg + c0, m, _mm512_or_si512(l, _mm512_slli_epi32(h, 16)));
      }
    }
  }
}

// The maps of NC consecutive channels o, o + 1, ... from their 1x1-conv planes z (zs floats apart, without the bias):
// the (1, KH) pass into the padded planes t (padded_plane_floats apart), the (KV, 1) pass and the sigmoid into dst
// (G apart). The NC channels' chains are independent, so their multiply-adds and sigmoids overlap: one channel at a
// time, a 3x3 or 7x7 map's few vectors were one chain of KH + KV multiply-adds and a sigmoid, latency-bound, and the
// gate of GhostNetV2's 7x7 blocks took longer than their Ghost modules (bench/NOTES.md entry 62).
template <typename elem, int NC>
void finish_channels(const DfcGateAvx512Params& p, const float* z, int64_t zs, float* t, int64_t o, elem* dst) {
  const int64_t G = plane_floats(p), Wg = p.Wg, ph = p.KH / 2, pv = p.KV / 2, T = padded_plane_floats(p);
  for (int64_t q0 = 0; q0 < G; q0 += kLanes) {
    const uint16_t* cm = p.colmask + (q0 / kLanes) * p.KH;
    __m512 acc[NC];
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) acc[c] = _mm512_set1_ps(p.bh[o + c]);
    for (int64_t dx = 0; dx < p.KH; ++dx) {
      // The mask zeroes taps that would wrap into the neighbouring row (and never faults on lanes it drops); the
      // 1x1 conv's bias is added to the lanes it keeps.
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) {
        const __m512 v = _mm512_maskz_add_ps(cm[dx], _mm512_maskz_loadu_ps(cm[dx], z + c * zs + q0 + dx - ph),
                                             _mm512_set1_ps(p.b1[o + c]));
        acc[c] = _mm512_fmadd_ps(v, _mm512_set1_ps(p.wh[(o + c) * p.KH + dx]), acc[c]);
      }
    }
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      // Past the plane: t's zero rows stay zero.
      _mm512_mask_storeu_ps(t + c * T + pv * Wg + q0, lane_range(0, G - q0), acc[c]);
    }
  }
  for (int64_t q0 = 0; q0 < G; q0 += kLanes) {
    __m512 acc[NC];
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) acc[c] = _mm512_set1_ps(p.bv[o + c]);
    for (int64_t dy = 0; dy < p.KV; ++dy) {
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) {
        acc[c] = _mm512_fmadd_ps(_mm512_loadu_ps(t + c * T + pv * Wg + q0 + (dy - pv) * Wg),
                                 _mm512_set1_ps(p.wv[(o + c) * p.KV + dy]), acc[c]);
      }
    }
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) store_f32(dst + c * G + q0, lane_range(0, G - q0), sigmoid_v(acc[c]));
  }
}

template <typename elem>
void map_items(const DfcGateAvx512Params& p, int64_t begin, int64_t end, float* scratch) {
  const int64_t G = plane_floats(p), pv = p.KV / 2, rows = avx512_gate_pooled_rows(p);
  float* z = scratch + kLanes;  // slack before and after: the row pass's masked loads address a few floats outside
  float* t = z + p.Ob * p.Gi * G + kLanes;
  // The vertical pass's zero rows (and the slack after them) of the kGateChannels padded planes, never written below.
  for (int64_t c = 0; c < kGateChannels; ++c) {
    float* tc = t + c * padded_plane_floats(p);
    std::memset(tc, 0, pv * p.Wg * sizeof(float));
    std::memset(tc + (pv + p.Hg) * p.Wg, 0, (pv * p.Wg + kLanes) * sizeof(float));
  }
  elem* map = static_cast<elem*>(p.map);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t grp = item / p.blocks, o0 = (item % p.blocks) * p.Ob, ob = imin(p.Ob, p.O - o0);
    const int64_t n0 = grp * p.Gi, gn = imin(p.Gi, p.N - n0), ldz = gn * G;
    if (ob <= 0) continue;
    // z without its bias (finish_channels adds it as it loads z): a bias preset here made the GEMM's tiles load
    // rows of z just stored, 36 bytes apart on a 3x3 map, which waited on the stores (bench/NOTES.md entry 62).
    if (p.bf16_dot) {
      avx512_bf16_pairs_gemm_nn(ob, ldz, rows, p.w1_pairs + o0 * rows, rows,
                                static_cast<const uint32_t*>(p.pooled) + n0 * rows * G, ldz, z, ldz,
                                /*accumulate=*/false);
    } else {
      avx512_sgemm_nn(ob, ldz, p.C, p.w1 + o0 * p.C, p.C, static_cast<const float*>(p.pooled) + n0 * rows * G, ldz, z,
                      ldz, /*accumulate=*/false);
    }
    for (int64_t i = 0; i < gn; ++i) {
      elem* mi = map + ((n0 + i) * p.O + o0) * G;
      int64_t r = 0;
      for (; r + kGateChannels <= ob; r += kGateChannels) {
        finish_channels<elem, kGateChannels>(p, z + r * ldz + i * G, ldz, t, o0 + r, mi + r * G);
      }
      for (; r < ob; ++r) finish_channels<elem, 1>(p, z + r * ldz + i * G, ldz, t, o0 + r, mi + r * G);
    }
  }
}

}  // namespace

void avx512_gate_pool_planes(const DfcGateAvx512Params& p, int64_t begin, int64_t end) {
  if (p.bf16_dot) {
    thread_local std::vector<float> rowbuf;  // two pooled rows
    if (static_cast<int64_t>(rowbuf.size()) < 2 * (p.Wg + kLanes)) rowbuf.assign(2 * (p.Wg + kLanes), 0.f);
    pool_plane_pairs(p, begin, end, rowbuf.data());
  } else if (p.bf16) {
    pool_planes<uint16_t>(p, begin, end);
  } else {
    pool_planes<float>(p, begin, end);
  }
}

void avx512_gate_map_items(const DfcGateAvx512Params& p, int64_t begin, int64_t end, float* scratch) {
  if (p.bf16 && !p.map_f32) {
    map_items<uint16_t>(p, begin, end, scratch);
  } else {
    map_items<float>(p, begin, end, scratch);
  }
}

GK_AVX512_REGION_END
#else
// Never called: avx512_dfc_gate_available() is false.
void avx512_gate_pool_planes(const DfcGateAvx512Params&, int64_t, int64_t) {}
void avx512_gate_map_items(const DfcGateAvx512Params&, int64_t, int64_t, float*) {}
#endif

}  // namespace cpu
}  // namespace ghostkernels
