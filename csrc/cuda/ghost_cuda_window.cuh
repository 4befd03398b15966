// The k x k window sum that every depthwise step of the kernels reduces to: kVX horizontally adjacent outputs of
// one channel plane held in shared memory,
//   acc[o] += sum_{dy, dx < k} w(dy, dx) * plane(row0 + dy, col0 + o + dx),   o < kVX,
// where plane(r, c) = plane[(r * pitch + c) * qstride] (qstride = 1 for [channel][pixel] buffers, the channel
// count for [pixel][channel] buffers). One thread loads each input row once (kVX + k - 1 values) and reuses it for
// all kVX outputs: for k = 3 that is 18 shared loads for 36 FMAs instead of 36 for 36.
//
// kFlip = true uses w(dy, dx) = w[k-1-dy][k-1-dx]: the transposed depthwise conv of the backward pass written as
// a correlation over the gradient plane.
//
// KT > 0 fixes k at compile time (the k = 3 fast path: fully unrolled). KT = 0 takes k at run time (1, 5, 7): the
// loops run to kMaxK with predication, so the register arrays keep compile-time indices (no local memory).
//
// Callers guarantee that every position read lies inside the buffer; positions past the valid rect may hold
// anything finite, and only feed outputs that are never stored.
#pragma once

#include "ghost_cuda_layout.h"

namespace ghostkernels {
namespace cuda {

template <int KT, bool kFlip>
__device__ __forceinline__ void window_accumulate(float (&acc)[kVX], const float* plane, int qstride, int pitch,
                                                  int row0, int col0, const float* w, int k_runtime) {
  constexpr int KM = KT > 0 ? KT : kMaxK;
  const int k = KT > 0 ? KT : k_runtime;
#pragma unroll
  for (int dy = 0; dy < KM; ++dy) {
    if (dy < k) {
      const float* row = plane + ((row0 + dy) * pitch + col0) * qstride;
      float v[kVX + KM - 1];
#pragma unroll
      for (int c = 0; c < kVX + KM - 1; ++c) v[c] = c < kVX + k - 1 ? row[c * qstride] : 0.f;
#pragma unroll
      for (int dx = 0; dx < KM; ++dx) {
        if (dx < k) {
          const float wv = kFlip ? w[(k - 1 - dy) * k + (k - 1 - dx)] : w[dy * k + dx];
#pragma unroll
          for (int o = 0; o < kVX; ++o) acc[o] = fmaf(wv, v[o + dx], acc[o]);
        }
      }
    }
  }
}

}  // namespace cuda
}  // namespace ghostkernels
