// The k x k window sums that every depthwise step of the kernels reduces to.
//
// window_accumulate: kVX horizontally adjacent outputs of one channel plane held in shared memory,
//   acc[o] += sum_{dy, dx < k} w(dy, dx) * plane(row0 + dy, col0 + o + dx),   o < kVX,
// where plane(r, c) = plane[(r * pitch + c) * qstride] (qstride = 1 for [channel][pixel] buffers, the channel
// count for [pixel][channel] buffers) and w(dy, dx) = w[(dy * k + dx) * wstride] (the weights are tap-major in
// shared memory, wstride = the block's cheap-channel count). One thread loads each input row once (kVX + k - 1
// values) and reuses it for all kVX outputs: for k = 3 that is 18 shared loads for 36 FMAs instead of 36 for 36.
//
// window_vec: the same sum for PX adjacent pixels of W consecutive channels of a [pixel][channel] buffer (W a
// multiple of 4, each position read as W / 4 16-byte loads, the tap's W weights likewise): the NHWCVec epilogues.
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
#include "ghost_cuda_params.cuh"

namespace ghostkernels {
namespace cuda {

template <int KT, bool kFlip>
__device__ __forceinline__ int window_tap(int dy, int dx, int k) {
  return kFlip ? (k - 1 - dy) * k + (k - 1 - dx) : dy * k + dx;
}

template <int KT, bool kFlip>
__device__ __forceinline__ void window_accumulate(float (&acc)[kVX], const float* plane, int qstride, int pitch,
                                                  int row0, int col0, const float* w, int wstride, int k_runtime) {
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
          const float wv = w[window_tap<KT, kFlip>(dy, dx, k) * wstride];
#pragma unroll
          for (int o = 0; o < kVX; ++o) acc[o] = fmaf(wv, v[o + dx], acc[o]);
        }
      }
    }
  }
}

template <int W>
__device__ __forceinline__ void lds_vec(float (&v)[W], const float* p) {
#pragma unroll
  for (int c = 0; c < W; c += 4) {
    const float4 f = lds4(p + c);
    v[c] = f.x;
    v[c + 1] = f.y;
    v[c + 2] = f.z;
    v[c + 3] = f.w;
  }
}

// acc[o][c] += sum_{dy, dx < k} w[tap(dy, dx) * wstride + c] * buf[((row0 + dy) * pitch + col0 + o + dx) * qstride + c]
// for o < PX, c < W; buf and w already point at the first channel. k = 3 (KT = 3) streams each input position once
// and applies it to every output it touches (the row's k taps' weights held in registers); a run-time k, or
// kLowReg, walks taps outermost and re-reads the positions, which keeps the registers at PX*W accumulators + 2*W
// (the backward's passes, which hold more per pixel, need that).
template <int KT, bool kFlip, int PX, int W, bool kLowReg = false>
__device__ __forceinline__ void window_vec(float (&acc)[PX][W], const float* buf, int qstride, int pitch, int row0,
                                           int col0, const float* w, int wstride, int k_runtime) {
  constexpr int KM = KT > 0 ? KT : kMaxK;
  const int k = KT > 0 ? KT : k_runtime;
#pragma unroll
  for (int dy = 0; dy < KM; ++dy) {
    if (dy < k) {
      const float* row = buf + ((row0 + dy) * pitch + col0) * qstride;
      if constexpr (KT > 0 && !kLowReg) {
        float wr[KT][W];
#pragma unroll
        for (int dx = 0; dx < KT; ++dx) lds_vec<W>(wr[dx], w + window_tap<KT, kFlip>(dy, dx, KT) * wstride);
#pragma unroll
        for (int c = 0; c < PX + KT - 1; ++c) {
          float v[W];
          lds_vec<W>(v, row + c * qstride);
#pragma unroll
          for (int dx = 0; dx < KT; ++dx) {
            const int o = c - dx;
            if (o >= 0 && o < PX) {
#pragma unroll
              for (int ch = 0; ch < W; ++ch) acc[o][ch] = fmaf(wr[dx][ch], v[ch], acc[o][ch]);
            }
          }
        }
      } else {
#pragma unroll
        for (int dx = 0; dx < KM; ++dx) {
          if (dx < k) {
            float wv[W];
            lds_vec<W>(wv, w + window_tap<KT, kFlip>(dy, dx, k) * wstride);
#pragma unroll
            for (int o = 0; o < PX; ++o) {
              float v[W];
              lds_vec<W>(v, row + (o + dx) * qstride);
#pragma unroll
              for (int ch = 0; ch < W; ++ch) acc[o][ch] = fmaf(wv[ch], v[ch], acc[o][ch]);
            }
          }
        }
      }
    }
  }
}

// z2 before the activation for cheap channels [jl0, jl0 + W) of a ratio-2 block (cheap channel jl reads x1 channel
// jl) on PX <= kVX pixels: b2 + the window over Z (NHWC, [rect pixel][channel]) whose top-left is rect (row0, col0).
template <int KT, int W, int PX = kVX, bool kLowReg = false>
__device__ __forceinline__ void cheap_preact_vec(float (&acc)[PX][W], const KernelParams& P, const float* Z,
                                                 const float* w2s, const float* b2s, int jl0, int row0, int col0) {
  float b[W];
  lds_vec<W>(b, b2s + jl0);
#pragma unroll
  for (int o = 0; o < PX; ++o)
#pragma unroll
    for (int ch = 0; ch < W; ++ch) acc[o][ch] = b[ch];
  window_vec<KT, false, PX, W, kLowReg>(acc, Z + jl0, P.L.ldz, P.g.rw, row0, col0, w2s + jl0, P.L.cheap, P.K);
}

}  // namespace cuda
}  // namespace ghostkernels
