// The primary 1x1 convolution of one work unit: Z[i][q] = sum_c W1[c0 + i][c] * x[n][c][pixel q of the GEMM rect],
// for the unit's `rows` channels (L.rows: 32 in the backward, 32/64/128 in the forward) and every pixel of its rect,
// accumulated in float32 into shared memory.
//
// Pipeline: the input channels are consumed in slices of kc (64 bytes of every pixel) through 2 to 4 shared-memory
// stages (cp.async, completing asynchronously): while the tensor cores work on slice s, slices s + 1 .. s + S - 1
// are in flight. Small rects (7x7 images with hundreds of input channels: ~5 KB per slice) get more stages so that
// enough bytes are in flight to cover the memory latency; big rects have enough with two. The loop is split into a
// prologue (the first S - 1 slices) and the main loop, so that the forward can issue the next unit's prologue
// before this unit's epilogue (L.overlap) and the copies run under the epilogue's arithmetic.
// Stages hold their matrix K-contiguous: A[i][k] (row-major) and B[q][k] (B "column-major"), which lets an NHWC
// pixel's channels land with one 16-byte copy; NCHW inputs are transposed element by element on the way in. With
// L.xres the x slices land in the resident buffer X[q][c] instead (the same K-contiguous order, pitch L.ldx), where
// the later units of the same tile find them; then only W1 streams.
// Everything outside the image, past C or past I is zero-filled, so the padding columns produce z1 = 0 exactly.
//
// Math: float16/bfloat16 -> wmma m16n16k16 (HMMA) with float accumulation; float32 -> wmma m16n16k8 on TF32
// (operands rounded to 10 mantissa bits, like cuDNN with allow_tf32) or, when TF32 is not allowed, plain float32
// FMAs (each thread a 4 x 12 register tile; 16-byte shared loads keep the FMA:load ratio at 4; 32-row units only).
// The warps of a tensor-core unit form rows/32 row groups x L.wc column groups, each warp two 16-row tiles x up to
// kColTilesPerWarp column tiles: the same fragments and the same k order for every Z element whatever the unit's
// height or the x buffer, so every layout of the forward computes bit-identical z1 (the emulator's tests compare).
#pragma once

#include <mma.h>

#include "ghost_cuda_params.cuh"

namespace ghostkernels {
namespace cuda {

// cp.async (sm_80+): global -> shared copies that complete asynchronously, in commit groups. The host emulator
// (emulation/) performs them synchronously with the same zero-fill rule.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#if defined(GHOSTKERNELS_HOST_EMULATION)
  emulation::copy_or_zero(smem, gmem, valid, 16);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  // src-size 0 zero-fills the 16 bytes without reading global memory.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0)
               : "memory");
#endif
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
#if defined(GHOSTKERNELS_HOST_EMULATION)
  emulation::copy_or_zero(smem, gmem, valid, 4);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 4 : 0)
               : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if !defined(GHOSTKERNELS_HOST_EMULATION)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if !defined(GHOSTKERNELS_HOST_EMULATION)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// One element into shared memory: float32 through cp.async (4 bytes), 16-bit types with an ordinary load (cp.async
// has no 2-byte form); this is the path of NCHW inputs and of channel counts that are not a multiple of 8.
template <typename T>
__device__ __forceinline__ void copy_elem(T* dst, const T* src, bool valid) {
  if constexpr (sizeof(T) == 4) {
    cp_async4(dst, src, valid);
  } else {
    const unsigned short v = valid ? __ldg(reinterpret_cast<const unsigned short*>(src)) : (unsigned short)0;
    *reinterpret_cast<unsigned short*>(dst) = v;  // all-zero bits are +0.0 in float16 and bfloat16
  }
}

// The operands of one work unit's GEMM.
struct GemmUnit {
  const long long* pix;  // the pixel table of the unit's rect (build_pixel_table)
  long long n;           // image
  int c0;                // first x1 channel (W1 row)
  bool load_x;           // copy x's slices (false: L.xres and X already holds this tile)
};

