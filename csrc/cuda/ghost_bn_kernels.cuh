// The CUDA kernels of the train-mode BatchNorm passes (host API ghost_bn_cuda.h) and their launch sequences.
//
// Templated on the element type T of x / z1 / grad_out / out only (the layout, NCHW or NHWC, and the activation are
// run-time parameters: uniform branches, so that the .cu compiles three instantiations of each kernel, not 30).
// Every kernel runs kThreads = 256 threads per block on a 1-D grid and has no early return before a barrier, so
// the host emulator (emulation/) runs them unchanged, fiber by fiber.
//
// Work decomposition. A "plane tile" is th x tw output pixels of one channel of one image (tw = 8, 16 or 32 after
// the width, th = 256 / tw), one pixel per thread. The depthwise passes first fill shared memory with the tile plus
// its halo of p = K/2 pixels of x1 = act(BN1(z1)) (or of act'(y1), act'(y1) * xhat1, or dz2), zero outside the
// image as the depthwise conv's padding, exactly as the CPU pass builds its planes; then every thread runs the
// K x K stencil at its own pixel. Per-channel reductions run one block per (channel, split): the block loops over
// the channel's tiles u = split, split + S, ... of all images, each thread accumulating its own pixels; then a
// fixed-shape tree in shared memory combines the threads, and a finishing kernel combines the S splits in order
// in float64. Moments are per thread shifted Welford sums (deviations from the thread's first value, so a large
// mean costs no precision), combined with Chan's update in float64 in the tree and in the finish; never
// E[x^2] - E[x]^2. No atomics anywhere: results depend only on the inputs and the sizes.
//
// The 1x1 convolutions are a shared-memory tiled GEMM in float32 FMAs (64 x 64 output tiles, 16-deep k slices,
// 4 x 4 per thread): z1 = W1 x, grad x = W1^T dz1 and grad W1 = dz1 x^T, the last split over pixel ranges into
// partials that the finish kernel sums in order.
#pragma once

#include "ghost_bn_cuda.h"
#include "ghost_cuda_params.cuh"

