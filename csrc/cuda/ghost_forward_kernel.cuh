// Fused Ghost-module forward in one pass:
//   out[:, c]     = x1 = act(W1 . x + b1)                       for the kept primary channels,
//   out[:, I + j] = act(b2[j] + dw_kxk(x1[j / M], w2[j]))        for the kept cheap channels,
// with x1 = 0 outside the image (zero padding of the depthwise conv is applied after the activation).
// Gated (kGate, GhostNetV2's ghost_module_gated): both halves are multiplied, in float32 before the store rounds
// them, by the DFC map element nearest upsampling puts at each output pixel, gate[n, c, ih(y), iw(x)]
// (csrc/nearest_index.h). x1 in Z stays ungated: the cheap half is computed from it.
//
// Work unit = (image, tile of th x tw pixels, chunk of L.rows x1 channels: 32, or 64 / 128 for small rects on tensor
// cores). The grid is persistent: block b runs a contiguous run of units (KernelParams::units_per_block), chunk
// fastest, so a block usually runs all chunks of a tile back to back. Per unit it
//   1. computes z1 for the tile plus a halo of p = k/2 pixels on tensor cores (ghost_cuda_gemm.cuh) into Z,
//   2. turns Z into x1 in place (bias, activation, zero outside the image) on the whole rect -- no global access;
//   3. after one barrier, stores the tile's own pixels of x1 as the primary half of the output, and computes the
//      chunk's rows*M cheap channels from Z (ghost_cuda_window.cuh) and stores them.
// Latency: with L.overlap the next unit's first S - 1 slices (W1, and x unless it is resident) are issued as
// cp.async right after this unit's GEMM, so they land while steps 2-3 run; for C <= kc (one slice) that is the next
// tile's whole x, so no unit but a block's first waits for its x. The next tile's pixel table is built into the
// second table during this unit.
// Traffic: x is read once per chunk, or once per tile with L.xres (x resident in shared memory across the chunks of
// a tile; the plan takes it where it fits, ghost_cuda_plan.cu); W1 once per unit; the output is written once.
// Halo pixels cost recomputed GEMM columns, which the tensor cores have to spare, and the cheap pass 2 (a
// shared-memory round trip); they are never part of a store loop.
//
// Template parameters: the element type T, TF32 for float (kTF32), k = 3 fixed (KT = 3) or at run time (KT = 0),
// the activation A (compile time, so no per-element switch; kActRuntime only for the NHWC fallback) and the
// layout L (ghost_cuda_layout.h), and kGate (the gated variant, compiled only for the combinations that
// ghost_cuda_select.cuh lists; with kGate false the gate's code does not exist). The NHWCVec epilogues give each
// thread one 16-byte vector of channels (8 for
// 16-bit types, 4 for float) of one pixel (primary stores) or of kVX adjacent pixels (cheap outputs) and compute
// the element's address once per pixel; channel groups are aligned to absolute channel multiples of the vector, so
// a block's channel range may begin or end with a 4-channel group, which a second loop stores with 8-byte accesses.
#pragma once

#include "../nearest_index.h"
#include "ghost_cuda_gemm.cuh"
#include "ghost_cuda_window.cuh"

