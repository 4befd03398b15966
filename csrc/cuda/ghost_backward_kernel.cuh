// Fused Ghost-module backward: everything except the two 1x1 GEMMs, recomputed from x in one pass.
//
// Math (z1 = W1 . x + b1, x1 = act(z1), z2[j] = b2[j] + dw(x1[j / M], w2[j]), out = cat(x1, act(z2))[:, :OC]):
//   g2[j]  = grad_out[I + j] * act'(z2[j])                    (0 for cheap channels sliced away)
//   gw2[j] = sum g2[j](y, x) * x1[j / M](y + dy - p, x + dx - p),   gb2[j] = sum g2[j]
//   gx1[i] = grad_out[i] (if i < OC) + sum_m dw^T(g2[i*M + m], w2[i*M + m])
//   g1[i]  = gx1[i] * act'(z1[i])                              -> written to grad_z1
// and the binding finishes with grad x = W1^T . g1, grad W1 = g1 . x^T (cuDNN through ATen) and gb1 = sum g1.
//
// One block = one chunk of 32 x1 channels and a fixed set of (image, tile) items (a persistent grid: chunks x
// groups blocks, group g taking items g, g + groups, ...). Per item:
//   1. z1 on the tile plus a halo of 2p (g2 is needed p pixels around the tile, and z2 there needs x1 p further),
//      on tensor cores into Z; Z <- x1 in place, D <- act'(z1) on the own pixels;
//   2. G2 <- g2 on the ring-1 rect (tile plus p), recomputing z2 from Z (skipped for act = identity);
//   3. per-thread sums of gw2/gb2 over the own pixels, reduced over 8 lanes with shuffles and added into the
//      group's row of `partials` (each row has exactly one writer thread, so no atomics and a deterministic sum);
//   4. g1 on the own pixels: transposed depthwise conv of G2 plus grad_out's primary part, times D.
// Saved for backward: nothing but x (and the weights). All accumulation is float32.
#pragma once

#include "ghost_cuda_gemm.cuh"
#include "ghost_cuda_window.cuh"