namespace ghostkernels {
namespace cuda {

constexpr int kBnMaxK = 7;                 // largest depthwise size (the stencil's taps live in registers)
constexpr int kBnMaxTaps = kBnMaxK * kBnMaxK;
constexpr int kBnReduceBlocks = 1024;      // blocks a reduction aims for (splits per channel = this / channels)
constexpr int kBnGT = 64, kBnGK = 16;      // GEMM output tile (rows and pixels) and k slice
constexpr int kBnGPitch = kBnGT + 1;       // grad W1's tiles are filled k-fastest: one pad column per row

struct BnParams {
  int N = 0, C = 0, H = 0, W = 0, I = 0, M = 0, K = 0, p = 0, OC = 0, PK = 0, CK = 0, HW = 0;
  Act act = Act::Identity;
  bool cl = false;
  int tw = 32, th = 8, tiles_x = 0, tiles = 0;  // plane tiles: tiles_x per row, tiles per image
  int units = 0;                                // N * tiles
  int splits = 1;                               // blocks per channel of the reduction being launched
  int red_off = 0;                              // byte offset of the reduction tree in shared memory
  // The GEMM being launched: out[n, r, pix] = sum_k A[r * a_rs + k * a_ks] * B[n, k, pix].
  int g_rows = 0, g_k = 0, g_in_ch = 0, g_out_ch = 0, g_a_rs = 0, g_a_ks = 0, g_rtiles = 0, g_ptiles = 0;
  bool g_b_cl = false;
  const float* g_a = nullptr;
  const void* g_b = nullptr;
  void* g_out = nullptr;
  // grad W1: pixels [s * gw_chunk, (s + 1) * gw_chunk) of the N * HW per split s.
  int gw_chunk = 0, gw_itiles = 0, gw_ctiles = 0;
  // The finish being launched: f_ch channels x f_r values, each summed over f_s splits.
  int f_ch = 0, f_r = 0, f_s = 0;
  bool f_rows_first = false;  // output [f_r, f_ch] (else [f_ch, f_r])
  float* f_out0 = nullptr;
  float* f_out1 = nullptr;
  const void* x = nullptr;
  const float* w1 = nullptr;
  const void* z1 = nullptr;
  void* z1_out = nullptr;
  const float* w2 = nullptr;
  const void* go = nullptr;
  void* out = nullptr;
  BnStageArgs s1, s2;
  void* part = nullptr;  // partials of the reduction being launched
  float* dz1 = nullptr;  // backward: [N, I, HW] float, NCHW
  float* dz2 = nullptr;  // backward: [N, I*M, HW] float, NCHW (kept channels only)
};

// ---- Element access --------------------------------------------------------------------------------------------

__device__ __forceinline__ long long bn_off(const BnParams& P, bool cl, long long n, int Ct, int c, long long lin) {
  return cl ? (n * P.HW + lin) * Ct + c : (n * Ct + c) * (long long)P.HW + lin;
}
template <typename T>
__device__ __forceinline__ float bn_load(const void* p, long long i) {
  return Elem<T>::load(static_cast<const T*>(p) + i);
}
template <typename T>
__device__ __forceinline__ void bn_store(void* p, long long i, float v) {
  static_cast<T*>(p)[i] = Elem<T>::from_float(v);
}
__device__ __forceinline__ float bn_xhat(const BnStageArgs& s, int c, float z) { return (z - s.mean[c]) * s.invstd[c]; }
__device__ __forceinline__ float bn_pre(const BnStageArgs& s, int c, float xh) { return s.weight[c] * xh + s.bias[c]; }
// The BN backward's gradient at z from g = dL/dy: invstd * weight * (g - mean(g) - xhat * mean(g * xhat)).
__device__ __forceinline__ float bn_dz(const BnStageArgs& s, int c, float g, float xh) {
  return (s.invstd[c] * s.weight[c]) * (g - s.mean_dy[c] - xh * s.mean_dy_xhat[c]);
}

// A thread's pixel of plane tile u (image n, rows y0.., columns x0..).
struct BnPixel {
  long long n;
  int y0, x0, ty, tx, y, x;
  bool inside;
  long long lin_;  // y * W + x
};
__device__ __forceinline__ BnPixel bn_pixel(const BnParams& P, int u) {
  BnPixel q;
  q.n = u / P.tiles;
  const int t = u % P.tiles;
  q.y0 = (t / P.tiles_x) * P.th;
  q.x0 = (t % P.tiles_x) * P.tw;
  q.ty = int(threadIdx.x) / P.tw;
  q.tx = int(threadIdx.x) % P.tw;
  q.y = q.y0 + q.ty;
  q.x = q.x0 + q.tx;
  q.inside = q.y < P.H && q.x < P.W;
  q.lin_ = (long long)q.y * P.W + q.x;
  return q;
}

// A block of the per-plane kernels (grid N * I * tiles, tile fastest): its primary channel c and the thread's pixel.
__device__ __forceinline__ BnPixel bn_plane_block(const BnParams& P, int& c) {
  const long long rest = blockIdx.x / P.tiles;
  c = int(rest % P.I);
  return bn_pixel(P, int((rest / P.I) * P.tiles + blockIdx.x % P.tiles));
}

// ---- Shared-memory tiles with halo -----------------------------------------------------------------------------

__device__ __forceinline__ int bn_tile_pitch(const BnParams& P) { return P.tw + 2 * P.p; }
__device__ __forceinline__ int bn_tile_elems(const BnParams& P) { return (P.th + 2 * P.p) * (P.tw + 2 * P.p); }

// Primary channel c of image n around the tile at (y0, x0): x1 = act(y1) into t0 and, where given, a1 = act'(y1)
// into t1 and a1 * xhat1 into t2; zero outside the image (the depthwise conv's zero padding of x1).
template <typename T>
__device__ void bn_fill_z1_tiles(const BnParams& P, float* t0, float* t1, float* t2, long long n, int c, int y0,
                                 int x0) {
  const int pitch = bn_tile_pitch(P), elems = bn_tile_elems(P);
  for (int e = int(threadIdx.x); e < elems; e += kThreads) {
    const int y = y0 - P.p + e / pitch, x = x0 - P.p + e % pitch;
    float v0 = 0.f, v1 = 0.f, v2 = 0.f;
    if (y >= 0 && y < P.H && x >= 0 && x < P.W) {
      const float z = bn_load<T>(P.z1, bn_off(P, P.cl, n, P.I, c, (long long)y * P.W + x));
      const float xh = bn_xhat(P.s1, c, z), pre = bn_pre(P.s1, c, xh);
      v0 = act_forward(P.act, pre);
      if (t1 != nullptr) {
        v1 = act_derivative(P.act, pre);
        v2 = v1 * xh;
      }
    }
    t0[e] = v0;
    if (t1 != nullptr) {
      t1[e] = v1;
      t2[e] = v2;
    }
  }
}

// The depthwise conv (no bias) at the thread's pixel of a tile: sum over taps of w[dy][dx] * tile[ty + dy][tx + dx].
__device__ __forceinline__ float bn_stencil(const BnParams& P, const float* tile, const float* w, int ty, int tx) {
  const int pitch = bn_tile_pitch(P);
  float s = 0.f;
  for (int dy = 0; dy < P.K; ++dy)
    for (int dx = 0; dx < P.K; ++dx) s = fmaf(w[dy * P.K + dx], tile[(ty + dy) * pitch + tx + dx], s);
  return s;
}

// ---- Block reductions (fixed tree: deterministic) --------------------------------------------------------------

// The block's sum of v, returned to every thread.
__device__ float bn_block_sum(float v, float* red) {
  const int t = int(threadIdx.x);
  red[t] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) red[t] += red[t + s];
    __syncthreads();
  }
  const float r = red[0];
  __syncthreads();  // before red is reused
  return r;
}

// Thread 0 writes the block's sums of v[0..R) to part[0..R).
__device__ void bn_write_block_sums(const float* v, int R, float* red, float* part) {
  for (int r = 0; r < R; ++r) {
    const float total = bn_block_sum(v[r], red);
    if (threadIdx.x == 0) part[r] = total;
  }
}