// Copies input-channel slice [k0, k0 + kc) of W1's unit rows into As and, when u.load_x, of x's rect pixels into
// Bs (row pitch ldb; kcols <= kc channels of the slice exist in Bs: the resident X ends at L.kpad).
template <typename T, bool kCL, bool kFwd>
__device__ __forceinline__ void load_stage(const KernelParams& P, const GemmUnit& u, T* As, T* Bs, int ldb, int k0,
                                           int kcols) {
  constexpr int ES = sizeof(T), KC = ES == 4 ? 16 : 32, VEC = 16 / ES, LD = KC + VEC;
  const T* w1 = static_cast<const T*>(P.w1);
  const T* x = static_cast<const T*>(P.x);
  const long long xn = u.n * P.C * P.HW;
  const long long* pix = u.pix;
  const int c0 = u.c0, rows = kFwd ? P.L.rows : kChunk;
  // The copies are asynchronous (or, on the 16-bit element path, independent loads the compiler can batch), so the
  // loops stay rolled: unrolling them only holds addresses in registers that the accumulators need.
  if (P.vec_w1) {
#pragma unroll 1
    for (int e = threadIdx.x; e < rows * (KC / VEC); e += kThreads) {
      const int i = e / (KC / VEC), k = (e % (KC / VEC)) * VEC;
      const bool ok = c0 + i < P.I && k0 + k < P.C;
      cp_async16(As + i * LD + k, ok ? w1 + (long long)(c0 + i) * P.C + k0 + k : w1, ok);
    }
  } else {
#pragma unroll 1
    for (int e = threadIdx.x; e < rows * KC; e += kThreads) {
      const int i = e / KC, k = e % KC;
      const bool ok = c0 + i < P.I && k0 + k < P.C;
      copy_elem(As + i * LD + k, ok ? w1 + (long long)(c0 + i) * P.C + k0 + k : w1, ok);
    }
  }
  if (kFwd && !u.load_x) return;
  const int cols = P.L.gcols;
  if constexpr (kCL) {
    if (P.vec_x) {  // a pixel's kc channels are 64 contiguous bytes: KC / VEC 16-byte copies
#pragma unroll 1
      for (int e = threadIdx.x; e < cols * (KC / VEC); e += kThreads) {
        const int q = e / (KC / VEC), k = (e % (KC / VEC)) * VEC;
        if (k >= kcols) continue;
        const long long v = pix[q];
        const bool ok = v >= 0 && k0 + k < P.C;
        cp_async16(Bs + q * ldb + k, ok ? x + xn + (v >> 1) * P.C + k0 + k : x, ok);
      }
    } else {
#pragma unroll 1
      for (int e = threadIdx.x; e < cols * KC; e += kThreads) {
        const int q = e / KC, k = e % KC;
        if (k >= kcols) continue;
        const long long v = pix[q];
        const bool ok = v >= 0 && k0 + k < P.C;
        copy_elem(Bs + q * ldb + k, ok ? x + xn + (v >> 1) * P.C + k0 + k : x, ok);
      }
    }
  } else {  // NCHW: a warp reads 32 consecutive pixels of one channel (coalesced) and transposes them into Bs
    const int lane = threadIdx.x % 32;
#pragma unroll 1
    for (int k = threadIdx.x / 32; k < kcols; k += kWarps) {
      const bool kok = k0 + k < P.C;
      const long long xc = xn + (long long)(k0 + k) * P.HW;
      for (int q = lane; q < cols; q += 32) {
        const long long v = pix[q];
        const bool ok = kok && v >= 0;
        copy_elem(Bs + q * ldb + k, ok ? x + xc + (v >> 1) : x, ok);
      }
    }
  }
}

// Tensor-core operand types per input dtype.
template <typename T>
struct MmaTypes;
template <>
struct MmaTypes<__half> {
  using Frag = __half;
  static constexpr int kStep = 16;
};
template <>
struct MmaTypes<__nv_bfloat16> {
  using Frag = __nv_bfloat16;
  static constexpr int kStep = 16;
};
template <>
struct MmaTypes<float> {
  using Frag = nvcuda::wmma::precision::tf32;
  static constexpr int kStep = 8;
};

template <typename T>
using AccFrag = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, MmaTypes<T>::kStep, float>;

