// The AVX-512 depthwise half of the Ghost-module backward (see kernel_ghost_backward_avx512.h for what it computes).
//
// As in the other AVX-512 files: no torch header, and the AVX-512 code sits in the AVX-512 region
// (util_avx512_target.h) with internal linkage (plus the exported entry point), so the library still loads and runs
// on CPUs without AVX-512; the caller checks avx512_forward_available() first.
//
// Numerics: float32 throughout; z2 is b2 plus the k*k taps row by row with fused multiply-adds, as in the forward
// kernel, and the weight gradients are per-lane sums over the own rows, reduced across the lanes at the end of each
// channel.
#include "kernel_ghost_backward_avx512.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../activations.h"
#include "util_avx512_target.h"

#if GK_AVX512_KERNELS
GK_AVX512_REGION_BEGIN
#include "util_avx512_common.h"
#endif

namespace ghostkernels {
namespace cpu {

#if GK_AVX512_KERNELS
namespace {

constexpr int64_t kLanes = 16;  // floats per 512-bit vector

// g * act'(z), 16 lanes at a time: the same derivatives as act_derivative in activations.h (their values at the
// kinks included).
template <Act A>
inline __m512 act_grad_v(__m512 z, __m512 g) {
  const __m512 zero = _mm512_setzero_ps();
  if constexpr (A == Act::ReLU) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(z, zero, _CMP_GT_OQ), g);
  } else if constexpr (A == Act::ReLU6) {
    const __mmask16 m = _mm512_cmp_ps_mask(z, zero, _CMP_GT_OQ) & _mm512_cmp_ps_mask(z, _mm512_set1_ps(6.f), _CMP_LT_OQ);
    return _mm512_maskz_mov_ps(m, g);
  } else if constexpr (A == Act::HardSwish) {
    // z <= -3: 0; -3 < z < 3: z/3 + 0.5; z >= 3: 1
    const __m512 mid = _mm512_add_ps(_mm512_div_ps(z, _mm512_set1_ps(3.f)), _mm512_set1_ps(0.5f));
    __m512 d = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, _mm512_set1_ps(3.f), _CMP_LT_OQ), _mm512_set1_ps(1.f), mid);
    d = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(z, _mm512_set1_ps(-3.f), _CMP_GT_OQ), d);
    return _mm512_mul_ps(g, d);
  } else if constexpr (A == Act::SiLU) {
    alignas(64) float tz[kLanes], tg[kLanes];
    _mm512_store_ps(tz, z);
    _mm512_store_ps(tg, g);
    for (int64_t l = 0; l < kLanes; ++l) {
      const float sg = 1.f / (1.f + std::exp(-tz[l]));
      tg[l] *= sg * (1.f + tz[l] * (1.f - sg));
    }
    return _mm512_load_ps(tg);
  } else {
    return g;
  }
}

// How many channel planes ahead the depthwise backward prefetches grad_out (and z1). It reads grad_out one channel
// plane (a few hundred floats in GhostNet's later stages) at a time, and the hardware prefetchers did not hide
// those loads: `perf` put two thirds of that part's time on the first load of grad_out in its two loops
// (bench/NOTES.md entry 33). About 4 KB ahead, at least one plane and at most four: a 14x14 plane (784 bytes) takes
// a few hundred cycles to process, less than a trip to memory, so its prefetches must start four planes early; a
// 56x56 or 112x112 plane is itself more than enough. Measured on the development VM, batch 8: 4 planes ahead best
// at 14x14 and 7x7, 1 at 112x112.
inline int64_t prefetch_planes(int64_t plane_floats) {
  return imax(1, imin(4, 4096 / imax(1, plane_floats * static_cast<int64_t>(sizeof(float)))));
}