// Chan et al.'s update: (n, mean, m2) absorbs a block of nb values with mean mb and squared deviations m2b.
__host__ __device__ __forceinline__ void bn_chan(double& n, double& mean, double& m2, double nb, double mb,
                                                 double m2b) {
  if (nb == 0) return;
  const double total = n + nb, delta = mb - mean;
  mean += delta * (nb / total);
  m2 += m2b + delta * delta * (n * nb / total);
  n = total;
}

// One thread's moments: Welford's update on deviations from the first value it saw.
struct BnThreadMoments {
  float n = 0.f, pivot = 0.f, mean = 0.f, m2 = 0.f;  // mean of v - pivot
  __device__ __forceinline__ void add(float v) {
    if (n == 0.f) pivot = v;
    const float d = v - pivot;
    n += 1.f;
    const float delta = d - mean;
    mean += delta / n;
    m2 = fmaf(delta, d - mean, m2);
  }
};

// The block's moments of channel ch, split s, written by thread 0 as (n, mean, m2) doubles to the partials.
__device__ void bn_block_moments(const BnThreadMoments& m, unsigned char* smem, const BnParams& P, int ch, int s) {
  double* red = reinterpret_cast<double*>(smem + P.red_off);
  double* out = static_cast<double*>(P.part) + ((long long)ch * P.splits + s) * 3;
  const int t = int(threadIdx.x);
  red[3 * t] = m.n;
  red[3 * t + 1] = double(m.pivot) + double(m.mean);
  red[3 * t + 2] = m.m2;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) {
      double n = red[3 * t], mean = red[3 * t + 1], m2 = red[3 * t + 2];
      bn_chan(n, mean, m2, red[3 * (t + s)], red[3 * (t + s) + 1], red[3 * (t + s) + 2]);
      red[3 * t] = n, red[3 * t + 1] = mean, red[3 * t + 2] = m2;
    }
    __syncthreads();
  }
  if (t == 0) out[0] = red[0], out[1] = red[1], out[2] = red[2];
}

// At the thread's pixel q of cheap channel j: xhat2 (z2 the stencil over the x1 tile) and g2 = dL/dy2 =
// grad_out[:, I + j] * act'(y2).
template <typename T>
__device__ __forceinline__ void bn_cheap_grad(const BnParams& P, const float* x1t, const float* w, const BnPixel& q,
                                              int j, float& xh2, float& g2) {
  xh2 = bn_xhat(P.s2, j, bn_stencil(P, x1t, w, q.ty, q.tx));
  g2 = bn_load<T>(P.go, bn_off(P, P.cl, q.n, P.OC, P.I + j, q.lin_)) * act_derivative(P.act, bn_pre(P.s2, j, xh2));
}

// ---- Kernels ---------------------------------------------------------------------------------------------------

// out[n, r, pix] = sum_k A[r, k] * B[n, k, pix] (float32 FMAs) for one 64-row x 64-pixel tile of one image.
// z1 = W1 x (B = x, out = z1) and grad x = W1^T dz1 (B = the float dz1, out = grad x).
template <typename TB, typename TO>
__global__ void __launch_bounds__(kThreads) bn_gemm_kernel(const BnParams P) {
  GK_DYNAMIC_SHARED_MEMORY(smem);
  float* As = reinterpret_cast<float*>(smem);  // [k][row]
  float* Bs = As + kBnGK * kBnGT;              // [k][pixel]
  const int t = int(threadIdx.x), tr = t / 16, tc = t % 16;
  long long b = blockIdx.x;
  const int r0 = int(b % P.g_rtiles) * kBnGT;
  b /= P.g_rtiles;
  const int p0 = int(b % P.g_ptiles) * kBnGT;
  const long long n = b / P.g_ptiles;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < P.g_k; k0 += kBnGK) {
    for (int q = 0; q < kBnGK * kBnGT / kThreads; ++q) {
      const int e = t + q * kThreads, k = e / kBnGT, i = e % kBnGT, kk = k0 + k;
      const int r = r0 + i, px = p0 + i;
      As[e] = (r < P.g_rows && kk < P.g_k) ? P.g_a[(long long)r * P.g_a_rs + (long long)kk * P.g_a_ks] : 0.f;
      Bs[e] = (px < P.HW && kk < P.g_k) ? bn_load<TB>(P.g_b, bn_off(P, P.g_b_cl, n, P.g_in_ch, kk, px)) : 0.f;
    }
    __syncthreads();
    for (int k = 0; k < kBnGK; ++k) {
      float a[4], v[4];
      for (int i = 0; i < 4; ++i) a[i] = As[k * kBnGT + tr + 16 * i];
      for (int j = 0; j < 4; ++j) v[j] = Bs[k * kBnGT + tc + 16 * j];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], v[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int r = r0 + tr + 16 * i, px = p0 + tc + 16 * j;
      if (r < P.g_rows && px < P.HW) bn_store<TO>(P.g_out, bn_off(P, P.cl, n, P.g_out_ch, r, px), acc[i][j]);
    }
}