template <typename FragT>
__device__ __forceinline__ void to_tf32(FragT& f) {
#pragma unroll
  for (int t = 0; t < f.num_elements; ++t) f.x[t] = nvcuda::wmma::__float_to_tf32(f.x[t]);
}

// Where a warp's tiles lie: row group rg (rows 32 rg .. 32 rg + 31 of the unit), column group cg (column tiles
// cg, cg + wc, cg + 2 wc). With 32-row units (wc = 8) warp w takes column tiles w, w + 8, w + 16.
struct WarpTiles {
  int rg, cg, wc;
  __device__ __forceinline__ explicit WarpTiles(int wc_) : wc(wc_) {
    const int warp = threadIdx.x / 32;
    rg = warp / wc;
    cg = warp - rg * wc;
  }
  __device__ __forceinline__ int col_tile(int r) const { return cg + r * wc; }
};

// acc[r][m] += A(rows 32 rg + 16m .. + 15) . B(column tile col_tile(r)) over the first ksteps k steps of one stage
// (a slice of the resident X may hold fewer than kc channels: the steps past its end are skipped).
template <typename T>
__device__ __forceinline__ void mma_stage(const T* As, const T* Bs, int ldb, int ksteps, int col_tiles,
                                          const WarpTiles& wt, AccFrag<T> (&acc)[kColTilesPerWarp][2]) {
  namespace wmma = nvcuda::wmma;
  using F = typename MmaTypes<T>::Frag;
  constexpr int KS = MmaTypes<T>::kStep;
  constexpr int ES = sizeof(T), KC = ES == 4 ? 16 : 32, LD = KC + 16 / ES;
  const T* Aw = As + 32 * wt.rg * LD;
#pragma unroll
  for (int s = 0; s < KC / KS; ++s) {
    if (s >= ksteps) break;  // block-uniform
    const int ks = s * KS;
    wmma::fragment<wmma::matrix_a, 16, 16, KS, F, wmma::row_major> a0, a1;
    wmma::load_matrix_sync(a0, Aw + ks, LD);
    wmma::load_matrix_sync(a1, Aw + 16 * LD + ks, LD);
    if constexpr (sizeof(T) == 4) {
      to_tf32(a0);
      to_tf32(a1);
    }
#pragma unroll
    for (int r = 0; r < kColTilesPerWarp; ++r) {
      const int nt = wt.col_tile(r);
      if (nt < col_tiles) {  // warp-uniform, as wmma requires
        wmma::fragment<wmma::matrix_b, 16, 16, KS, F, wmma::col_major> b;
        wmma::load_matrix_sync(b, Bs + nt * 16 * ldb + ks, ldb);
        if constexpr (sizeof(T) == 4) to_tf32(b);
        wmma::mma_sync(acc[r][0], a0, b, acc[r][0]);
        wmma::mma_sync(acc[r][1], a1, b, acc[r][1]);
      }
    }
  }
}

// Exact float32: thread (warp w, lane l) owns rows 4w..4w+3 and columns l + 32r, r < 12.
constexpr int kFfmaRows = kChunk / kWarps;      // 4
constexpr int kFfmaCols = kMaxGemmCols / 32;    // 12

__device__ __forceinline__ void ffma_stage(const float* As, const float* Bs, int cols,
                                           float (&acc)[kFfmaRows][kFfmaCols]) {
  constexpr int LD = 20;  // stage_ld(4)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int k = 0; k < 16; k += 4) {
    float4 a[kFfmaRows];
#pragma unroll
    for (int ii = 0; ii < kFfmaRows; ++ii)
      a[ii] = *reinterpret_cast<const float4*>(As + (warp * kFfmaRows + ii) * LD + k);  // broadcast
#pragma unroll
    for (int r = 0; r < kFfmaCols; ++r) {
      const int q = lane + 32 * r;
      if (q < cols) {
        // 8 lanes x 16 bytes at a pitch of 80 bytes hit 32 distinct banks: conflict-free.
        const float4 b = *reinterpret_cast<const float4*>(Bs + q * LD + k);
#pragma unroll
        for (int ii = 0; ii < kFfmaRows; ++ii) {
          acc[ii][r] = fmaf(a[ii].x, b.x, acc[ii][r]);
          acc[ii][r] = fmaf(a[ii].y, b.y, acc[ii][r]);
          acc[ii][r] = fmaf(a[ii].z, b.z, acc[ii][r]);
          acc[ii][r] = fmaf(a[ii].w, b.w, acc[ii][r]);
        }
      }
    }
  }
}

