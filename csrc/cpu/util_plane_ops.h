// Loops over compact channel planes: the building blocks of the CPU depthwise passes.
//
// A band of image rows is kept per channel as a compact plane of pitch W (no pad columns), zero rows standing in
// for rows outside the image, and p = k//2 elements of zero slack before and after. A k x k stencil over it is
//   out[q] += sum_{dy,dx} w[dy][dx] * mask_dx[q] * plane[q + dy*W + dx - p],
// where mask_dx zeroes the taps that would wrap around into the neighbouring row (column w + dx - p outside
// [0, W)). Every loop is then one straight, branch-free, contiguous loop over a whole band, which the compiler
// vectorizes whatever the image width: GhostNet's late layers are 7 and 14 pixels wide, where per-row loops (or
// padded rows) spend most of their time on loop overhead and scalar tails.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace ghostkernels {
namespace cpu {

// mask(dx)[q] = 1 where 0 <= q % W + dx - p < W, else 0; for q in [0, len).
template <typename acc_t>
class ColumnMasks {
 public:
  ColumnMasks(int64_t K, int64_t W, int64_t len) : K_(K), len_(len), m_(K * len) {
    const int64_t p = K / 2;
    for (int64_t dx = 0; dx < K; ++dx) {
      for (int64_t q = 0; q < len; ++q) {
        const int64_t w = q % W + dx - p;
        m_[dx * len + q] = (w >= 0 && w < W) ? acc_t(1) : acc_t(0);
      }
    }
  }
  const acc_t* operator()(int64_t dx) const { return m_.data() + dx * len_; }
  int64_t length() const { return len_; }

 private:
  int64_t K_, len_;
  std::vector<acc_t> m_;
};

// dst[q] = mask_dx[q] * src[q + dx - p] for q in [0, n): the plane shifted by dx - p columns, wrapped taps zeroed.
template <typename acc_t>
inline void masked_shift(acc_t* __restrict__ dst, const acc_t* __restrict__ src, const acc_t* __restrict__ mask,
                         int64_t shift, int64_t n) {
  for (int64_t q = 0; q < n; ++q) dst[q] = mask[q] * src[q + shift];
}

// Elements of output per chunk: the chunk of acc and its shifted source rows stay in L1 while the k*k taps run.
constexpr int64_t kChunk = 1024;
// Loops run over whole multiples of this many elements (one AVX-512 register of floats), so no loop ends in a
// scalar tail: a 49- or 119-element loop would otherwise spend as long in its tail as in its vector body. Callers
// leave kVec elements of slack after every buffer a stencil writes or reads; the extra outputs are junk.
constexpr int64_t kVec = 16;
inline int64_t round_up_vec(int64_t n) { return (n + kVec - 1) / kVec * kVec; }

// acc[q] (= bias first, if init) += sum_{dy,dx} wk[dy*K + dx] * mask_dx[q] * src[q + dy*W + dx - p], q in [0, n).
// `scratch` holds kChunk + (K-1)*W elements; src needs p elements of slack before and p + kVec after
// [0, n + (K-1)*W), the masks must cover [0, n + (K-1)*W + kVec), and acc must have room for n rounded up to kVec.
template <typename acc_t>
inline void stencil(acc_t* __restrict__ acc, const acc_t* src, const acc_t* wk, int64_t K, int64_t W, int64_t n,
                    bool init, acc_t bias, const ColumnMasks<acc_t>& masks, acc_t* __restrict__ scratch) {
  const int64_t p = K / 2;
  for (int64_t q0 = 0; q0 < n; q0 += kChunk) {
    const int64_t len = round_up_vec(std::min(kChunk, n - q0));
    acc_t* __restrict__ a = acc + q0;
    if (init) std::fill(a, a + len, bias);
    for (int64_t dx = 0; dx < K; ++dx) {
      const acc_t* __restrict__ s = src + q0;
      if (dx != p) {  // the centre column never wraps
        masked_shift(scratch, src + q0, masks(dx) + q0, dx - p, len + (K - 1) * W);
        s = scratch;
      }
      for (int64_t dy = 0; dy < K; ++dy) {
        const acc_t wv = wk[dy * K + dx];
        const acc_t* __restrict__ sd = s + dy * W;
        for (int64_t q = 0; q < len; ++q) a[q] += wv * sd[q];
      }
    }
  }
}

// sum_q a[q] * b[q] for q in [0, n), with 16 independent partial sums so the reduction vectorizes without
// -ffast-math (floating-point addition is not associative, so compilers will not reorder a single running sum).
template <typename acc_t>
inline acc_t dot(const acc_t* __restrict__ a, const acc_t* __restrict__ b, int64_t n) {
  constexpr int kLanes = 16;
  acc_t part[kLanes] = {};
  int64_t q = 0;
  for (; q + kLanes <= n; q += kLanes) {
    for (int i = 0; i < kLanes; ++i) part[i] += a[q + i] * b[q + i];
  }
  acc_t s = 0;
  for (; q < n; ++q) s += a[q] * b[q];
  for (int i = 0; i < kLanes; ++i) s += part[i];
  return s;
}

template <typename acc_t>
inline acc_t sum(const acc_t* __restrict__ a, int64_t n) {
  constexpr int kLanes = 16;
  acc_t part[kLanes] = {};
  int64_t q = 0;
  for (; q + kLanes <= n; q += kLanes) {
    for (int i = 0; i < kLanes; ++i) part[i] += a[q + i];
  }
  acc_t s = 0;
  for (; q < n; ++q) s += a[q];
  for (int i = 0; i < kLanes; ++i) s += part[i];
  return s;
}

}  // namespace cpu
}  // namespace ghostkernels