// Partials of grad W1 = dz1 x^T: split s sums pixels [s * gw_chunk, ...) of all images into part[(i * C + c) * S + s].
template <typename T>
__global__ void __launch_bounds__(kThreads) bn_grad_w1_kernel(const BnParams P) {
  GK_DYNAMIC_SHARED_MEMORY(smem);
  float* As = reinterpret_cast<float*>(smem);  // [row][k], pitch kBnGPitch: filled k-fastest (coalesced reads)
  float* Bs = As + kBnGT * kBnGPitch;
  const int t = int(threadIdx.x), tr = t / 16, tc = t % 16;
  long long b = blockIdx.x;
  const int i0 = int(b % P.gw_itiles) * kBnGT;
  b /= P.gw_itiles;
  const int c0 = int(b % P.gw_ctiles) * kBnGT;
  const int s = int(b / P.gw_ctiles);
  const long long total = (long long)P.N * P.HW, kb = (long long)s * P.gw_chunk;
  const long long ke = kb + P.gw_chunk < total ? kb + P.gw_chunk : total;
  float acc[4][4] = {};
  for (long long k0 = kb; k0 < ke; k0 += kBnGK) {
    for (int q = 0; q < kBnGK * kBnGT / kThreads; ++q) {
      const int e = t + q * kThreads, k = e % kBnGK, i = e / kBnGK;
      const long long flat = k0 + k;
      const bool valid = flat < ke;
      const long long n = valid ? flat / P.HW : 0, lin = valid ? flat % P.HW : 0;
      As[i * kBnGPitch + k] = valid && i0 + i < P.I ? P.dz1[(n * P.I + i0 + i) * P.HW + lin] : 0.f;
      Bs[i * kBnGPitch + k] = valid && c0 + i < P.C ? bn_load<T>(P.x, bn_off(P, P.cl, n, P.C, c0 + i, lin)) : 0.f;
    }
    __syncthreads();
    for (int k = 0; k < kBnGK; ++k) {
      float a[4], v[4];
      for (int i = 0; i < 4; ++i) a[i] = As[(tr + 16 * i) * kBnGPitch + k];
      for (int j = 0; j < 4; ++j) v[j] = Bs[(tc + 16 * j) * kBnGPitch + k];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], v[j], acc[i][j]);
    }
    __syncthreads();
  }
  float* part = static_cast<float*>(P.part);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int r = i0 + tr + 16 * i, c = c0 + tc + 16 * j;
      if (r < P.I && c < P.C) part[((long long)r * P.C + c) * P.f_s + s] = acc[i][j];
    }
}

// Partial moments of z1 (as stored) per (channel, split) -> part[(c * S + s) * 3 ..] as doubles.
template <typename T>
__global__ void __launch_bounds__(kThreads) bn_z1_moments_kernel(const BnParams P) {
  GK_DYNAMIC_SHARED_MEMORY(smem);
  const int c = int(blockIdx.x) / P.splits, s = int(blockIdx.x) % P.splits;
  BnThreadMoments m;
  for (int u = s; u < P.units; u += P.splits) {
    const BnPixel q = bn_pixel(P, u);
    if (q.inside) m.add(bn_load<T>(P.z1, bn_off(P, P.cl, q.n, P.I, c, q.lin_)));
  }
  bn_block_moments(m, smem, P, c, s);
}

// Partial moments of z2 = dwconv(x1) per (cheap channel, split).
template <typename T>
__global__ void __launch_bounds__(kThreads) bn_cheap_stats_kernel(const BnParams P) {
  GK_DYNAMIC_SHARED_MEMORY(smem);
  float* tile = reinterpret_cast<float*>(smem);
  const int j = int(blockIdx.x) / P.splits, s = int(blockIdx.x) % P.splits, c = j / P.M;
  const float* w = P.w2 + (long long)j * P.K * P.K;
  BnThreadMoments m;
  for (int u = s; u < P.units; u += P.splits) {
    const BnPixel q = bn_pixel(P, u);
    bn_fill_z1_tiles<T>(P, tile, nullptr, nullptr, q.n, c, q.y0, q.x0);
    __syncthreads();
    if (q.inside) m.add(bn_stencil(P, tile, w, q.ty, q.tx));
    __syncthreads();
  }
  bn_block_moments(m, smem, P, j, s);
}

// out = cat(x1, act(BN2(z2)))[:, :OC]: block (image, primary channel, tile), its channel's x1 and cheap channels.
template <typename T>
__global__ void __launch_bounds__(kThreads) bn_forward_out_kernel(const BnParams P) {
  GK_DYNAMIC_SHARED_MEMORY(smem);
  float* tile = reinterpret_cast<float*>(smem);
  int c;
  const BnPixel q = bn_plane_block(P, c);
  if (c >= P.OC && P.I + c * P.M >= P.OC) return;  // the whole block's channels are sliced off (block-uniform)
  bn_fill_z1_tiles<T>(P, tile, nullptr, nullptr, q.n, c, q.y0, q.x0);
  __syncthreads();
  if (!q.inside) return;  // no barrier follows
  const int pitch = bn_tile_pitch(P);
  if (c < P.OC) bn_store<T>(P.out, bn_off(P, P.cl, q.n, P.OC, c, q.lin_), tile[(q.ty + P.p) * pitch + q.tx + P.p]);
  for (int m = 0; m < P.M; ++m) {
    const int j = c * P.M + m;
    if (P.I + j >= P.OC) break;
    const float z2 = bn_stencil(P, tile, P.w2 + (long long)j * P.K * P.K, q.ty, q.tx);
    const float y2 = bn_pre(P.s2, j, bn_xhat(P.s2, j, z2));
    bn_store<T>(P.out, bn_off(P, P.cl, q.n, P.OC, P.I + j, q.lin_), act_forward(P.act, y2));
  }
}

