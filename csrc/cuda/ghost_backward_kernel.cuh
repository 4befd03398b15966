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
__device__ __forceinline__ int d_index(const KernelParams& P, int i, int q) {
  return P.cl ? q * kChunk + i : i * P.L.own + q;
}
// G2(jl, ring-1 pixel): NHWC G2[q][jl] (pitch L.cheap), NCHW G2[jl][q] (pitch L.ring1).
__device__ __forceinline__ int g2_index(const KernelParams& P, int jl, int q) {
  return P.cl ? q * P.L.cheap + jl : jl * P.L.ring1 + q;
}

// Step 1b: Z <- x1 (zero outside the image) for the chunk's n_x1 channels; D <- act'(z1) on the own pixels.
__device__ __forceinline__ void x1_and_derivative(const KernelParams& P, unsigned char* smem, int n_x1) {
  const long long* pix = reinterpret_cast<const long long*>(smem + P.L.pix);
  const float* b1s = reinterpret_cast<const float*>(smem + P.L.bias1);
  float* Z = reinterpret_cast<float*>(smem + P.L.z);
  float* D = reinterpret_cast<float*>(smem + P.L.d);
  const int rw = P.g.rw, rect = P.g.rh * rw, halo = P.g.halo;
  const FastDiv rw_div(rw);
  auto element = [&](int i, int q) {
    const long long v = pix[q];
    float& zr = Z[z_index(P, i, q)];
    const float z = zr + b1s[i];
    zr = v >= 0 ? act_forward(P.act, z) : 0.f;
    if (v >= 0 && (v & 1)) {
      const int ry = rw_div.div(q), rx = q - ry * rw;
      D[d_index(P, i, (ry - halo) * P.g.tw + rx - halo)] = act_derivative(P.act, z);
    }
  };
  if (P.cl) {  // channel fastest (Z[q][i], D[q][i] in a row)
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
template <typename T, int KT>
__device__ __forceinline__ void cheap_grad(const KernelParams& P, unsigned char* smem, long long n, int c0,
                                           int n_cheap, int ty0, int tx0, int tha, int twa) {
  const float* Z = reinterpret_cast<const float*>(smem + P.L.z);
  const float* w2s = reinterpret_cast<const float*>(smem + P.L.w2);
  const float* b2s = reinterpret_cast<const float*>(smem + P.L.bias2);
  float* G2 = reinterpret_cast<float*>(smem + P.L.g2);
  const T* gout = static_cast<const T*>(P.grad_out);
  const int p = P.K / 2, KK = P.K * P.K;
  const int r1w = P.g.tw + 2 * p, rows1 = tha + 2 * p, cols1 = twa + 2 * p;
  const int segs = (cols1 + kVX - 1) / kVX;
  const int zstride = P.cl ? P.L.ldz : 1;
  const bool identity = P.act == Act::Identity;
  const FastDiv cheap_div(n_cheap), seg_div(segs), rows_div(rows1), m_div(P.M);
  const int total = n_cheap * rows1 * segs;
  for (int e = threadIdx.x; e < total; e += kThreads) {
    int jl, r1, sx;
    if (P.cl) {  // channel fastest: coalesced grad_out reads
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
      window_accumulate<KT, false>(acc, Z + (P.cl ? i : i * P.L.ldz), zstride, P.g.rw, r1, sx * kVX,
                                   w2s + jl * KK, P.K);
    }
    const int gy = ty0 - p + r1, c = P.I + c0 * P.M + jl;
#pragma unroll
    for (int o = 0; o < kVX; ++o) {
      const int c1 = sx * kVX + o, gx = tx0 - p + c1;
      if (c1 < cols1) {
        float g = 0.f;
        if (gy >= 0 && gy < P.H && gx >= 0 && gx < P.W) {
          g = Elem<T>::load(gout + elem_offset(P, n, P.OC, c, (long long)gy * P.W + gx));
          if (!identity) g *= act_derivative(P.act, acc[o]);
        }
        G2[g2_index(P, jl, r1 * r1w + c1)] = g;
      }
    }
  }
}

// Step 3: this item's share of gw2 (k*k taps) and gb2 for the chunk's kept cheap channels. Unit u = 8*jl + s sums
// over the own pixels q = s, s + 8, ...; the 8 units of a channel are adjacent lanes of one warp. With k fixed at
// compile time all taps are summed in one pass; for a run-time k the taps go one kernel row per pass (7 registers
// instead of 49, and far less code in the generic instantiation).
template <int KT>
__device__ __forceinline__ void cheap_weight_partials(const KernelParams& P, unsigned char* smem, int c0,
                                                      int n_cheap, int tha, int twa, long long grp, bool first) {
  constexpr int RM = KT > 0 ? KT : 1;       // tap rows per pass
  constexpr int CM = KT > 0 ? KT : kMaxK;   // taps per row (bound)
  constexpr int NA = RM * CM + 1;           // accumulators: the pass's taps, then the bias sum
  const float* Z = reinterpret_cast<const float*>(smem + P.L.z);
  const float* G2 = reinterpret_cast<const float*>(smem + P.L.g2);
  const int k = P.K, p = k / 2, KK = k * k;
  const int rw = P.g.rw, r1w = P.g.tw + 2 * p, own = tha * twa;
  const int zstride = P.cl ? P.L.ldz : 1;
  const int passes = KT > 0 ? 1 : k;
  const FastDiv twa_div(twa), m_div(P.M);
  const int units = n_cheap * 8, rounds = (units + kThreads - 1) / kThreads;
  for (int round = 0; round < rounds; ++round) {  // same trip counts in every lane: the shuffles need the full warp
    const int u = threadIdx.x + round * kThreads, jl = u >> 3, s = u & 7;
    const bool valid = u < units;
    const int i = P.M == 1 ? jl : m_div.div(jl);
    const float* plane = Z + (P.cl ? i : i * P.L.ldz);
    float* dst = P.partials + ((long long)grp * P.I * P.M + (long long)c0 * P.M + jl) * (KK + 1);
    for (int pass = 0; pass < passes; ++pass) {
      const int dy0 = pass * RM;
      float acc[NA];
#pragma unroll
      for (int t = 0; t < NA; ++t) acc[t] = 0.f;
      if (valid) {
        for (int qo = s; qo < own; qo += 8) {
          const int oy = twa_div.div(qo), ox = qo - oy * twa;
          const float g = G2[g2_index(P, jl, (oy + p) * r1w + ox + p)];
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

// Step 4: g1 on the own pixels -> grad_z1.
template <typename T, int KT>
__device__ __forceinline__ void primary_grad(const KernelParams& P, unsigned char* smem, long long n, int c0,
                                             int n_x1, int n_cheap, int ty0, int tx0, int tha, int twa) {
  const float* G2 = reinterpret_cast<const float*>(smem + P.L.g2);
  const float* D = reinterpret_cast<const float*>(smem + P.L.d);
  const float* w2s = reinterpret_cast<const float*>(smem + P.L.w2);
  const T* gout = static_cast<const T*>(P.grad_out);
  T* gz1 = static_cast<T*>(P.grad_z1);
  const int p = P.K / 2, KK = P.K * P.K, r1w = P.g.tw + 2 * p;
  const int segs = (twa + kVX - 1) / kVX;
  const int gstride = P.cl ? P.L.cheap : 1;
  const FastDiv x1_div(n_x1), seg_div(segs), rows_div(tha);
  const int total = n_x1 * tha * segs;
  for (int e = threadIdx.x; e < total; e += kThreads) {
    int i, oy, sx;
    if (P.cl) {
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
    const bool has_out = c0 + i < P.OC;
    float acc[kVX];
#pragma unroll
    for (int o = 0; o < kVX; ++o)
      acc[o] = has_out && sx * kVX + o < twa ? Elem<T>::load(gout + elem_offset(P, n, P.OC, c0 + i, lin0 + o)) : 0.f;
    // dw^T: own pixel (oy, ox) gathers g2 at ring-1 (oy + ey, ox + ex) with the flipped weights.
    for (int m = 0; m < P.M; ++m) {
      const int jl = i * P.M + m;
      if (jl >= n_cheap) break;
      window_accumulate<KT, true>(acc, G2 + (P.cl ? jl : jl * P.L.ring1), gstride, r1w, oy, sx * kVX,
                                  w2s + jl * KK, P.K);
    }
#pragma unroll
    for (int o = 0; o < kVX; ++o) {
      if (sx * kVX + o < twa) {
        const float g1 = acc[o] * D[d_index(P, i, oy * P.g.tw + sx * kVX + o)];
        gz1[elem_offset(P, n, P.I, c0 + i, lin0 + o)] = Elem<T>::from_float(g1);
      }
    }
  }
}

template <typename T, bool kTF32, int KT>
__global__ void __launch_bounds__(kThreads, 2) ghost_backward_kernel(const KernelParams P) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // unreachable: the binding rejects devices below compute capability 8.0
#else
  GK_DYNAMIC_SHARED_MEMORY(smem);
  const int chunk = int(blockIdx.x % unsigned(P.g.chunks));
  const long long grp = blockIdx.x / unsigned(P.g.chunks);
  const int c0 = chunk * kChunk;
  const int n_x1 = min(kChunk, P.I - c0);
  const int n_rows = n_x1 * P.M;  // cheap channels of the chunk = rows of `partials` this block owns
  const int n_cheap = int(min(max((long long)P.CK - (long long)c0 * P.M, 0LL), (long long)n_rows));
  const int ntiles = P.g.tiles_y * P.g.tiles_x;
  load_chunk_weights<T>(P, smem, c0);
  for (long long item = grp; item < P.items; item += P.groups) {
    const bool first = item == grp;
    const long long n = item / ntiles;
    const int tile = int(item - n * ntiles);
    const int ty0 = (tile / P.g.tiles_x) * P.g.th, tx0 = (tile % P.g.tiles_x) * P.g.tw;
    const int tha = min(P.g.th, P.H - ty0), twa = min(P.g.tw, P.W - tx0);
    build_pixel_table(P, reinterpret_cast<long long*>(smem + P.L.pix), ty0, tx0, tha, twa);
    __syncthreads();
    gemm_rect<T, kTF32>(P, smem, n, c0);
    x1_and_derivative(P, smem, n_x1);
    __syncthreads();
    if (n_cheap > 0) {
      cheap_grad<T, KT>(P, smem, n, c0, n_cheap, ty0, tx0, tha, twa);
      __syncthreads();
      cheap_weight_partials<KT>(P, smem, c0, n_cheap, tha, twa, grp, first);
    }
    if (first && n_cheap < n_rows) zero_dropped_partials(P, c0, n_cheap, n_rows, grp);
    primary_grad<T, KT>(P, smem, n, c0, n_x1, n_cheap, ty0, tx0, tha, twa);
    __syncthreads();  // Z, D, G2 and the pixel table are rewritten by the next item
  }
#endif
}

}  // namespace cuda
}  // namespace ghostkernels