// Z(i, q) index: NCHW keeps Z[i][q] (a warp's consecutive pixels -> consecutive banks), NHWC keeps Z[q][i]
// (a warp's consecutive channels -> consecutive banks), matching how each layout's epilogue walks it.
template <bool kCL>
__device__ __forceinline__ int z_index(const KernelParams& P, int i, int q) {
  return kCL ? q * P.L.ldz + i : i * P.L.ldz + q;
}

// cp.async.wait_group takes an immediate; the pipeline depth is a run-time choice of the planner (2..4 stages).
__device__ __forceinline__ void cp_async_wait_pending(int pending) {
  if (pending <= 0)
    cp_async_wait<0>();
  else if (pending == 1)
    cp_async_wait<1>();
  else
    cp_async_wait<2>();
}

// Slice kc of a unit: its stage (kc % S; each unit restarts at stage 0), where its x lands and how much of it.
template <typename T>
struct SliceBuffers {
  T* As;
  T* Bs;
  int ldb;    // B's row pitch (elements)
  int kcols;  // channels of the slice that exist in Bs (< kc only at the end of a resident X)
};
// kFwd: the forward's layouts (resident x possible); the backward's (kFwd = false) always streams, and compiling
// that in keeps its registers where they were.
template <typename T, bool kFwd>
__device__ __forceinline__ SliceBuffers<T> slice_buffers(const KernelParams& P, unsigned char* smem, int kc) {
  constexpr int ES = sizeof(T), KC = ES == 4 ? 16 : 32, LD = KC + 16 / ES;
  const int s = kc % P.L.stages;
  // Stage s lives at a0 + s * a_step, b0 + s * b_step: pointer arithmetic, not an array indexed at run time
  // (which would put the pointers in local memory).
  T* const As = reinterpret_cast<T*>(smem + P.L.a0 + unsigned(s) * P.L.a_step);
  if (kFwd && P.L.xres) {
    const int k0 = kc * KC, left = P.L.kpad - k0;
    return {As, reinterpret_cast<T*>(smem + P.L.x) + k0, P.L.ldx, left < KC ? left : KC};
  }
  return {As, reinterpret_cast<T*>(smem + P.L.b0 + unsigned(s) * P.L.b_step), LD, KC};
}

template <typename T, bool kCL, bool kFwd>
__device__ __forceinline__ void issue_slice(const KernelParams& P, unsigned char* smem, const GemmUnit& u, int kc) {
  constexpr int KC = sizeof(T) == 4 ? 16 : 32;
  const SliceBuffers<T> b = slice_buffers<T, kFwd>(P, smem, kc);
  load_stage<T, kCL, kFwd>(P, u, b.As, b.Bs, b.ldb, kc * KC, b.kcols);
}

// The first S - 1 slices of a unit, one commit group each (empty groups where the unit has fewer slices).
template <typename T, bool kCL, bool kFwd>
__device__ __forceinline__ void k_prologue(const KernelParams& P, unsigned char* smem, const GemmUnit& u) {
  constexpr int KC = sizeof(T) == 4 ? 16 : 32;
  const int nk = (P.C + KC - 1) / KC;
  for (int s = 0; s < P.L.stages - 1; ++s) {
    if (s < nk) issue_slice<T, kCL, kFwd>(P, smem, u, s);
    cp_async_commit();
  }
}

// The main K loop after k_prologue: S - 1 slices in flight while one is consumed, one barrier per slice. Commit
// group g always holds slice g (empty groups keep the count when the loop runs out of slices), so waiting until at
// most S - 2 groups are pending means slice kc has landed. The barrier then also guarantees every warp finished
// slice kc - 1, whose stage the next copy reuses.
template <typename T, bool kCL, bool kFwd, typename Consume>
__device__ __forceinline__ void k_main(const KernelParams& P, unsigned char* smem, const GemmUnit& u,
                                       Consume consume) {
  constexpr int KC = sizeof(T) == 4 ? 16 : 32;
  const int S = P.L.stages;
  const int nk = (P.C + KC - 1) / KC;
  for (int kc = 0; kc < nk; ++kc) {
    cp_async_wait_pending(S - 2);
    __syncthreads();
    if (kc + S - 1 < nk) issue_slice<T, kCL, kFwd>(P, smem, u, kc + S - 1);
    cp_async_commit();
    consume(slice_buffers<T, kFwd>(P, smem, kc));
  }
  cp_async_wait<0>();  // only empty groups can be pending here
  __syncthreads();     // every warp is done with the stages (stage S - 1 and, without overlap, all alias Z)
}