namespace ghostkernels {
namespace cuda {

// D(i, own pixel): NHWC D[q][i] (pitch kChunk), NCHW D[i][q] (pitch L.own).
template <bool kCL>
__device__ __forceinline__ int d_index(const KernelParams& P, int i, int q) {
  return kCL ? q * kChunk + i : i * P.L.own + q;
}
// G2(jl, ring-1 pixel): NHWC G2[q][jl] (pitch L.cheap), NCHW G2[jl][q] (pitch L.ring1).
template <bool kCL>
__device__ __forceinline__ int g2_index(const KernelParams& P, int jl, int q) {
  return kCL ? q * P.L.cheap + jl : jl * P.L.ring1 + q;
}

// Step 1b: Z <- x1 (zero outside the image) for the chunk's n_x1 channels; D <- act'(z1) on the own pixels.
template <Act A, Layout L>
__device__ __forceinline__ void x1_and_derivative(const KernelParams& P, unsigned char* smem, int n_x1) {
  constexpr bool kCL = L != Layout::NCHW;
  const long long* pix = reinterpret_cast<const long long*>(smem + P.L.pix);
  const float* b1s = reinterpret_cast<const float*>(smem + P.L.bias1);
  float* Z = reinterpret_cast<float*>(smem + P.L.z);
  float* D = reinterpret_cast<float*>(smem + P.L.d);
  const int rw = P.g.rw, rect = P.g.rh * rw, halo = P.g.halo;
  const FastDiv rw_div(rw);
  auto own_index = [&](int q) {
    const int ry = rw_div.div(q), rx = q - ry * rw;
    return (ry - halo) * P.g.tw + rx - halo;
  };
  if constexpr (L == Layout::NHWCVec) {  // 4 channels of one pixel per step (n_x1 % 4 == 0 here)
    const int groups = n_x1 / 4;
    const GroupSplit s = split_by_groups(groups);
    if (s.g >= groups) return;
    const float4 b = lds4(b1s + 4 * s.g);
    for (int q = s.r0; q < rect; q += s.step) {
      const long long v = pix[q];
      float4 z = lds4(Z + q * P.L.ldz + 4 * s.g);
      z.x += b.x;
      z.y += b.y;
      z.z += b.z;
      z.w += b.w;
      if (v >= 0 && (v & 1)) {
        const float4 d = {act_grad<A>(P, z.x), act_grad<A>(P, z.y), act_grad<A>(P, z.z), act_grad<A>(P, z.w)};
        sts4(D + own_index(q) * kChunk + 4 * s.g, d);
      }
      const bool in = v >= 0;
      const float4 x1 = {in ? act_fwd<A>(P, z.x) : 0.f, in ? act_fwd<A>(P, z.y) : 0.f,
                         in ? act_fwd<A>(P, z.z) : 0.f, in ? act_fwd<A>(P, z.w) : 0.f};
      sts4(Z + q * P.L.ldz + 4 * s.g, x1);
    }
    return;
  }
  auto element = [&](int i, int q) {
    const long long v = pix[q];
    float& zr = Z[z_index<kCL>(P, i, q)];
    const float z = zr + b1s[i];
    zr = v >= 0 ? act_fwd<A>(P, z) : 0.f;
    if (v >= 0 && (v & 1)) D[d_index<kCL>(P, i, own_index(q))] = act_grad<A>(P, z);
  };
  if constexpr (kCL) {  // channel fastest (Z[q][i], D[q][i] in a row)
    const FastDiv ch_div(n_x1);
    for (int e = threadIdx.x; e < n_x1 * rect; e += kThreads) {
      const int q = ch_div.div(e);
      element(e - q * n_x1, q);
    }
  } else {  // a warp per channel, lanes over pixels (Z[i][q], D[i][q] in a row)
    for (int i = threadIdx.x / 32; i < n_x1; i += kWarps)
      for (int q = threadIdx.x % 32; q < rect; q += 32) element(i, q);
  }
}

// Step 2: G2 on rows [0, tha + 2p) x cols [0, twa + 2p) of the ring-1 rect (origin: tile origin - p).
template <typename T, Act A, int KT, bool kCL>
__device__ __forceinline__ void cheap_grad(const KernelParams& P, unsigned char* smem, long long n, int c0,
                                           int n_cheap, int ty0, int tx0, int tha, int twa) {
  const float* Z = reinterpret_cast<const float*>(smem + P.L.z);
  const float* w2s = reinterpret_cast<const float*>(smem + P.L.w2);
  const float* b2s = reinterpret_cast<const float*>(smem + P.L.bias2);
  float* G2 = reinterpret_cast<float*>(smem + P.L.g2);
  const T* gout_n = static_cast<const T*>(P.grad_out) + n * P.OC * P.HW;
  const int p = P.K / 2;
  const int r1w = P.g.tw + 2 * p, rows1 = tha + 2 * p, cols1 = twa + 2 * p;
  const int segs = (cols1 + kVX - 1) / kVX;
  const int zstride = kCL ? P.L.ldz : 1;
  const bool identity = (A == kActRuntime ? P.act : A) == Act::Identity;  // g2 = grad_out: no z2 needed
  const FastDiv cheap_div(n_cheap), seg_div(segs), rows_div(rows1), m_div(P.M);
  const int total = n_cheap * rows1 * segs;
  for (int e = threadIdx.x; e < total; e += kThreads) {
    int jl, r1, sx;
    if constexpr (kCL) {  // channel fastest: coalesced grad_out reads
      const int r = cheap_div.div(e);
      jl = e - r * n_cheap;
      r1 = seg_div.div(r);
      sx = r - r1 * segs;
    } else {  // segment fastest: adjacent pixels
      const int r = seg_div.div(e);
      sx = e - r * segs;
      jl = rows_div.div(r);
      r1 = r - jl * rows1;
    }
    float acc[kVX];
#pragma unroll
    for (int o = 0; o < kVX; ++o) acc[o] = b2s[jl];
    if (!identity) {  // z2 at ring-1 pixel (r1, c1) reads x1 at ring-2 rows r1 .. r1 + k - 1
      const int i = P.M == 1 ? jl : m_div.div(jl);
      window_accumulate<KT, false>(acc, Z + (kCL ? i : i * P.L.ldz), zstride, P.g.rw, r1, sx * kVX, w2s + jl,
                                   P.L.cheap, P.K);
    }
    const int gy = ty0 - p + r1, c = P.I + c0 * P.M + jl;
    const int px_step = kCL ? P.OC : 1;
    // One offset for the kVX pixels (it may lie outside the image; only in-image elements are loaded).
    const long long lin0 = (long long)gy * P.W + tx0 - p + sx * kVX;
    const long long off0 = kCL ? lin0 * P.OC + c : (long long)c * P.HW + lin0;
#pragma unroll
    for (int o = 0; o < kVX; ++o) {
      const int c1 = sx * kVX + o, gx = tx0 - p + c1;
      if (c1 < cols1) {
        float g = 0.f;
        if (gy >= 0 && gy < P.H && gx >= 0 && gx < P.W) {
          g = Elem<T>::load(gout_n + off0 + o * px_step);
          if (!identity) g *= act_grad<A>(P, acc[o]);
        }
        G2[g2_index<kCL>(P, jl, r1 * r1w + c1)] = g;
      }
    }
  }
}

// Pixels per thread of the NHWCVec backward passes: 2, not kVX as in the forward, because the backward holds more
// per pixel (z2, grad_out, g2; the g1 pass grad_out, the flipped window and D) within the 128 registers of the
// launch bounds: 4 pixels x 8 channels spilled 8-56 bytes there. For the same reason their windows walk the taps
// outermost (window_vec's kLowReg).
constexpr int kPXGrad = 1;

// Step 2, NHWCVec (M = 1): W channels [jl0, jl0 + W) on kPXGrad ring-1 pixels of row r1 from column sx * kPXGrad.
template <typename T, Act A, int KT, int W>
__device__ __forceinline__ void cheap_grad_group_vec(const KernelParams& P, const float* Z, const float* w2s,
                                                     const float* b2s, float* G2, const T* gout_n, int c0, int jl0,
                                                     int r1, int sx, int ty0, int tx0, int cols1) {
  const int p = P.K / 2, r1w = P.g.tw + 2 * p;
  float acc[kPXGrad][W];
  const bool identity = (A == kActRuntime ? P.act : A) == Act::Identity;
  if (!identity) cheap_preact_vec<KT, W, kPXGrad, true>(acc, P, Z, w2s, b2s, jl0, r1, sx * kPXGrad);
  const int gy = ty0 - p + r1, gx0 = tx0 - p + sx * kPXGrad;
  const long long off0 = ((long long)gy * P.W + gx0) * P.OC + P.I + c0 + jl0;  // may lie outside: loads are guarded
  const bool row_in = gy >= 0 && gy < P.H;
#pragma unroll
  for (int o = 0; o < kPXGrad; ++o) {
    const int c1 = sx * kPXGrad + o;
    if (c1 < cols1) {
      float g[W];
      if (row_in && gx0 + o >= 0 && gx0 + o < P.W) {
        VecIO<T, W>::load(g, gout_n + off0 + o * P.OC);
        if (!identity) {
#pragma unroll
          for (int ch = 0; ch < W; ++ch) g[ch] *= act_grad<A>(P, acc[o][ch]);
        }
      } else {
#pragma unroll
        for (int ch = 0; ch < W; ++ch) g[ch] = 0.f;
      }
      float* dst = G2 + (r1 * r1w + c1) * P.L.cheap + jl0;
#pragma unroll
      for (int ch = 0; ch < W; ch += 4) sts4(dst + ch, make_float4(g[ch], g[ch + 1], g[ch + 2], g[ch + 3]));
    }
  }
}

template <typename T, Act A, int KT>
__device__ __forceinline__ void cheap_grad_vec(const KernelParams& P, unsigned char* smem, long long n, int c0,
                                               int n_x1, int n_cheap, int ty0, int tx0, int tha, int twa) {
  constexpr int V = kVecBytes / int(sizeof(T));
  const float* Z = reinterpret_cast<const float*>(smem + P.L.z);
  const float* w2s = reinterpret_cast<const float*>(smem + P.L.w2);
  const float* b2s = reinterpret_cast<const float*>(smem + P.L.bias2);
  float* G2 = reinterpret_cast<float*>(smem + P.L.g2);
  const T* gout_n = static_cast<const T*>(P.grad_out) + n * P.OC * P.HW;
  const int p = P.K / 2, r1w = P.g.tw + 2 * p, rows1 = tha + 2 * p, cols1 = twa + 2 * p;
  const int segs = (cols1 + kPXGrad - 1) / kPXGrad, units = rows1 * segs;
  const FastDiv seg_div(segs);
  // Channel groups as in the forward's cheap_epilogue_vec: aligned to output channels divisible by V.
  const int head = (V - (P.I + c0) % V) % V, full = (n_cheap - head) / V, tail = (n_cheap - head) % V;
  const GroupSplit s = split_by_groups(full);
  if (s.g < full) {
    #pragma unroll 1  // one group per iteration: no register cost, and the SASS count is per group
    for (int r = s.r0; r < units; r += s.step) {
      const int r1 = seg_div.div(r);
      cheap_grad_group_vec<T, A, KT, V>(P, Z, w2s, b2s, G2, gout_n, c0, head + s.g * V, r1, r - r1 * segs, ty0,
                                        tx0, cols1);
    }
  }
  if constexpr (V == 8) {
    const int edges = (head != 0) + (tail != 0);
    #pragma unroll 1  // one group per iteration: no register cost, and the SASS count is per group
    for (int e = threadIdx.x; e < edges * units; e += kThreads) {
      const int which = edges == 2 ? (e & 1) : 0, r = edges == 2 ? (e >> 1) : e;
      const int r1 = seg_div.div(r);
      cheap_grad_group_vec<T, A, KT, 4>(P, Z, w2s, b2s, G2, gout_n, c0, head != 0 && which == 0 ? 0 : head + full * V,
                                        r1, r - r1 * segs, ty0, tx0, cols1);
    }
  }
  // primary_grad_vec reads G2 a vector of channels at a time, up to n_x1: the sliced-away channels contribute 0.
  const int dropped = (n_x1 - n_cheap) / 4;
  for (int e = threadIdx.x; e < dropped * rows1 * cols1; e += kThreads) {
    const int q = e / dropped, gq = e - q * dropped, r1 = q / cols1, c1 = q - r1 * cols1;
    sts4(G2 + (r1 * r1w + c1) * P.L.cheap + n_cheap + 4 * gq, make_float4(0.f, 0.f, 0.f, 0.f));
  }
}

// Step 3: this item's share of gw2 (k*k taps) and gb2 for the chunk's kept cheap channels. Unit u = 8*jl + s sums
// over the own pixels q = s, s + 8, ...; the 8 units of a channel are adjacent lanes of one warp. With k fixed at
// compile time all taps are summed in one pass; for a run-time k the taps go one kernel row per pass (7 registers
// instead of 49, and far less code in the generic instantiation).
template <int KT, bool kCL>
__device__ __forceinline__ void cheap_weight_partials(const KernelParams& P, unsigned char* smem, int c0,
                                                      int n_cheap, int tha, int twa, long long grp, bool first) {
  constexpr int RM = KT > 0 ? KT : 1;       // tap rows per pass
  constexpr int CM = KT > 0 ? KT : kMaxK;   // taps per row (bound)
  constexpr int NA = RM * CM + 1;           // accumulators: the pass's taps, then the bias sum
  const float* Z = reinterpret_cast<const float*>(smem + P.L.z);
  const float* G2 = reinterpret_cast<const float*>(smem + P.L.g2);
  const int k = P.K, p = k / 2, KK = k * k;
  const int rw = P.g.rw, r1w = P.g.tw + 2 * p, own = tha * twa;
  const int zstride = kCL ? P.L.ldz : 1;
  const int passes = KT > 0 ? 1 : k;
  const FastDiv twa_div(twa), m_div(P.M);
  const int units = n_cheap * 8, rounds = (units + kThreads - 1) / kThreads;
  for (int round = 0; round < rounds; ++round) {  // same trip counts in every lane: the shuffles need the full warp
    const int u = threadIdx.x + round * kThreads, jl = u >> 3, s = u & 7;
    const bool valid = u < units;
    const int i = P.M == 1 ? jl : m_div.div(jl);
    const float* plane = Z + (kCL ? i : i * P.L.ldz);
    float* dst = P.partials + ((long long)grp * P.I * P.M + (long long)c0 * P.M + jl) * (KK + 1);
    for (int pass = 0; pass < passes; ++pass) {
      const int dy0 = pass * RM;
      float acc[NA];
#pragma unroll
      for (int t = 0; t < NA; ++t) acc[t] = 0.f;
      if (valid) {
        for (int qo = s; qo < own; qo += 8) {
          const int oy = twa_div.div(qo), ox = qo - oy * twa;
          const float g = G2[g2_index<kCL>(P, jl, (oy + p) * r1w + ox + p)];
          acc[NA - 1] += g;
          // Own pixel (oy, ox) is ring-2 pixel (oy+2p, ox+2p); tap (dy, dx) reads x1 at ring-2 (oy+p+dy, ox+p+dx).
#pragma unroll
          for (int r = 0; r < RM; ++r) {
            const int dy = dy0 + r;
            if (dy < k) {
              const float* row = plane + ((oy + p + dy) * rw + ox + p) * zstride;
#pragma unroll
              for (int dx = 0; dx < CM; ++dx)
                if (dx < k) acc[r * CM + dx] = fmaf(g, row[dx * zstride], acc[r * CM + dx]);
            }
          }
        }
      }
#pragma unroll
      for (int t = 0; t < NA; ++t) {
        float v = acc[t];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        v += __shfl_xor_sync(0xffffffffu, v, 4);
        acc[t] = v;
      }
      if (valid && s == 0) {
#pragma unroll
        for (int r = 0; r < RM; ++r)
#pragma unroll
          for (int dx = 0; dx < CM; ++dx) {
            const int t = (dy0 + r) * k + dx;
            if (dy0 + r < k && dx < k) dst[t] = (first ? 0.f : dst[t]) + acc[r * CM + dx];
          }
        if (pass == 0) dst[KK] = (first ? 0.f : dst[KK]) + acc[NA - 1];
      }
    }
  }
}

// Rows of `partials` for the chunk's cheap channels that the slice drops: zero, written once per group.
__device__ __forceinline__ void zero_dropped_partials(const KernelParams& P, int c0, int n_cheap, int n_rows,
                                                      long long grp) {
  const int width = P.K * P.K + 1;
  float* dst = P.partials + ((long long)grp * P.I * P.M + (long long)c0 * P.M + n_cheap) * width;
  for (int e = threadIdx.x; e < (n_rows - n_cheap) * width; e += kThreads) dst[e] = 0.f;
}

// Step 4: g1 on the own pixels -> grad_z1 (NCHW and NHWC).
template <typename T, int KT, bool kCL>
__device__ __forceinline__ void primary_grad(const KernelParams& P, unsigned char* smem, long long n, int c0,
                                             int n_x1, int n_cheap, int ty0, int tx0, int tha, int twa) {
  const float* G2 = reinterpret_cast<const float*>(smem + P.L.g2);
  const float* D = reinterpret_cast<const float*>(smem + P.L.d);
  const float* w2s = reinterpret_cast<const float*>(smem + P.L.w2);
  const T* gout_n = static_cast<const T*>(P.grad_out) + n * P.OC * P.HW;
  T* gz1_n = static_cast<T*>(P.grad_z1) + n * P.I * P.HW;
  const int p = P.K / 2, r1w = P.g.tw + 2 * p;
  const int segs = (twa + kVX - 1) / kVX;
  const int gstride = kCL ? P.L.cheap : 1;
  const FastDiv x1_div(n_x1), seg_div(segs), rows_div(tha);
  const int total = n_x1 * tha * segs;
  for (int e = threadIdx.x; e < total; e += kThreads) {
    int i, oy, sx;
    if constexpr (kCL) {
      const int r = x1_div.div(e);
      i = e - r * n_x1;
      oy = seg_div.div(r);
      sx = r - oy * segs;
    } else {
      const int r = seg_div.div(e);
      sx = e - r * segs;
      i = rows_div.div(r);
      oy = r - i * tha;
    }
    const long long lin0 = (long long)(ty0 + oy) * P.W + tx0 + sx * kVX;
    // One offset per tensor for the kVX pixels.
    const long long go0 = kCL ? lin0 * P.OC + c0 + i : (long long)(c0 + i) * P.HW + lin0;
    const long long gz0 = kCL ? lin0 * P.I + c0 + i : (long long)(c0 + i) * P.HW + lin0;
    const int go_step = kCL ? P.OC : 1, gz_step = kCL ? P.I : 1;
    const bool has_out = c0 + i < P.OC;
    float acc[kVX];
#pragma unroll
    for (int o = 0; o < kVX; ++o)
      acc[o] = has_out && sx * kVX + o < twa ? Elem<T>::load(gout_n + go0 + o * go_step) : 0.f;
    // dw^T: own pixel (oy, ox) gathers g2 at ring-1 (oy + ey, ox + ex) with the flipped weights.
    for (int m = 0; m < P.M; ++m) {
      const int jl = i * P.M + m;
      if (jl >= n_cheap) break;
      window_accumulate<KT, true>(acc, G2 + (kCL ? jl : jl * P.L.ring1), gstride, r1w, oy, sx * kVX, w2s + jl,
                                  P.L.cheap, P.K);
    }
#pragma unroll
    for (int o = 0; o < kVX; ++o) {
      if (sx * kVX + o < twa) {
        const float g1 = acc[o] * D[d_index<kCL>(P, i, oy * P.g.tw + sx * kVX + o)];
        gz1_n[gz0 + o * gz_step] = Elem<T>::from_float(g1);
      }
    }
  }
}

// Step 4, NHWCVec (M = 1): channels [i0, i0 + W) on kPXGrad own pixels of row oy from column sx * kPXGrad.
template <typename T, int KT, int W>
__device__ __forceinline__ void primary_grad_group_vec(const KernelParams& P, const float* G2, const float* D,
                                                       const float* w2s, const T* gout_n, T* gz1_n, int c0, int i0,
                                                       bool with_cheap, int oy, int sx, int ty0, int tx0, int twa) {
  const int p = P.K / 2, r1w = P.g.tw + 2 * p;
  const long long lin0 = (long long)(ty0 + oy) * P.W + tx0 + sx * kPXGrad;
  const long long go0 = lin0 * P.OC + c0 + i0, gz0 = lin0 * P.I + c0 + i0;
  const bool has_out = c0 + i0 < P.OC;  // OC is a multiple of the vector: a group is wholly kept or wholly dropped
  float acc[kPXGrad][W];
#pragma unroll
  for (int o = 0; o < kPXGrad; ++o) {
    if (has_out && sx * kPXGrad + o < twa) {
      VecIO<T, W>::load(acc[o], gout_n + go0 + o * P.OC);
    } else {
#pragma unroll
      for (int ch = 0; ch < W; ++ch) acc[o][ch] = 0.f;
    }
  }
  if (with_cheap)
    window_vec<KT, true, kPXGrad, W, true>(acc, G2 + i0, P.L.cheap, r1w, oy, sx * kPXGrad, w2s + i0, P.L.cheap, P.K);
#pragma unroll
  for (int o = 0; o < kPXGrad; ++o) {
    if (sx * kPXGrad + o < twa) {
      float d[W];
      lds_vec<W>(d, D + (oy * P.g.tw + sx * kPXGrad + o) * kChunk + i0);
#pragma unroll
      for (int ch = 0; ch < W; ++ch) acc[o][ch] *= d[ch];
      T* dst = gz1_n + gz0 + o * P.I;
      if constexpr (W == 4) {
        VecIO<T, 4>::store(dst, acc[o]);
      } else if (P.gz1_vec) {
        VecIO<T, W>::store(dst, acc[o]);
      } else {  // init % 8 == 4: a pixel's channels of grad_z1 start 8-byte aligned only (block-uniform branch)
        float lo[4], hi[4];
#pragma unroll
        for (int ch = 0; ch < 4; ++ch) {
          lo[ch] = acc[o][ch];
          hi[ch] = acc[o][ch + 4];
        }
        VecIO<T, 4>::store(dst, lo);
        VecIO<T, 4>::store(dst + 4, hi);
      }
    }
  }
}

template <typename T, int KT>
__device__ __forceinline__ void primary_grad_vec(const KernelParams& P, unsigned char* smem, long long n, int c0,
                                                 int n_x1, int n_cheap, int ty0, int tx0, int tha, int twa) {
  constexpr int V = kVecBytes / int(sizeof(T));
  const float* G2 = reinterpret_cast<const float*>(smem + P.L.g2);
  const float* D = reinterpret_cast<const float*>(smem + P.L.d);
  const float* w2s = reinterpret_cast<const float*>(smem + P.L.w2);
  const T* gout_n = static_cast<const T*>(P.grad_out) + n * P.OC * P.HW;
  T* gz1_n = static_cast<T*>(P.grad_z1) + n * P.I * P.HW;
  const int segs = (twa + kPXGrad - 1) / kPXGrad, units = tha * segs;
  const FastDiv seg_div(segs);
  const bool with_cheap = n_cheap > 0;  // G2 holds zeros for the chunk's channels past n_cheap (cheap_grad_vec)
  const int full = n_x1 / V;            // c0 is a multiple of 32: the groups start aligned
  const GroupSplit s = split_by_groups(full);
  if (s.g < full) {
    #pragma unroll 1  // one group per iteration: no register cost, and the SASS count is per group
    for (int r = s.r0; r < units; r += s.step) {
      const int oy = seg_div.div(r);
      primary_grad_group_vec<T, KT, V>(P, G2, D, w2s, gout_n, gz1_n, c0, s.g * V, with_cheap, oy, r - oy * segs,
                                       ty0, tx0, twa);
    }
  }
  if constexpr (V == 8) {
    if (n_x1 % V != 0) {
      #pragma unroll 1  // one group per iteration: no register cost, and the SASS count is per group
      for (int r = threadIdx.x; r < units; r += kThreads) {
        const int oy = seg_div.div(r);
        primary_grad_group_vec<T, KT, 4>(P, G2, D, w2s, gout_n, gz1_n, c0, full * V, with_cheap, oy, r - oy * segs,
                                         ty0, tx0, twa);
      }
    }
  }
}

// The activation is an int template argument (kActRuntime for the fallback): nvcc's host stubs spell an enum
// argument outside the enumerators in a form the host compiler rejects.
template <typename T, bool kTF32, int KT, int kAct, Layout L>
__global__ void __launch_bounds__(kThreads, 2) ghost_backward_kernel(const KernelParams P) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // unreachable: the binding rejects devices below compute capability 8.0
#else
  constexpr bool kCL = L != Layout::NCHW;
  constexpr Act A = static_cast<Act>(kAct);
  GK_DYNAMIC_SHARED_MEMORY(smem);
  // The block's chunk and its channel counts are recomputed per item from blockIdx and the parameters (a few integer
  // instructions) instead of being held across the item loop: the GEMM needs every register there, and values
  // kept live through it were spilled to local memory.
  const auto chunk_of_block = [&]() { return int(blockIdx.x % unsigned(P.g.chunks)); };
  const auto group_of_block = [&]() { return (long long)(blockIdx.x / unsigned(P.g.chunks)); };
  load_chunk_weights<T>(P, smem, chunk_of_block() * kChunk);
  for (long long item = group_of_block(); item < P.items; item += P.groups) {
    const long long grp = group_of_block();
    const int c0 = chunk_of_block() * kChunk;
    const int n_x1 = min(kChunk, P.I - c0);
    const int n_rows = n_x1 * P.M;  // cheap channels of the chunk = rows of `partials` this block owns
    const int n_cheap = int(min(max((long long)P.CK - (long long)c0 * P.M, 0LL), (long long)n_rows));
    const int ntiles = P.g.tiles_y * P.g.tiles_x;
    const bool first = item == grp;
    const long long n = item / ntiles;
    const int tile = int(item - n * ntiles);
    const int ty0 = (tile / P.g.tiles_x) * P.g.th, tx0 = (tile % P.g.tiles_x) * P.g.tw;
    const int tha = min(P.g.th, P.H - ty0), twa = min(P.g.tw, P.W - tx0);
    build_pixel_table(P, reinterpret_cast<long long*>(smem + P.L.pix), ty0, tx0, tha, twa);
    __syncthreads();
    const GemmUnit gu{reinterpret_cast<const long long*>(smem + P.L.pix), n, c0, true};
    k_prologue<T, kCL, false>(P, smem, gu);
    gemm_main<T, kTF32, kCL, false>(P, smem, gu);
    __syncthreads();
    x1_and_derivative<A, L>(P, smem, n_x1);
    __syncthreads();
    if (n_cheap > 0) {
      if constexpr (L == Layout::NHWCVec)
        cheap_grad_vec<T, A, KT>(P, smem, n, c0, n_x1, n_cheap, ty0, tx0, tha, twa);
      else
        cheap_grad<T, A, KT, kCL>(P, smem, n, c0, n_cheap, ty0, tx0, tha, twa);
      __syncthreads();
      cheap_weight_partials<KT, kCL>(P, smem, c0, n_cheap, tha, twa, grp, first);
    }
    if (first && n_cheap < n_rows) zero_dropped_partials(P, c0, n_cheap, n_rows, grp);
    if constexpr (L == Layout::NHWCVec)
      primary_grad_vec<T, KT>(P, smem, n, c0, n_x1, n_cheap, ty0, tx0, tha, twa);
    else
      primary_grad<T, KT, kCL>(P, smem, n, c0, n_x1, n_cheap, ty0, tx0, tha, twa);
    __syncthreads();  // Z, D, G2 and the pixel table are rewritten by the next item
  }
#endif
}

}  // namespace cuda
}  // namespace ghostkernels