// Partial sums of a1 * grad_out and a1 * xhat1 * grad_out per (primary channel, split) -> part[(c * S + s) * 2 ..].
template <typename T>
__global__ void __launch_bounds__(kThreads) bn_reduce_primary_kernel(const BnParams P) {
  GK_DYNAMIC_SHARED_MEMORY(smem);
  float* red = reinterpret_cast<float*>(smem + P.red_off);
  const int c = int(blockIdx.x) / P.splits, s = int(blockIdx.x) % P.splits;
  float* part = static_cast<float*>(P.part) + ((long long)c * P.splits + s) * 2;
  float s0 = 0.f, s1 = 0.f;
  if (c < P.PK) {  // block-uniform: channels past the slice sum to zero
    for (int u = s; u < P.units; u += P.splits) {
      const BnPixel q = bn_pixel(P, u);
      if (!q.inside) continue;
      const float xh = bn_xhat(P.s1, c, bn_load<T>(P.z1, bn_off(P, P.cl, q.n, P.I, c, q.lin_)));
      const float a = act_derivative(P.act, bn_pre(P.s1, c, xh));
      const float g = bn_load<T>(P.go, bn_off(P, P.cl, q.n, P.OC, c, q.lin_));
      s0 = fmaf(a, g, s0);
      s1 = fmaf(a * xh, g, s1);
    }
  }
  const float v[2] = {s0, s1};
  bn_write_block_sums(v, 2, red, part);
}

// Partial sums of the eight cheap-channel sums of ghost_bn_backward_reduce per (cheap channel, split).
template <typename T>
__global__ void __launch_bounds__(kThreads) bn_reduce_cheap_kernel(const BnParams P) {
  GK_DYNAMIC_SHARED_MEMORY(smem);
  const int elems = bn_tile_elems(P);
  float* x1t = reinterpret_cast<float*>(smem);
  float* a1t = x1t + elems;
  float* aqt = a1t + elems;
  float* red = reinterpret_cast<float*>(smem + P.red_off);
  const int j = int(blockIdx.x) / P.splits, s = int(blockIdx.x) % P.splits, c = j / P.M;
  const float* w = P.w2 + (long long)j * P.K * P.K;
  float v[8] = {};
  if (j < P.CK) {  // block-uniform
    for (int u = s; u < P.units; u += P.splits) {
      const BnPixel q = bn_pixel(P, u);
      bn_fill_z1_tiles<T>(P, x1t, a1t, aqt, q.n, c, q.y0, q.x0);
      __syncthreads();
      if (q.inside) {
        float xh2, g2;
        bn_cheap_grad<T>(P, x1t, w, q, j, xh2, g2);
        const float da = bn_stencil(P, a1t, w, q.ty, q.tx), dq = bn_stencil(P, aqt, w, q.ty, q.tx);
        v[0] += g2, v[1] += g2 * xh2;
        v[2] += da * g2, v[3] += da, v[4] += da * xh2;
        v[5] += dq * g2, v[6] += dq, v[7] += dq * xh2;
      }
      __syncthreads();
    }
  }
  bn_write_block_sums(v, 8, red, static_cast<float*>(P.part) + ((long long)j * P.splits + s) * 8);
}

// Backward, cheap stage: dz2 of every kept cheap channel into P.dz2, and the partial sums of grad w_cheap (dz2 times
// x1 at each tap) per (cheap channel, split) -> part[(j * S + s) * K*K ..].
template <typename T>
__global__ void __launch_bounds__(kThreads) bn_dz2_kernel(const BnParams P) {
  GK_DYNAMIC_SHARED_MEMORY(smem);
  float* tile = reinterpret_cast<float*>(smem);
  float* red = reinterpret_cast<float*>(smem + P.red_off);
  const int j = int(blockIdx.x) / P.splits, s = int(blockIdx.x) % P.splits, c = j / P.M, KK = P.K * P.K;
  const float* w = P.w2 + (long long)j * KK;
  const int pitch = bn_tile_pitch(P);
  float acc[kBnMaxTaps];
  for (int k = 0; k < KK; ++k) acc[k] = 0.f;
  if (j < P.CK) {  // block-uniform: a sliced-off channel's dz2 is zero (and never read)
    for (int u = s; u < P.units; u += P.splits) {
      const BnPixel q = bn_pixel(P, u);
      bn_fill_z1_tiles<T>(P, tile, nullptr, nullptr, q.n, c, q.y0, q.x0);
      __syncthreads();
      if (q.inside) {
        float xh2, g2;
        bn_cheap_grad<T>(P, tile, w, q, j, xh2, g2);
        const float dz = bn_dz(P.s2, j, g2, xh2);
        P.dz2[(q.n * P.I * P.M + j) * P.HW + q.lin_] = dz;
        for (int dy = 0; dy < P.K; ++dy)
          for (int dx = 0; dx < P.K; ++dx)
            acc[dy * P.K + dx] = fmaf(dz, tile[(q.ty + dy) * pitch + q.tx + dx], acc[dy * P.K + dx]);
      }
      __syncthreads();
    }
  }
  bn_write_block_sums(acc, KK, red, static_cast<float*>(P.part) + ((long long)j * P.splits + s) * KK);
}

