// Fused Ghost-module forward in one pass:
//   out[:, c]     = x1 = act(W1 . x + b1)                       for the kept primary channels,
//   out[:, I + j] = act(b2[j] + dw_kxk(x1[j / M], w2[j]))        for the kept cheap channels,
// with x1 = 0 outside the image (zero padding of the depthwise conv is applied after the activation).
//
// One block = one (image, tile of th x tw pixels, chunk of 32 x1 channels). It
//   1. computes z1 for the tile plus a halo of p = k/2 pixels on tensor cores (ghost_cuda_gemm.cuh) into Z,
//   2. turns Z into x1 in place (bias, activation, zero outside the image) and stores the tile's own pixels as the
//      primary half of the output,
//   3. computes the chunk's 32*M cheap channels from Z (ghost_cuda_window.cuh) and stores them.
// x is read once per chunk (the chunk index varies fastest in the grid, so the chunks of a tile run together and
// re-reads of x hit L2; so do the halo re-reads of neighbouring tiles); the output is written once; nothing else
// touches global memory. Halo pixels cost recomputed GEMM columns, which the tensor cores have to spare.
#pragma once

#include "ghost_cuda_gemm.cuh"
#include "ghost_cuda_window.cuh"

namespace ghostkernels {
namespace cuda {

// Step 2: Z <- x1 in place for the chunk's n_x1 existing channels; primary output for the tile's own pixels.
template <typename T>
__device__ __forceinline__ void x1_epilogue(const KernelParams& P, unsigned char* smem, long long n, int c0, int n_x1,
                                            int n_primary) {
  const long long* pix = reinterpret_cast<const long long*>(smem + P.L.pix);
  const float* b1s = reinterpret_cast<const float*>(smem + P.L.bias1);
  float* Z = reinterpret_cast<float*>(smem + P.L.z);
  T* out = static_cast<T*>(P.out);
  const int rect = P.g.rh * P.g.rw;
  auto element = [&](int i, int q) {
    const long long v = pix[q];
    float& z = Z[z_index(P, i, q)];
    const float x1 = v >= 0 ? act_forward(P.act, z + b1s[i]) : 0.f;
    z = x1;
    if (v >= 0 && (v & 1) && i < n_primary) out[elem_offset(P, n, P.OC, c0 + i, v >> 1)] = Elem<T>::from_float(x1);
  };
  if (P.cl) {  // channel fastest: a warp stores adjacent channels of adjacent pixels, and reads Z[q][i] in a row
    const FastDiv ch_div(n_x1);
    for (int e = threadIdx.x; e < n_x1 * rect; e += kThreads) {
      const int q = ch_div.div(e);
      element(e - q * n_x1, q);
    }
  } else {  // a warp per channel, lanes over pixels: coalesced NCHW stores, conflict-free Z[i][q]
    for (int i = threadIdx.x / 32; i < n_x1; i += kWarps)
      for (int q = threadIdx.x % 32; q < rect; q += 32) element(i, q);
  }
}

// Step 3: the chunk's kept cheap channels on the tile's own pixels, kVX adjacent pixels per thread.
template <typename T, int KT>
__device__ __forceinline__ void cheap_epilogue(const KernelParams& P, unsigned char* smem, long long n, int c0,
                                               int n_cheap, int ty0, int tx0, int tha, int twa) {
  const float* Z = reinterpret_cast<const float*>(smem + P.L.z);
  const float* w2s = reinterpret_cast<const float*>(smem + P.L.w2);
  const float* b2s = reinterpret_cast<const float*>(smem + P.L.bias2);
  T* out = static_cast<T*>(P.out);
  const int KK = P.K * P.K, segs = (twa + kVX - 1) / kVX;
  const int qstride = P.cl ? P.L.ldz : 1;
  const FastDiv cheap_div(n_cheap), seg_div(segs), rows_div(tha), m_div(P.M);
  const int total = n_cheap * tha * segs;
  for (int e = threadIdx.x; e < total; e += kThreads) {
    // NHWC: channel fastest (coalesced stores of adjacent channels); NCHW: segment fastest (adjacent pixels).
    int jl, oy, sx;
    if (P.cl) {
      const int r = cheap_div.div(e);
      jl = e - r * n_cheap;
      oy = seg_div.div(r);
      sx = r - oy * segs;
    } else {
      const int r = seg_div.div(e);
      sx = e - r * segs;
      jl = rows_div.div(r);
      oy = r - jl * tha;
    }
    const int i = P.M == 1 ? jl : m_div.div(jl);
    float acc[kVX];
#pragma unroll
    for (int o = 0; o < kVX; ++o) acc[o] = b2s[jl];
    // Own pixel (oy, ox) is rect pixel (oy + p, ox + p); its window starts at rect (oy, ox).
    window_accumulate<KT, false>(acc, Z + (P.cl ? i : i * P.L.ldz), qstride, P.g.rw, oy, sx * kVX,
                                 w2s + jl * KK, P.K);
    const int c = P.I + c0 * P.M + jl;
    const long long lin0 = (long long)(ty0 + oy) * P.W + tx0 + sx * kVX;
#pragma unroll
    for (int o = 0; o < kVX; ++o) {
      if (sx * kVX + o < twa) out[elem_offset(P, n, P.OC, c, lin0 + o)] = Elem<T>::from_float(act_forward(P.act, acc[o]));
    }
  }
}

template <typename T, bool kTF32, int KT>
__global__ void __launch_bounds__(kThreads, 2) ghost_forward_kernel(const KernelParams P) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // unreachable: the binding rejects devices below compute capability 8.0
#else
  GK_DYNAMIC_SHARED_MEMORY(smem);
  const int chunk = int(blockIdx.x % unsigned(P.g.chunks));
  const long long item = blockIdx.x / unsigned(P.g.chunks);
  const int ntiles = P.g.tiles_y * P.g.tiles_x;
  const long long n = item / ntiles;
  const int tile = int(item - n * ntiles);
  const int c0 = chunk * kChunk;
  const int n_x1 = min(kChunk, P.I - c0);          // x1 channels of this chunk (the last chunk may be partial)
  const int n_primary = min(max(P.PK - c0, 0), kChunk);
  const int n_cheap = int(min(max((long long)P.CK - (long long)c0 * P.M, 0LL), (long long)kChunk * P.M));
  if (n_primary == 0 && n_cheap == 0) return;  // this chunk's channels are all sliced away (block-uniform)

  const int ty0 = (tile / P.g.tiles_x) * P.g.th, tx0 = (tile % P.g.tiles_x) * P.g.tw;
  const int tha = min(P.g.th, P.H - ty0), twa = min(P.g.tw, P.W - tx0);
  load_chunk_weights<T>(P, smem, c0);
  build_pixel_table(P, reinterpret_cast<long long*>(smem + P.L.pix), ty0, tx0, tha, twa);
  __syncthreads();
  gemm_rect<T, kTF32>(P, smem, n, c0);
  x1_epilogue<T>(P, smem, n, c0, n_x1, n_primary);
  if (n_cheap == 0) return;
  __syncthreads();
  cheap_epilogue<T, KT>(P, smem, n, c0, n_cheap, ty0, tx0, tha, twa);
#endif
}

}  // namespace cuda
}  // namespace ghostkernels
