// The AVX-512 stem convolution (see kernel_stem_conv_avx512.h for what it computes and why it is shaped so).
//
// As in the other kernel_*_avx512.cpp files: no torch header, and the AVX-512 code sits in the AVX-512 region
// (util_avx512_target.h) with internal linkage, so the library still loads and runs on CPUs without AVX-512.
//
// Numerics: float32 accumulation, each output b + its Ci * 9 taps added in the order (ci, dy, dx) with fused
// multiply-adds; bfloat16 inputs are widened exactly, only the output is rounded. That is the order of the
// small-channel kernel (kernel_depthwise_avx512.cpp), so the two give identical results; independent of the threads.
#include "kernel_stem_conv_avx512.h"

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../activations.h"
#include "util_cpu_features.h"

#include "util_avx512_target.h"

namespace ghostkernels {
namespace cpu {

namespace {

constexpr int64_t kLanes = 16;
// Output channels per block: one accumulator register each, so a block takes 16 of the 32 vector registers.
constexpr int64_t kBlock = 16;
constexpr int64_t kTaps = 9;
// Split input rows kept per input channel: the even row of the output row, and the odd rows of two consecutive
// output rows (an odd row r is the last row of output row (r - 1) / 2 and the first of (r + 1) / 2).
constexpr int kRowSlots = 3;

// Where each part of the scratch starts, in floats from a 64-byte aligned base.
struct Layout {
  int64_t blocks;      // blocks of kBlock output channels
  int64_t row_floats;  // one half (even or odd columns) of a split row: Wo rounded up to vectors, plus slack
  int64_t weights;     // [blocks][Ci * 9][kBlock], zero past Co
  int64_t bias;        // [blocks][kBlock], zero past Co
  int64_t zero;        // 2 * row_floats zeros: the rows above and below the input
  int64_t slots;       // [kRowSlots][Ci][even row, odd row]
  int64_t total;
};

Layout layout(const StemConvAvx512Params& p) {
  Layout l{};
  l.blocks = (p.Co + kBlock - 1) / kBlock;
  // The odd half is stored one column later (its column 0 is the padding), and tap dx = 2 reads one past a vector.
  l.row_floats = (p.Wo + kLanes - 1) / kLanes * kLanes + 2 * kLanes;
  l.weights = 0;
  l.bias = l.weights + l.blocks * p.Ci * kTaps * kBlock;
  l.zero = l.bias + l.blocks * kBlock;
  l.slots = l.zero + 2 * l.row_floats;
  l.total = l.slots + kRowSlots * p.Ci * 2 * l.row_floats;
  return l;
}

}  // namespace

bool avx512_stem_conv_available(bool bf16, int64_t Ci, int64_t K, int64_t stride) {
  (void)bf16;  // bfloat16 is widened on load and rounded by integer arithmetic: no AVX-512 BF16 needed
#if GK_AVX512_KERNELS
  return cpu_has_avx512(false) && K == 3 && stride == 2 && Ci >= 1 && Ci <= kStemConvMaxInputChannels;
#else
  (void)Ci;
  (void)K;
  (void)stride;
  return false;
#endif
}

int64_t avx512_stem_conv_scratch_floats(const StemConvAvx512Params& p) {
  return layout(p).total + kLanes;  // + the alignment of the base
}

#if GK_AVX512_KERNELS
GK_AVX512_REGION_BEGIN

}  // namespace cpu
}  // namespace ghostkernels

#include "util_avx512_common.h"