// Backward, primary stage: g1 = (grad_out[:, c] + dwconv^T(dz2)) * act'(y1), dz1 = the BN backward of g1, into P.dz1;
// block (image, primary channel, tile).
template <typename T>
__global__ void __launch_bounds__(kThreads) bn_dz1_kernel(const BnParams P) {
  GK_DYNAMIC_SHARED_MEMORY(smem);
  float* tile = reinterpret_cast<float*>(smem);
  int c;
  const BnPixel q = bn_plane_block(P, c);
  const long long n = q.n;
  const int pitch = bn_tile_pitch(P), elems = bn_tile_elems(P), K1 = P.K - 1;
  float g = 0.f;
  for (int m = 0; m < P.M; ++m) {
    const int j = c * P.M + m;
    if (j >= P.CK) break;  // block-uniform
    const float* dz2 = P.dz2 + ((long long)n * P.I * P.M + j) * P.HW;
    for (int e = int(threadIdx.x); e < elems; e += kThreads) {
      const int y = q.y0 - P.p + e / pitch, x = q.x0 - P.p + e % pitch;
      tile[e] = (y >= 0 && y < P.H && x >= 0 && x < P.W) ? dz2[(long long)y * P.W + x] : 0.f;
    }
    __syncthreads();
    // The transposed depthwise conv: x1's pixel (y, x) fed z2's pixel (y - dy + p, x - dx + p) through tap (dy, dx).
    const float* w = P.w2 + (long long)j * P.K * P.K;
    for (int dy = 0; dy < P.K; ++dy)
      for (int dx = 0; dx < P.K; ++dx) g = fmaf(w[dy * P.K + dx], tile[(q.ty + K1 - dy) * pitch + q.tx + K1 - dx], g);
    __syncthreads();
  }
  if (!q.inside) return;
  if (c < P.OC) g += bn_load<T>(P.go, bn_off(P, P.cl, q.n, P.OC, c, q.lin_));
  const float xh = bn_xhat(P.s1, c, bn_load<T>(P.z1, bn_off(P, P.cl, q.n, P.I, c, q.lin_)));
  const float a = act_derivative(P.act, bn_pre(P.s1, c, xh));
  P.dz1[((long long)n * P.I + c) * P.HW + q.lin_] = bn_dz(P.s1, c, g * a, xh);
}

// Moments of f_ch channels from f_s partials each (n, mean, m2 doubles): mean -> f_out0, biased var -> f_out1; NaN
// for a channel that saw no values (as torch's batch_norm for an empty batch).
__global__ void __launch_bounds__(kThreads) bn_moments_finish_kernel(const BnParams P) {
  const long long ch = (long long)blockIdx.x * kThreads + threadIdx.x;
  if (ch >= P.f_ch) return;
  const double* part = static_cast<const double*>(P.part) + ch * P.f_s * 3;
  double n = 0, mean = 0, m2 = 0;
  for (int s = 0; s < P.f_s; ++s) bn_chan(n, mean, m2, part[3 * s], part[3 * s + 1], part[3 * s + 2]);
  const float nan = nanf("");
  P.f_out0[ch] = n > 0 ? float(mean) : nan;
  P.f_out1[ch] = n > 0 ? float(m2 / n) : nan;
}

// Sums of f_ch x f_r values over f_s float partials each (part[(ch * f_s + s) * f_r + r]), in split order, in float64.
__global__ void __launch_bounds__(kThreads) bn_sum_finish_kernel(const BnParams P) {
  const long long e = (long long)blockIdx.x * kThreads + threadIdx.x;
  if (e >= (long long)P.f_ch * P.f_r) return;
  const long long ch = e / P.f_r, r = e % P.f_r;
  const float* part = static_cast<const float*>(P.part);
  double sum = 0;
  for (int s = 0; s < P.f_s; ++s) sum += part[(ch * P.f_s + s) * P.f_r + r];
  P.f_out0[P.f_rows_first ? r * P.f_ch + ch : e] = float(sum);
}

// ---- Launch sequences (shared by the launchers of ghost_bn.cu and the host emulator) ----------------------------

using BnKernelFn = void (*)(const BnParams);

inline int bn_ceil_div(long long a, long long b) { return int((a + b - 1) / b); }

// The sizes, tiles and pointers of a call.
inline BnParams bn_params(const BnTrainArgs& a) {
  BnParams P;
  P.N = int(a.N), P.C = int(a.C), P.H = int(a.H), P.W = int(a.W), P.I = int(a.I), P.M = int(a.M), P.K = int(a.K);
  P.p = P.K / 2, P.OC = int(a.OC), P.HW = P.H * P.W;
  P.PK = P.OC < P.I ? P.OC : P.I;
  P.CK = P.OC > P.I ? P.OC - P.I : 0;
  P.act = a.act;
  P.cl = a.channels_last;
  P.tw = P.W <= 8 ? 8 : P.W <= 16 ? 16 : 32;
  P.th = kThreads / P.tw;
  P.tiles_x = bn_ceil_div(P.W, P.tw);
  P.tiles = P.tiles_x * bn_ceil_div(P.H, P.th);
  P.units = P.N * P.tiles;
  P.x = a.x, P.w1 = a.w1, P.z1 = a.z1, P.z1_out = a.z1_out, P.w2 = a.w2, P.go = a.grad_out, P.out = a.out;
  P.s1 = a.primary, P.s2 = a.cheap;
  return P;
}