// The GEMM of a unit whose k_prologue was issued: leaves z1 (without bias) in Z and zeroes Z's slack columns past
// the GEMM's (the depthwise windows may read them). Every warp is done with the stages when it returns (k_main's
// last barrier), so the caller may issue the next unit's prologue right away (the forward does, with L.overlap);
// the caller's barrier then makes Z visible. Callers must have built the unit's pixel table and put a barrier
// after it before the prologue. kTF32 only matters for T = float; kFwd as for slice_buffers (the backward's units
// are 32 rows, wc = 8, and its GEMM covers all of Z).
template <typename T, bool kTF32, bool kCL, bool kFwd>
__device__ void gemm_main(const KernelParams& P, unsigned char* smem, const GemmUnit& u) {
  namespace wmma = nvcuda::wmma;
  constexpr bool kTensorCores = sizeof(T) == 2 || kTF32;
  constexpr int KS = MmaTypes<T>::kStep, KC = sizeof(T) == 4 ? 16 : 32;
  float* Z = reinterpret_cast<float*>(smem + P.L.z);
  const int gcols = P.L.gcols, col_tiles = gcols / 16;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  if constexpr (kTensorCores) {
    const WarpTiles wt(kFwd ? P.L.wc : kWarps);
    AccFrag<T> acc[kColTilesPerWarp][2];
#pragma unroll
    for (int r = 0; r < kColTilesPerWarp; ++r) {
      wmma::fill_fragment(acc[r][0], 0.f);
      wmma::fill_fragment(acc[r][1], 0.f);
    }
    k_main<T, kCL, kFwd>(P, smem, u, [&](const SliceBuffers<T>& b) {
      mma_stage<T>(b.As, b.Bs, b.ldb, kFwd ? (b.kcols + KS - 1) / KS : KC / KS, col_tiles, wt, acc);
    });
    const auto layout = kCL ? wmma::mem_col_major : wmma::mem_row_major;
#pragma unroll
    for (int r = 0; r < kColTilesPerWarp; ++r) {
      const int nt = wt.col_tile(r);
      if (nt < col_tiles) {
#pragma unroll
        for (int m = 0; m < 2; ++m)
          wmma::store_matrix_sync(Z + z_index<kCL>(P, 32 * wt.rg + 16 * m, 16 * nt), acc[r][m], P.L.ldz, layout);
      }
    }
  } else {
    float acc[kFfmaRows][kFfmaCols];
#pragma unroll
    for (int ii = 0; ii < kFfmaRows; ++ii)
#pragma unroll
      for (int r = 0; r < kFfmaCols; ++r) acc[ii][r] = 0.f;
    k_main<T, kCL, kFwd>(P, smem, u, [&](const SliceBuffers<T>& b) { ffma_stage(b.As, b.Bs, gcols, acc); });
#pragma unroll
    for (int ii = 0; ii < kFfmaRows; ++ii)
#pragma unroll
      for (int r = 0; r < kFfmaCols; ++r) {
        const int q = lane + 32 * r;
        if (q < gcols) Z[z_index<kCL>(P, warp * kFfmaRows + ii, q)] = acc[ii][r];
      }
  }
  if constexpr (kFwd) {  // the backward's GEMM covers every Z column
    const int slack = P.L.cols - gcols;
    for (int e = threadIdx.x; e < slack * P.L.rows; e += kThreads) {
      const int i = e % P.L.rows, q = gcols + e / P.L.rows;
      Z[z_index<kCL>(P, i, q)] = 0.f;
    }
  }
}

}  // namespace cuda
}  // namespace ghostkernels