namespace ghostkernels {
namespace cuda {

// The gate map of one image (KernelParams::gate, [N, OC, Hg, Wg] in the output's layout): the element that nearest
// upsampling puts at output pixel (y, x) of channel c. Only the image index is held (the base pointer, the sizes
// and the scales are kernel parameters, in the constant bank): the cheap epilogue of the k = 3 kernel sits at the
// register cap, and a 64-bit per-image base held across its loop spilled. Map pixels are indexed in 32 bits (the
// binding checks N * Hg * Wg < 2^31), elements in 64. row() / col() are a few instructions each (two uniform
// compares, a multiply, a floor and a min).
template <typename T, bool kCL>
struct GateMap {
  int n;
  __device__ __forceinline__ GateMap(const KernelParams&, int image) : n(image) {}
  __device__ __forceinline__ static int row(const KernelParams& P, int y) {
    return nearest_source_index_scaled<int>(y, P.Hg, P.H, P.gate_sy);
  }
  __device__ __forceinline__ static int col(const KernelParams& P, int x) {
    return nearest_source_index_scaled<int>(x, P.Wg, P.W, P.gate_sx);
  }
  // Map element (c, gy, gx); NHWC: the first of the channels from c at that map pixel.
  __device__ __forceinline__ const T* at(const KernelParams& P, int c, int gy, int gx) const {
    const T* map = static_cast<const T*>(P.gate);
    if constexpr (kCL)
      return map + (long long)((n * P.Hg + gy) * P.Wg + gx) * P.OC + c;
    else
      return map + ((long long)n * P.OC + c) * (P.Hg * P.Wg) + gy * P.Wg + gx;
  }
  __device__ __forceinline__ float load(const KernelParams& P, int c, int gy, int gx) const {
    return Elem<T>::load(at(P, c, gy, gx));
  }
};

// Multiplies W values of consecutive channels from c at map pixel (gy, gx) into v (NHWCVec; one W-wide access).
template <typename T, int W>
__device__ __forceinline__ void gate_vec(const KernelParams& P, const GateMap<T, true>& gm, float (&v)[W], int c,
                                         int gy, int gx) {
  float g[W];
  VecIO<T, W>::load(g, gm.at(P, c, gy, gx));
#pragma unroll
  for (int ch = 0; ch < W; ++ch) v[ch] *= g[ch];
}

// Step 2: Z <- x1 = act(z1 + b1) on every rect pixel (0 outside the image) for the unit's n_x1 channels.
template <Act A, Layout L>
__device__ __forceinline__ void x1_in_place(const KernelParams& P, unsigned char* smem, const long long* pix,
                                            int n_x1) {
  const float* b1s = reinterpret_cast<const float*>(smem + P.L.bias1);
  float* Z = reinterpret_cast<float*>(smem + P.L.z);
  const int rect = P.g.rh * P.g.rw;
  if constexpr (L == Layout::NHWCVec) {  // 4 channels of one pixel per step (n_x1 % 4 == 0 here)
    const GroupSplit s = split_by_groups(n_x1 / 4);
    if (s.g >= n_x1 / 4) return;
    const float4 b = lds4(b1s + 4 * s.g);
    for (int q = s.r0; q < rect; q += s.step) {
      float4 z = lds4(Z + q * P.L.ldz + 4 * s.g);
      const bool in = pix[q] >= 0;
      z.x = in ? act_fwd<A>(P, z.x + b.x) : 0.f;
      z.y = in ? act_fwd<A>(P, z.y + b.y) : 0.f;
      z.z = in ? act_fwd<A>(P, z.z + b.z) : 0.f;
      z.w = in ? act_fwd<A>(P, z.w + b.w) : 0.f;
      sts4(Z + q * P.L.ldz + 4 * s.g, z);
    }
  } else if constexpr (L == Layout::NHWC) {  // channel fastest (Z[q][i] in a row)
    const FastDiv ch_div(n_x1);
    for (int e = threadIdx.x; e < n_x1 * rect; e += kThreads) {
      const int q = ch_div.div(e), i = e - q * n_x1;
      float& z = Z[q * P.L.ldz + i];
      z = pix[q] >= 0 ? act_fwd<A>(P, z + b1s[i]) : 0.f;
    }
  } else {  // a warp per channel, lanes over pixels (Z[i][q] in a row)
    for (int i = threadIdx.x / 32; i < n_x1; i += kWarps)
      for (int q = threadIdx.x % 32; q < rect; q += 32) {
        float& z = Z[i * P.L.ldz + q];
        z = pix[q] >= 0 ? act_fwd<A>(P, z + b1s[i]) : 0.f;
      }
  }
}

// The own pixels o0, o0 + step, ... of a tile with twa columns, walked without a division per step: (oy, ox)
// advance by (step / twa, step % twa) with one carry. rect_q / lin give the pixel's rect index and image index.
struct OwnWalker {
  int oy, ox, dy, dx, twa;
  __device__ __forceinline__ OwnWalker(const FastDiv& twa_div, int o0, int step) : twa(twa_div.d) {
    oy = twa_div.div(o0);
    ox = o0 - oy * twa;
    dy = twa_div.div(step);
    dx = step - dy * twa;
  }
  __device__ __forceinline__ void next() {
    ox += dx;
    oy += dy;
    if (ox >= twa) {
      ox -= twa;
      ++oy;
    }
  }
  __device__ __forceinline__ int rect_q(const KernelParams& P) const {
    return (oy + P.g.halo) * P.g.rw + ox + P.g.halo;
  }
  __device__ __forceinline__ long long lin(const KernelParams& P, int ty0, int tx0) const {
    return (long long)(ty0 + oy) * P.W + tx0 + ox;
  }
};

// W channels [c, c + W) of x1 (Z channels [i, i + W)) at the own pixels of a walk -> out (NHWCVec).
template <typename T, int W, bool kGate>
__device__ __forceinline__ void store_primary_vec(const KernelParams& P, const float* Z, T* out_n,
                                                  const GateMap<T, true>& gm, OwnWalker w, int tha, int ty0, int tx0,
                                                  int i, int c) {
  #pragma unroll 1  // one group per iteration: no register cost, and the SASS count is per group
  for (; w.oy < tha; w.next()) {
    float v[W];
    lds_vec<W>(v, Z + w.rect_q(P) * P.L.ldz + i);
    if constexpr (kGate) gate_vec<T, W>(P, gm, v, c, gm.row(P, ty0 + w.oy), gm.col(P, tx0 + w.ox));
    VecIO<T, W>::store(out_n + w.lin(P, ty0, tx0) * P.OC + c, v);
  }
}

// Step 3a: the primary half of the output, the tile's own pixels only.
template <typename T, Layout L, bool kGate>
__device__ __forceinline__ void primary_stores(const KernelParams& P, unsigned char* smem, long long n, int c0,
                                               int n_primary, int ty0, int tx0, int tha, int twa) {
  const float* Z = reinterpret_cast<const float*>(smem + P.L.z);
  T* out_n = static_cast<T*>(P.out) + n * P.OC * P.HW;  // the image's first element: 64-bit once per block
  const GateMap<T, L != Layout::NCHW> gm(P, kGate ? int(n) : 0);  // unused (folded away) without kGate
  const FastDiv twa_div(twa);
  if constexpr (L == Layout::NHWCVec) {
    constexpr int V = kVecBytes / int(sizeof(T));
    const int full = n_primary / V;  // c0 is a multiple of 32, so every group of V starts aligned
    const GroupSplit s = split_by_groups(full);
    if (s.g < full)
      store_primary_vec<T, V, kGate>(P, Z, out_n, gm, OwnWalker(twa_div, s.r0, s.step), tha, ty0, tx0, s.g * V,
                                     c0 + s.g * V);
    if constexpr (V == 8) {  // 16-bit types: n_primary % 8 == 4 leaves one 4-channel group (8-byte stores)
      if (n_primary % V != 0)
        store_primary_vec<T, 4, kGate>(P, Z, out_n, gm, OwnWalker(twa_div, threadIdx.x, kThreads), tha, ty0, tx0,
                                       full * V, c0 + full * V);
    }
  } else if constexpr (L == Layout::NHWC) {  // channel fastest: a warp stores adjacent channels of adjacent pixels
    const FastDiv ch_div(n_primary);
    for (int e = threadIdx.x; e < n_primary * tha * twa; e += kThreads) {
      const int o = ch_div.div(e), i = e - o * n_primary;
      const OwnWalker w(twa_div, o, 0);
      float v = Z[w.rect_q(P) * P.L.ldz + i];
      if constexpr (kGate) v *= gm.load(P, c0 + i, gm.row(P, ty0 + w.oy), gm.col(P, tx0 + w.ox));
      out_n[w.lin(P, ty0, tx0) * P.OC + c0 + i] = Elem<T>::from_float(v);
    }
  } else {  // a warp per channel, lanes over pixels: coalesced NCHW stores, conflict-free Z[i][q]
    for (int i = threadIdx.x / 32; i < n_primary; i += kWarps) {
      T* plane = out_n + (long long)(c0 + i) * P.HW;
      for (OwnWalker w(twa_div, threadIdx.x % 32, 32); w.oy < tha; w.next()) {
        float v = Z[i * P.L.ldz + w.rect_q(P)];
        if constexpr (kGate) v *= gm.load(P, c0 + i, gm.row(P, ty0 + w.oy), gm.col(P, tx0 + w.ox));
        plane[w.lin(P, ty0, tx0)] = Elem<T>::from_float(v);
      }
    }
  }
}

// Step 3b, NCHW and NHWC: the unit's kept cheap channels on the tile's own pixels, kVX adjacent pixels per thread.
template <typename T, Act A, int KT, bool kCL, bool kGate>
__device__ __forceinline__ void cheap_epilogue(const KernelParams& P, unsigned char* smem, long long n, int c0,
                                               int n_cheap, int ty0, int tx0, int tha, int twa) {
  const float* Z = reinterpret_cast<const float*>(smem + P.L.z);
  const float* w2s = reinterpret_cast<const float*>(smem + P.L.w2);
  const float* b2s = reinterpret_cast<const float*>(smem + P.L.bias2);
  T* out_n = static_cast<T*>(P.out) + n * P.OC * P.HW;
  const GateMap<T, kCL> gm(P, kGate ? int(n) : 0);
  const int segs = (twa + kVX - 1) / kVX;
  const int qstride = kCL ? P.L.ldz : 1;
  const int px_step = kCL ? P.OC : 1;  // elements between horizontally adjacent pixels of one channel
  const FastDiv cheap_div(n_cheap), seg_div(segs), rows_div(tha), m_div(P.M);
  const int total = n_cheap * tha * segs;
  for (int e = threadIdx.x; e < total; e += kThreads) {
    // NHWC: channel fastest (coalesced stores of adjacent channels); NCHW: segment fastest (adjacent pixels).
    int jl, oy, sx;
    if constexpr (kCL) {
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
    window_accumulate<KT, false>(acc, Z + (kCL ? i : i * P.L.ldz), qstride, P.g.rw, oy, sx * kVX, w2s + jl,
                                 P.L.cheap, P.K);
    const int c = P.I + c0 * P.M + jl;
    const long long lin0 = (long long)(ty0 + oy) * P.W + tx0 + sx * kVX;
    T* dst = out_n + (kCL ? lin0 * P.OC + c : (long long)c * P.HW + lin0);  // one address for the kVX pixels
    const int gy = kGate ? gm.row(P, ty0 + oy) : 0;
#pragma unroll
    for (int o = 0; o < kVX; ++o) {
      if (sx * kVX + o < twa) {
        float v = act_fwd<A>(P, acc[o]);
        if constexpr (kGate) v *= gm.load(P, c, gy, gm.col(P, tx0 + sx * kVX + o));
        dst[o * px_step] = Elem<T>::from_float(v);
      }
    }
  }
}

// Step 3b, NHWCVec (M = 1, so cheap channel jl reads x1 channel jl): channels [jl0, jl0 + W) on kVX pixels of row
// oy starting at column sx * kVX.
template <typename T, Act A, int KT, int W, bool kGate>
__device__ __forceinline__ void cheap_group_vec(const KernelParams& P, const float* Z, const float* w2s,
                                                const float* b2s, T* out_n, const GateMap<T, true>& gm, int c0,
                                                int jl0, int oy, int sx, int ty0, int tx0, int twa) {
  float acc[kVX][W];
  cheap_preact_vec<KT, W>(acc, P, Z, w2s, b2s, jl0, oy, sx * kVX);
  T* dst = out_n + ((long long)(ty0 + oy) * P.W + tx0 + sx * kVX) * P.OC + P.I + c0 + jl0;
  const int gy = kGate ? gm.row(P, ty0 + oy) : 0;
#pragma unroll
  for (int o = 0; o < kVX; ++o) {
    if (sx * kVX + o < twa) {
#pragma unroll
      for (int ch = 0; ch < W; ++ch) acc[o][ch] = act_fwd<A>(P, acc[o][ch]);
      if constexpr (kGate) gate_vec<T, W>(P, gm, acc[o], P.I + c0 + jl0, gy, gm.col(P, tx0 + sx * kVX + o));
      VecIO<T, W>::store(dst + o * P.OC, acc[o]);
    }
  }
}

template <typename T, Act A, int KT, bool kGate>
__device__ __forceinline__ void cheap_epilogue_vec(const KernelParams& P, unsigned char* smem, long long n, int c0,
                                                   int n_cheap, int ty0, int tx0, int tha, int twa) {
  constexpr int V = kVecBytes / int(sizeof(T));
  const float* Z = reinterpret_cast<const float*>(smem + P.L.z);
  const float* w2s = reinterpret_cast<const float*>(smem + P.L.w2);
  const float* b2s = reinterpret_cast<const float*>(smem + P.L.bias2);
  T* out_n = static_cast<T*>(P.out) + n * P.OC * P.HW;
  const GateMap<T, true> gm(P, kGate ? int(n) : 0);
  const int segs = (twa + kVX - 1) / kVX, units = tha * segs;
  const FastDiv seg_div(segs);
  // Cheap channel jl is output channel I + c0 + jl; groups of V start at output channels divisible by V, so when
  // (I + c0) % V == 4 the range opens with a 4-channel group, and it may close with one.
  const int head = (V - (P.I + c0) % V) % V;  // 0 or 4
  const int full = (n_cheap - head) / V;
  const int tail = (n_cheap - head) % V;      // 0 or 4
  const GroupSplit s = split_by_groups(full);
  if (s.g < full) {
    #pragma unroll 1  // one group per iteration: no register cost, and the SASS count is per group
    for (int r = s.r0; r < units; r += s.step) {
      const int oy = seg_div.div(r);
      cheap_group_vec<T, A, KT, V, kGate>(P, Z, w2s, b2s, out_n, gm, c0, head + s.g * V, oy, r - oy * segs, ty0,
                                          tx0, twa);
    }
  }
  if constexpr (V == 8) {
    const int edges = (head != 0) + (tail != 0);
    #pragma unroll 1  // one group per iteration: no register cost, and the SASS count is per group
    for (int e = threadIdx.x; e < edges * units; e += kThreads) {
      const int which = edges == 2 ? (e & 1) : 0, r = edges == 2 ? (e >> 1) : e;
      const int jl0 = head != 0 && which == 0 ? 0 : head + full * V;
      const int oy = seg_div.div(r);
      cheap_group_vec<T, A, KT, 4, kGate>(P, Z, w2s, b2s, out_n, gm, c0, jl0, oy, r - oy * segs, ty0, tx0, twa);
    }
  }
}

// Where the units of a block's run are: (image, tile, chunk), advanced without a division per unit. The image is
// an int (the planner checks N < 2^31): the persistent loop's state stays in few registers.
struct UnitCursor {
  int n, tile, chunk;
  __device__ __forceinline__ UnitCursor(const KernelParams& P, long long u) {
    const long long item = u / P.g.chunks;
    chunk = int(u - item * P.g.chunks);
    const int ntiles = P.g.tiles_y * P.g.tiles_x;
    n = int(item / ntiles);
    tile = int(item - (long long)n * ntiles);
  }
  // The following unit; true when it starts a new tile.
  __device__ __forceinline__ bool next(const KernelParams& P) {
    if (++chunk < P.g.chunks) return false;
    chunk = 0;
    if (++tile == P.g.tiles_y * P.g.tiles_x) {
      tile = 0;
      ++n;
    }
    return true;
  }
};

// A tile's origin and its size clipped to the image.
struct TileBox {
  int ty0, tx0, tha, twa;
  __device__ __forceinline__ TileBox(const KernelParams& P, int tile) {
    const int ty = tile / P.g.tiles_x;
    ty0 = ty * P.g.th;
    tx0 = (tile - ty * P.g.tiles_x) * P.g.tw;
    tha = min(P.g.th, P.H - ty0);
    twa = min(P.g.tw, P.W - tx0);
  }
};

__device__ __forceinline__ long long* pixel_table(const KernelParams& P, unsigned char* smem, int which) {
  return reinterpret_cast<long long*>(smem + P.L.pix + unsigned(which) * P.L.pix_step);
}

__device__ __forceinline__ void build_tile_table(const KernelParams& P, long long* pix, int tile) {
  const TileBox t(P, tile);
  build_pixel_table(P, pix, t.ty0, t.tx0, t.tha, t.twa);
}

// The activation is an int template argument (kActRuntime for the fallback): nvcc's host stubs spell an enum
// argument outside the enumerators in a form the host compiler rejects.
template <typename T, bool kTF32, int KT, int kAct, Layout L, bool kGate>
__global__ void __launch_bounds__(kThreads, 2) ghost_forward_kernel(const KernelParams P) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // unreachable: the binding rejects devices below compute capability 8.0
#else
  constexpr bool kCL = L != Layout::NCHW;
  constexpr Act A = static_cast<Act>(kAct);
  GK_DYNAMIC_SHARED_MEMORY(smem);
  const long long b = blockIdx.x;
  // Loop state, few registers (the cheap epilogue of the run-time-k instantiation sits at the 128-register cap):
  // the units left in this block's run (< 2^31, checked by the planner), the cursor and two flags in one word.
  int left = int(P.units_per_block) + (b < P.units_rem ? 1 : 0);
  if (left <= 0) return;
  UnitCursor cur(P, b * P.units_per_block + (b < P.units_rem ? b : P.units_rem));
  constexpr int kTable = 1;  // which pixel table holds the current tile
  constexpr int kFirst = 2;  // the run's first unit: it loads x even when it starts inside a tile (xres), and its
                             // prologue was not issued by a previous unit (with L.overlap every later one's was)
  int flags = kFirst;

  // The next unit's first slices, copied from its tile's pixel table (the other table at a new tile). Recomputed
  // from `cur` where needed rather than held: the GEMM needs the registers.
  const auto issue_next = [&]() {
    UnitCursor nx = cur;
    const bool new_tile = nx.next(P);
    const int table = (flags & kTable) ^ (new_tile ? 1 : 0);
    k_prologue<T, kCL, true>(P, smem, GemmUnit{pixel_table(P, smem, table), nx.n, nx.chunk * P.L.rows,
                                               !P.L.xres || new_tile});
  };
  build_tile_table(P, pixel_table(P, smem, 0), cur.tile);
  __syncthreads();
  for (;;) {
    const int c0 = cur.chunk * P.L.rows, table = flags & kTable;
    const GemmUnit gu{pixel_table(P, smem, table), cur.n, c0, !P.L.xres || (flags & kFirst) || cur.chunk == 0};
    if (!P.L.overlap || (flags & kFirst)) k_prologue<T, kCL, true>(P, smem, gu);
    // The weights of this unit (the previous unit's epilogue is done with them) and the next tile's pixel table
    // (its slot's last reader was an earlier tile's epilogue); both are visible after the K loop's barriers.
    load_chunk_weights<T>(P, smem, c0);
    if (left > 1 && cur.chunk + 1 == P.g.chunks) {
      const int ntiles = P.g.tiles_y * P.g.tiles_x;
      build_tile_table(P, pixel_table(P, smem, table ^ 1), cur.tile + 1 == ntiles ? 0 : cur.tile + 1);
    }
    gemm_main<T, kTF32, kCL, true>(P, smem, gu);
    // With L.overlap the next unit's first slices go out now and land during this unit's epilogue: stages
    // 0..S-2 and X are disjoint from Z and not read by the epilogue (tests/test_cuda_sass.py finds these copies
    // by this line).
    if (P.L.overlap && left > 1)
      issue_next();
    __syncthreads();  // Z complete
    x1_in_place<A, L>(P, smem, pixel_table(P, smem, table), min(P.L.rows, P.I - c0));
    __syncthreads();
    {  // step 3 (each call on a line of its own in the kernel body: sass_report names the loops by these lines)
      const int n_primary = min(max(P.PK - c0, 0), P.L.rows);
      const int n_cheap = int(min(max((long long)P.CK - (long long)c0 * P.M, 0LL), (long long)P.L.cheap));
      const TileBox t(P, cur.tile);
      primary_stores<T, L, kGate>(P, smem, cur.n, c0, n_primary, t.ty0, t.tx0, t.tha, t.twa);
      if (n_cheap > 0) {
        if constexpr (L == Layout::NHWCVec)
          cheap_epilogue_vec<T, A, KT, kGate>(P, smem, cur.n, c0, n_cheap, t.ty0, t.tx0, t.tha, t.twa);
        else
          cheap_epilogue<T, A, KT, kCL, kGate>(P, smem, cur.n, c0, n_cheap, t.ty0, t.tx0, t.tha, t.twa);
      }
    }
    if (--left == 0) break;
    __syncthreads();  // Z, the weights and (at a new tile) this pixel table are rewritten next
    flags = cur.next(P) ? table ^ 1 : table;
  }
#endif
}

}  // namespace cuda
}  // namespace ghostkernels