// Splits per channel of a reduction over `channels` channels: about kBnReduceBlocks blocks in all, at most one per
// tile.
inline int bn_splits(const BnParams& P, long long channels) {
  long long s = channels > 0 ? kBnReduceBlocks / channels : 1;
  if (s > P.units) s = P.units;
  return s < 1 ? 1 : int(s);
}

// Shared memory of a depthwise kernel with `planes` tiles and a reduction tree of `red_bytes`.
inline unsigned bn_tile_smem(BnParams& P, int planes, int red_bytes) {
  const int tile_bytes = planes * (P.th + 2 * P.p) * (P.tw + 2 * P.p) * 4;
  P.red_off = (tile_bytes + 15) / 16 * 16;
  return unsigned(P.red_off + red_bytes);
}

// grad W1's split of the N * HW pixels.
inline void bn_grad_w1_plan(BnParams& P) {
  P.gw_itiles = bn_ceil_div(P.I, kBnGT);
  P.gw_ctiles = bn_ceil_div(P.C, kBnGT);
  const long long total = (long long)P.N * P.HW, tiles = (long long)P.gw_itiles * P.gw_ctiles;
  long long s = kBnReduceBlocks / (tiles > 0 ? tiles : 1);
  const long long slices = (total + kBnGK - 1) / kBnGK;
  if (s > slices) s = slices;
  if (s < 1) s = 1;
  P.gw_chunk = bn_ceil_div(bn_ceil_div(total, s), kBnGK) * kBnGK;
  if (P.gw_chunk < kBnGK) P.gw_chunk = kBnGK;
  P.f_s = bn_ceil_div(total > 0 ? total : 1, P.gw_chunk);
}

// Scratch layout of a pass (byte offsets into BnTrainArgs::scratch, 16-byte aligned regions).
struct BnScratch {
  long long part0 = 0, part1 = 0, dz1 = 0, dz2 = 0, total = 0;
};
inline BnScratch bn_scratch(BnPass pass, const BnTrainArgs& a) {
  BnParams P = bn_params(a);
  BnScratch s;
  auto region = [&](long long bytes) {
    const long long at = s.total;
    s.total += (bytes + 15) / 16 * 16;
    return at;
  };
  const long long IM = (long long)P.I * P.M, KK = (long long)P.K * P.K;
  switch (pass) {
    case BnPass::Conv1x1Stats: s.part0 = region(P.I * bn_splits(P, P.I) * 3 * 8LL); break;
    case BnPass::CheapStats: s.part0 = region(IM * bn_splits(P, IM) * 3 * 8LL); break;
    case BnPass::ForwardOut: break;
    case BnPass::BackwardReduce:
      s.part0 = region(P.I * bn_splits(P, P.I) * 2 * 4LL);
      s.part1 = region(IM * bn_splits(P, IM) * 8 * 4LL);
      break;
    case BnPass::Backward:
      bn_grad_w1_plan(P);
      s.part0 = region((long long)P.I * P.C * P.f_s * 4LL);
      s.part1 = region(IM * bn_splits(P, IM) * KK * 4LL);
      s.dz1 = region((long long)P.N * P.I * P.HW * 4LL);
      s.dz2 = region((long long)P.N * IM * P.HW * 4LL);
      break;
  }
  return s;
}

inline const char* bn_unsupported(const BnTrainArgs& a) {
  if (a.K > kBnMaxK) return "the CUDA train-mode BatchNorm kernels support depthwise kernel sizes up to 7";
  const long long big = 0x7fffffffLL;
  const long long ch = a.C > a.I * (a.M + 1) ? a.C : a.I * (a.M + 1);
  if (a.H * a.W > big || ch > big || a.N > big) return "sizes past the CUDA kernels' 32-bit indexing";
  BnParams P = bn_params(a);
  if ((long long)P.N * P.tiles > big || (long long)P.N * P.tiles * (P.I > 0 ? P.I : 1) > big ||
      (long long)P.N * bn_ceil_div(P.HW, kBnGT) * bn_ceil_div(ch, kBnGT) > big)
    return "more blocks than a CUDA grid holds";
  return nullptr;
}