namespace ghostkernels {
namespace cpu {
namespace {

// Output rows ahead whose input rows are prefetched while splitting (two input rows per output row). The loads of
// the split are the only reads of x, one plane per input channel, and the small-channel kernel's split was
// measured to need software prefetch (bench/NOTES.md entry 34).
constexpr int64_t kPrefetchRows = 4;

// One input row (W elements) split into its columns: even[j] = x[2j] and odd[j] = x[2j - 1] (odd[0] the padding
// column), zero past the row, for j up to the row's vectors (Wp = Wo rounded up to 16).
template <typename E>
void split_row(const E* src, int64_t W, int64_t Wp, float* even, float* odd) {
  prefetch_l1(src + 2 * kPrefetchRows * W, W * static_cast<int64_t>(sizeof(E)));
  const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i io = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  odd[0] = 0.f;
  for (int64_t j = 0; j < Wp; j += kLanes) {
    const int64_t c = 2 * j;
    const __m512 lo = load_f32(lane_range(0, W - c), src + c);
    const __m512 hi = load_f32(lane_range(0, W - c - kLanes), src + c + kLanes);
    _mm512_storeu_ps(even + j, _mm512_permutex2var_ps(lo, ie, hi));
    _mm512_storeu_ps(odd + j + 1, _mm512_permutex2var_ps(lo, io, hi));
  }
}

// One tile of an output row: V = 1, the 16 outputs from column j0 of kBlock channels (16 accumulators, the weight
// operands broadcast from memory); V = 2, the 32 from j0 of kBlock / 2 channels (16 accumulators, each weight
// broadcast once into a register for two vectors). wb / bb: the block's weights and bias from the tile's first
// channel (weights at stride kBlock per tap); ob: that channel's output row; nb: its channels to store.
template <typename E, Act A, int V>
inline void stem_tile(const float* const rows[3], const int64_t ci_step[3], int64_t Ci, int64_t rf, const float* wb,
                      const float* bb, int64_t j0, int64_t nb, E* ob, int64_t n_px, int64_t Wo) {
  constexpr int C = V == 1 ? kBlock : kBlock / 2;
  __m512 acc[V][C];
#pragma GCC unroll 16
  for (int o = 0; o < C; ++o) {
    for (int v = 0; v < V; ++v) acc[v][o] = _mm512_set1_ps(bb[o]);
  }
  for (int64_t ci = 0; ci < Ci; ++ci) {
#pragma GCC unroll 3
    for (int dy = 0; dy < 3; ++dy) {
      const float* even = rows[dy] + ci * ci_step[dy] + j0;
      const float* odd = even + rf;
      __m512 xv[3][V];  // taps dx = 0, 1, 2: x[2j - 1], x[2j], x[2j + 1]
      for (int v = 0; v < V; ++v) {
        xv[0][v] = _mm512_loadu_ps(odd + v * kLanes);
        xv[1][v] = _mm512_loadu_ps(even + v * kLanes);
        xv[2][v] = _mm512_loadu_ps(odd + 1 + v * kLanes);
      }
      const float* wt = wb + (ci * kTaps + dy * 3) * kBlock;
#pragma GCC unroll 3
      for (int dx = 0; dx < 3; ++dx) {
#pragma GCC unroll 16
        for (int o = 0; o < C; ++o) {
          const __m512 wv = _mm512_set1_ps(wt[dx * kBlock + o]);
          for (int v = 0; v < V; ++v) acc[v][o] = _mm512_fmadd_ps(xv[dx][v], wv, acc[v][o]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int o = 0; o < C; ++o) {
    if (o >= nb) continue;
    for (int v = 0; v < V; ++v) {
      const int64_t j = j0 + v * kLanes;
      store_f32(ob + o * n_px + j, lane_range(0, Wo - j), act_v<A>(acc[v][o]));
    }
  }
}

template <typename E, Act A>
void stem_rows(const StemConvAvx512Params& p, int64_t begin, int64_t end, float* scratch) {
  const Layout l = layout(p);
  float* base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t{63});
  float* wp = base + l.weights;
  float* bp = base + l.bias;
  float* zero = base + l.zero;
  float* slots = base + l.slots;
  const int64_t Ci = p.Ci, Co = p.Co, H = p.H, W = p.W, Ho = p.Ho, Wo = p.Wo, rf = l.row_floats;
  const int64_t taps = Ci * kTaps, slot_floats = Ci * 2 * rf, Wp = rf - 2 * kLanes, n_px = Ho * Wo;

  // Weights as [block][tap][channel], so a tap's 16 broadcasts read one cache line; zeros past Co (computed, not
  // stored).
  for (int64_t blk = 0; blk < l.blocks; ++blk) {
    for (int64_t o = 0; o < kBlock; ++o) {
      const int64_t oc = blk * kBlock + o;
      for (int64_t t = 0; t < taps; ++t) wp[(blk * taps + t) * kBlock + o] = oc < Co ? p.w[oc * taps + t] : 0.f;
      bp[blk * kBlock + o] = oc < Co ? p.b[oc] : 0.f;
    }
  }
  std::memset(zero, 0, 2 * rf * sizeof(float));

  const E* x = static_cast<const E*>(p.x);
  E* out = static_cast<E*>(p.out);
  int64_t tag[kRowSlots] = {-1, -1, -1};  // which input row (n * H + r) each slot holds
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / Ho, i = item % Ho;
    // Per dy: input channel 0's split row (even half; the odd half rf floats later) and the step to the next
    // channel's (0 for the zero row).
    const float* rows[3];
    int64_t ci_step[3];
    for (int dy = 0; dy < 3; ++dy) {
      const int64_t r = 2 * i + dy - 1;
      if (r < 0 || r >= H) {
        rows[dy] = zero, ci_step[dy] = 0;
        continue;
      }
      const int s = (r & 1) ? static_cast<int>(((r + 1) / 2) % 2) : 2;
      float* slot = slots + s * slot_floats;
      if (tag[s] != n * H + r) {
        for (int64_t ci = 0; ci < Ci; ++ci) {
          float* even = slot + ci * 2 * rf;
          split_row<E>(x + ((n * Ci + ci) * H + r) * W, W, Wp, even, even + rf);
        }
        tag[s] = n * H + r;
      }
      rows[dy] = slot, ci_step[dy] = 2 * rf;
    }
    for (int64_t blk = 0; blk < l.blocks; ++blk) {
      const float* wb = wp + blk * taps * kBlock;
      const float* bb = bp + blk * kBlock;
      const int64_t nb = imin(kBlock, Co - blk * kBlock);
      E* ob = out + (n * Co + blk * kBlock) * n_px + i * Wo;
      int64_t j0 = 0;
      // Two vectors at a time, 8 channels each: a weight is one broadcast used by two fused multiply-adds (10 loads
      // per 16 of them, against 17 with one broadcast operand per FMA, which left both load ports as busy as the
      // FMA ports): 1.26x faster on one core (bench/NOTES.md entry 53).
      for (; j0 + kLanes < Wo; j0 += 2 * kLanes) {
        for (int64_t c0 = 0; c0 < nb; c0 += kBlock / 2) {
          stem_tile<E, A, 2>(rows, ci_step, Ci, rf, wb + c0, bb + c0, j0, imin(kBlock / 2, nb - c0), ob + c0 * n_px,
                             n_px, Wo);
        }
      }
      // The last vector of a row with an odd count: all 16 channels, one broadcast operand per FMA.
      if (j0 < Wo) stem_tile<E, A, 1>(rows, ci_step, Ci, rf, wb, bb, j0, nb, ob, n_px, Wo);
    }
  }
}

}  // namespace

void avx512_stem_conv_rows(const StemConvAvx512Params& p, int64_t begin, int64_t end, float* scratch) {
  dispatch_act(static_cast<Act>(p.act), [&](auto a) {
    if (p.bf16) {
      stem_rows<uint16_t, decltype(a)::value>(p, begin, end, scratch);
    } else {
      stem_rows<float, decltype(a)::value>(p, begin, end, scratch);
    }
  });
}

GK_AVX512_REGION_END
#else
// Never called: avx512_stem_conv_available() is false.
void avx512_stem_conv_rows(const StemConvAvx512Params&, int64_t, int64_t, float*) {}
#endif

}  // namespace cpu
}  // namespace ghostkernels