// Train-mode BN of one channel, broadcast (kernel_ghost_backward_avx512.h's BnCoefficients): the pre-activation from
// s, and dz from g and xhat.
struct BnLanes {
  __m512 mean, invstd, weight, bias, mean_dy, mean_dy_xhat, dz_scale;
  BnLanes() = default;  // the eval-mode instantiations, which never read it
  BnLanes(const BnCoefficients& b, int64_t c)
      : mean(_mm512_set1_ps(b.mean[c])), invstd(_mm512_set1_ps(b.invstd[c])), weight(_mm512_set1_ps(b.weight[c])),
        bias(_mm512_set1_ps(b.bias[c])), mean_dy(_mm512_set1_ps(b.mean_dy[c])),
        mean_dy_xhat(_mm512_set1_ps(b.mean_dy_xhat[c])), dz_scale(_mm512_set1_ps(b.dz_scale[c])) {}
  __m512 xhat(__m512 s) const { return _mm512_mul_ps(_mm512_sub_ps(s, mean), invstd); }
  __m512 pre(__m512 xh) const { return _mm512_fmadd_ps(weight, xh, bias); }
  __m512 dz(__m512 g, __m512 xh) const {
    return _mm512_mul_ps(dz_scale, _mm512_sub_ps(_mm512_sub_ps(g, mean_dy), _mm512_mul_ps(xh, mean_dy_xhat)));
  }
};

template <int K, Act A, bool BN>
void depthwise_backward_image(const DepthwiseBackwardImage& p) {
  constexpr int P = K / 2, KK = K * K;
  const int64_t W = p.W, HW = p.H * p.W, own_lo = P * W, own_hi = (P + p.own) * W;
  // g2 rows [r0 - P, r0 + own + P) inside the image; the others are the transposed conv's zero padding.
  const int64_t top = p.r0 - P, b0 = imax(0, top), b1 = imin(p.H, p.r0 + p.own + P);
  const int64_t qs = (b0 - top) * W, qe = (b1 - top) * W, plane_len = (p.own + 2 * P) * W;
  const int64_t pfd = prefetch_planes(p.own * W);

  for (int64_t j = 0; j < p.n_cheap; ++j) {
    const float* centre = p.x1 + (j / p.M) * p.x1_stride + P * W;  // x1 at the g2 plane's first row
    float* g2 = p.g2 + j * p.g2_stride;
    const float* go = p.go + (p.I + j) * HW + top * W;  // grad_out at the g2 plane's first row
    const float* w = p.w2 + j * KK;
    const BnLanes bn = BN ? BnLanes(p.bn2, j) : BnLanes{};
    if (j + pfd < p.n_cheap) prefetch_l1(go + pfd * HW + qs, (qe - qs) * sizeof(float));
    std::memset(g2, 0, qs * sizeof(float));
    std::memset(g2 + qe, 0, (plane_len - qe) * sizeof(float));
    __m512 gw[KK];
#pragma GCC unroll 49
    for (int t = 0; t < KK; ++t) gw[t] = _mm512_setzero_ps();
    __m512 gb = _mm512_setzero_ps();
    for (int64_t q0 = qs; q0 < qe; q0 += kLanes) {
      const uint16_t* cm = p.colmask + ((q0 - qs) / kLanes) * K;
      const __mmask16 valid = lane_range(0, qe - q0);
      __m512 tap[KK];
      __m512 z2 = _mm512_set1_ps(p.b2[j]);
#pragma GCC unroll 7
      for (int dy = 0; dy < K; ++dy) {
#pragma GCC unroll 7
        for (int dx = 0; dx < K; ++dx) {
          const float* src = centre + q0 + (dy - P) * W + dx - P;
          tap[dy * K + dx] = dx == P ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(cm[dx], src);
          if constexpr (A != Act::Identity || BN) {
            z2 = _mm512_fmadd_ps(tap[dy * K + dx], _mm512_set1_ps(w[dy * K + dx]), z2);
          }
        }
      }
      __m512 g;
      if constexpr (BN) {
        const __m512 xh = bn.xhat(z2);
        g = bn.dz(act_grad_v<A>(bn.pre(xh), _mm512_maskz_loadu_ps(valid, go + q0)), xh);
      } else {
        g = act_grad_v<A>(z2, _mm512_maskz_loadu_ps(valid, go + q0));
      }
      _mm512_mask_storeu_ps(g2 + q0, valid, g);
      const __m512 g_own = _mm512_maskz_mov_ps(valid & lane_range(own_lo - q0, own_hi - q0), g);
      gb = _mm512_add_ps(gb, g_own);
#pragma GCC unroll 49
      for (int t = 0; t < KK; ++t) gw[t] = _mm512_fmadd_ps(g_own, tap[t], gw[t]);
    }
    p.pb2[j] += _mm512_reduce_add_ps(gb);
#pragma GCC unroll 49
    for (int t = 0; t < KK; ++t) p.pw2[j * KK + t] += _mm512_reduce_add_ps(gw[t]);
  }

  const int64_t n = p.own * W;
  for (int64_t c = 0; c < p.I; ++c) {
    const float* go = c < p.OC ? p.go + c * HW + p.r0 * W : nullptr;
    const float* z1 = p.z1 + c * p.z1_cstride + (p.r0 - p.z1_row0) * W;
    float* g1 = p.g1 + c * p.g1_cstride;
    const __m512 b1 = _mm512_set1_ps(p.b1[c]);
    const BnLanes bn = BN ? BnLanes(p.bn1, c) : BnLanes{};
    const int64_t j_end = imin((c + 1) * p.M, p.n_cheap);
    if (c + pfd < p.I) {
      if (c + pfd < p.OC) prefetch_l1(go + pfd * HW, n * sizeof(float));
      prefetch_l1(z1 + pfd * p.z1_cstride, n * sizeof(float));
    }
    __m512 gb = _mm512_setzero_ps();
    for (int64_t q0 = 0; q0 < n; q0 += kLanes) {
      const uint16_t* cm = p.colmask + (q0 / kLanes) * K;
      const __mmask16 valid = lane_range(0, n - q0);
      __m512 acc = go ? _mm512_maskz_loadu_ps(valid, go + q0) : _mm512_setzero_ps();
      for (int64_t j = c * p.M; j < j_end; ++j) {
        const float* centre = p.g2 + j * p.g2_stride + P * W;  // g2 at row r0
        const float* wf = p.w2_flip + j * KK;
#pragma GCC unroll 7
        for (int dy = 0; dy < K; ++dy) {
#pragma GCC unroll 7
          for (int dx = 0; dx < K; ++dx) {
            const float* src = centre + q0 + (dy - P) * W + dx - P;
            const __m512 v = dx == P ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(cm[dx], src);
            acc = _mm512_fmadd_ps(v, _mm512_set1_ps(wf[dy * K + dx]), acc);
          }
        }
      }
      const __m512 z = _mm512_add_ps(_mm512_maskz_loadu_ps(valid, z1 + q0), b1);
      __m512 g;
      if constexpr (BN) {
        const __m512 xh = bn.xhat(z);
        g = _mm512_maskz_mov_ps(valid, bn.dz(act_grad_v<A>(bn.pre(xh), acc), xh));
      } else {
        g = _mm512_maskz_mov_ps(valid, act_grad_v<A>(z, acc));
      }
      _mm512_mask_storeu_ps(g1 + q0, valid, g);
      gb = _mm512_add_ps(gb, g);
    }
    p.pb1[c] += _mm512_reduce_add_ps(gb);
  }
}