// Runs `pass` through launch(kernel, blocks, shared bytes, params) (a launch of zero blocks must do nothing).
template <typename T, typename Launch>
int bn_run(BnPass pass, const BnTrainArgs& a, Launch&& launch) {
  BnParams P = bn_params(a);
  const BnScratch sc = bn_scratch(pass, a);
  unsigned char* scratch = static_cast<unsigned char*>(a.scratch);
  const int IM = P.I * P.M, KK = P.K * P.K;
  int err = 0;
  auto run = [&](BnKernelFn fn, long long blocks, unsigned smem, const BnParams& Q) {
    if (err == 0) err = launch(fn, blocks, smem, Q);
  };
  // The finish of a reduction: f_ch channels x f_r values from the partials at `part`.
  auto finish = [&](BnKernelFn fn, void* part, int ch, int r, int splits, bool rows_first, float* out0, float* out1) {
    BnParams F = P;
    F.part = part, F.f_ch = ch, F.f_r = r, F.f_s = splits, F.f_rows_first = rows_first;
    F.f_out0 = out0, F.f_out1 = out1;
    run(fn, bn_ceil_div((long long)ch * r, kThreads), 0, F);
  };
  // The GEMM out[n, r, pix] = sum_k A[r * a_rs + k * a_ks] B[n, k, pix].
  auto gemm = [&](BnKernelFn fn, int rows, int k, const float* A, int a_rs, int a_ks, const void* B, bool b_cl,
                  int in_ch, void* out, int out_ch) {
    BnParams G = P;
    G.g_rows = rows, G.g_k = k, G.g_a = A, G.g_a_rs = a_rs, G.g_a_ks = a_ks, G.g_b = B, G.g_b_cl = b_cl;
    G.g_in_ch = in_ch, G.g_out = out, G.g_out_ch = out_ch;
    G.g_rtiles = bn_ceil_div(rows, kBnGT), G.g_ptiles = bn_ceil_div(P.HW, kBnGT);
    run(fn, (long long)P.N * G.g_ptiles * G.g_rtiles, 2 * kBnGK * kBnGT * 4, G);
  };
  switch (pass) {
    case BnPass::Conv1x1Stats: {
      gemm(&bn_gemm_kernel<T, T>, P.I, P.C, P.w1, P.C, 1, P.x, P.cl, P.C, a.z1_out, P.I);
      BnParams R = P;
      R.z1 = a.z1_out, R.splits = bn_splits(P, P.I), R.part = scratch + sc.part0, R.red_off = 0;
      run(&bn_z1_moments_kernel<T>, (long long)P.I * R.splits, 3 * kThreads * 8, R);
      finish(&bn_moments_finish_kernel, R.part, P.I, 1, R.splits, false, a.res0, a.res1);
      break;
    }
    case BnPass::CheapStats: {
      BnParams R = P;
      R.splits = bn_splits(P, IM), R.part = scratch + sc.part0;
      const unsigned smem = bn_tile_smem(R, 1, 3 * kThreads * 8);
      run(&bn_cheap_stats_kernel<T>, (long long)IM * R.splits, smem, R);
      finish(&bn_moments_finish_kernel, R.part, IM, 1, R.splits, false, a.res0, a.res1);
      break;
    }
    case BnPass::ForwardOut: {
      BnParams R = P;
      const unsigned smem = bn_tile_smem(R, 1, 0);
      run(&bn_forward_out_kernel<T>, (long long)P.N * P.I * P.tiles, smem, R);
      break;
    }
    case BnPass::BackwardReduce: {
      BnParams R = P;
      R.splits = bn_splits(P, P.I), R.part = scratch + sc.part0, R.red_off = 0;
      run(&bn_reduce_primary_kernel<T>, (long long)P.I * R.splits, kThreads * 4, R);
      finish(&bn_sum_finish_kernel, R.part, P.I, 2, R.splits, true, a.res0, nullptr);
      BnParams Q = P;
      Q.splits = bn_splits(P, IM), Q.part = scratch + sc.part1;
      const unsigned smem = bn_tile_smem(Q, 3, kThreads * 4);
      run(&bn_reduce_cheap_kernel<T>, (long long)IM * Q.splits, smem, Q);
      finish(&bn_sum_finish_kernel, Q.part, IM, 8, Q.splits, true, a.res1, nullptr);
      break;
    }
    case BnPass::Backward: {
      P.dz1 = reinterpret_cast<float*>(scratch + sc.dz1);
      P.dz2 = reinterpret_cast<float*>(scratch + sc.dz2);
      BnParams R = P;
      R.splits = bn_splits(P, IM), R.part = scratch + sc.part1;
      const unsigned smem = bn_tile_smem(R, 1, kThreads * 4);
      run(&bn_dz2_kernel<T>, (long long)IM * R.splits, smem, R);
      finish(&bn_sum_finish_kernel, R.part, IM, KK, R.splits, false, a.res1, nullptr);
      BnParams D = P;
      run(&bn_dz1_kernel<T>, (long long)P.N * P.I * P.tiles, bn_tile_smem(D, 1, 0), D);
      gemm(&bn_gemm_kernel<float, T>, P.C, P.I, P.w1, 1, P.C, P.dz1, false, P.I, a.out, P.C);
      BnParams G = P;
      bn_grad_w1_plan(G);
      G.part = scratch + sc.part0;
      run(&bn_grad_w1_kernel<T>, (long long)G.gw_itiles * G.gw_ctiles * G.f_s, 2 * kBnGT * kBnGPitch * 4, G);
      finish(&bn_sum_finish_kernel, G.part, P.I * P.C, 1, G.f_s, false, a.res0, nullptr);
      break;
    }
  }
  return err;
}

}  // namespace cuda
}  // namespace ghostkernels