template <int K, bool BN>
void depthwise_backward_for_act(const DepthwiseBackwardImage& p) {
  switch (static_cast<Act>(p.act)) {
    case Act::ReLU: depthwise_backward_image<K, Act::ReLU, BN>(p); break;
    case Act::ReLU6: depthwise_backward_image<K, Act::ReLU6, BN>(p); break;
    case Act::SiLU: depthwise_backward_image<K, Act::SiLU, BN>(p); break;
    case Act::HardSwish: depthwise_backward_image<K, Act::HardSwish, BN>(p); break;
    case Act::Identity:
    default: depthwise_backward_image<K, Act::Identity, BN>(p); break;
  }
}

template <bool BN>
void depthwise_backward_for_k(const DepthwiseBackwardImage& p) {
  switch (p.K) {
    case 1: depthwise_backward_for_act<1, BN>(p); break;
    case 3: depthwise_backward_for_act<3, BN>(p); break;
    case 5: depthwise_backward_for_act<5, BN>(p); break;
    default: depthwise_backward_for_act<7, BN>(p); break;
  }
}

}  // namespace

void avx512_depthwise_backward_image(const DepthwiseBackwardImage& p) {
  if (p.bn) {
    depthwise_backward_for_k<true>(p);
  } else {
    depthwise_backward_for_k<false>(p);
  }
}

#else
// Never called: avx512_forward_available() is false.
void avx512_depthwise_backward_image(const DepthwiseBackwardImage&) {}
#endif

}  // namespace cpu
}  // namespace ghostkernels

#if GK_AVX512_KERNELS
GK_AVX512_REGION_END
#endif
