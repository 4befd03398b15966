// The primary 1x1 convolution of one block: Z[i][q] = sum_c W1[c0 + i][c] * x[n][c][pixel q of the GEMM rect],
// for the block's kChunk channels and every pixel of its rect, accumulated in float32 into shared memory.
//
// Pipeline: the input channels are consumed in slices of kc (64 bytes of every pixel) through 2 to 4 shared-memory
// stages (cp.async, completing asynchronously): while the tensor cores work on slice s, slices s + 1 .. s + S - 1
// are in flight. Small rects (7x7 images with hundreds of input channels: ~5 KB per slice) get more stages so that
// enough bytes are in flight to cover the memory latency; big rects have enough with two.
// Both stages hold their matrix K-contiguous: A[i][k] (row-major) and B[q][k] (B "column-major"), which lets an
// NHWC pixel's channels land with one 16-byte copy; NCHW inputs are transposed element by element on the way in.
// Everything outside the image, past C or past I is zero-filled, so the padding columns produce z1 = 0 exactly.
//
// Math: float16/bfloat16 -> wmma m16n16k16 (HMMA) with float accumulation; float32 -> wmma m16n16k8 on TF32
// (operands rounded to 10 mantissa bits, like cuDNN with allow_tf32) or, when TF32 is not allowed, plain float32
// FMAs (each thread a 4 x 12 register tile; 16-byte shared loads keep the FMA:load ratio at 4).
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

// Copies input-channel slice [k0, k0 + kc) of W1's chunk rows and of x's rect pixels into stage buffers As, Bs.
template <typename T, bool kCL>
__device__ __forceinline__ void load_stage(const KernelParams& P, const long long* pix, T* As, T* Bs, int k0, long long n,
                                           int c0) {
  constexpr int ES = sizeof(T), KC = ES == 4 ? 16 : 32, VEC = 16 / ES, LD = KC + VEC;
  const T* w1 = static_cast<const T*>(P.w1);
  const T* x = static_cast<const T*>(P.x);
  const long long xn = n * P.C * P.HW;
  // The copies are asynchronous (or, on the 16-bit element path, independent loads the compiler can batch), so the
  // loops stay rolled: unrolling them only holds addresses in registers that the accumulators need.
  if (P.vec_w1) {
#pragma unroll 1
    for (int e = threadIdx.x; e < kChunk * (KC / VEC); e += kThreads) {
      const int i = e / (KC / VEC), k = (e % (KC / VEC)) * VEC;
      const bool ok = c0 + i < P.I && k0 + k < P.C;
      cp_async16(As + i * LD + k, ok ? w1 + (long long)(c0 + i) * P.C + k0 + k : w1, ok);
    }
  } else {
#pragma unroll 1
    for (int e = threadIdx.x; e < kChunk * KC; e += kThreads) {
      const int i = e / KC, k = e % KC;
      const bool ok = c0 + i < P.I && k0 + k < P.C;
      copy_elem(As + i * LD + k, ok ? w1 + (long long)(c0 + i) * P.C + k0 + k : w1, ok);
    }
  }
  const int cols = P.L.cols;
  if constexpr (kCL) {
    if (P.vec_x) {  // a pixel's kc channels are 64 contiguous bytes: KC / VEC 16-byte copies
#pragma unroll 1
      for (int e = threadIdx.x; e < cols * (KC / VEC); e += kThreads) {
        const int q = e / (KC / VEC), k = (e % (KC / VEC)) * VEC;
        const long long v = pix[q];
        const bool ok = v >= 0 && k0 + k < P.C;
        cp_async16(Bs + q * LD + k, ok ? x + xn + (v >> 1) * P.C + k0 + k : x, ok);
      }
    } else {
#pragma unroll 1
      for (int e = threadIdx.x; e < cols * KC; e += kThreads) {
        const int q = e / KC, k = e % KC;
        const long long v = pix[q];
        const bool ok = v >= 0 && k0 + k < P.C;
        copy_elem(Bs + q * LD + k, ok ? x + xn + (v >> 1) * P.C + k0 + k : x, ok);
      }
    }
  } else {  // NCHW: a warp reads 32 consecutive pixels of one channel (coalesced) and transposes them into Bs
    const int lane = threadIdx.x % 32;
#pragma unroll 1
    for (int k = threadIdx.x / 32; k < KC; k += kWarps) {
      const bool kok = k0 + k < P.C;
      const long long xc = xn + (long long)(k0 + k) * P.HW;
      for (int q = lane; q < cols; q += 32) {
        const long long v = pix[q];
        const bool ok = kok && v >= 0;
        copy_elem(Bs + q * LD + k, ok ? x + xc + (v >> 1) : x, ok);
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

// acc[r][m] += A(rows 16m..16m+15) . B(columns of tile warp + r * kWarps) over one stage.
template <typename T>
__device__ __forceinline__ void mma_stage(const T* As, const T* Bs, int col_tiles,
                                          AccFrag<T> (&acc)[kColTilesPerWarp][2]) {
  namespace wmma = nvcuda::wmma;
  using F = typename MmaTypes<T>::Frag;
  constexpr int KS = MmaTypes<T>::kStep;
  constexpr int ES = sizeof(T), KC = ES == 4 ? 16 : 32, LD = KC + 16 / ES;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int ks = 0; ks < KC; ks += KS) {
    wmma::fragment<wmma::matrix_a, 16, 16, KS, F, wmma::row_major> a0, a1;
    wmma::load_matrix_sync(a0, As + ks, LD);
    wmma::load_matrix_sync(a1, As + 16 * LD + ks, LD);
    if constexpr (sizeof(T) == 4) {
      to_tf32(a0);
      to_tf32(a1);
    }
#pragma unroll
    for (int r = 0; r < kColTilesPerWarp; ++r) {
      const int nt = warp + r * kWarps;
      if (nt < col_tiles) {  // warp-uniform, as wmma requires
        wmma::fragment<wmma::matrix_b, 16, 16, KS, F, wmma::col_major> b;
        wmma::load_matrix_sync(b, Bs + nt * 16 * LD + ks, LD);
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

// The multistage K loop shared by both GEMM paths: S = P.L.stages stages, S - 1 slices in flight while one is
// consumed, one barrier per slice. Commit group g always holds slice g (empty groups keep the count when the loop
// runs out of slices), so waiting until at most S - 2 groups are pending means slice kc has landed. The barrier
// then also guarantees every warp finished slice kc - 1, whose stage the next copy reuses.
template <typename T, bool kCL, typename Consume>
__device__ __forceinline__ void k_loop(const KernelParams& P, const long long* pix, unsigned char* smem, long long n,
                                       int c0, Consume consume) {
  constexpr int ES = sizeof(T), KC = ES == 4 ? 16 : 32;
  // Stage s lives at a0 + s * a_step, b0 + s * b_step: pointer arithmetic, not an array indexed at run time
  // (which would put the pointers in local memory).
  T* const A0 = reinterpret_cast<T*>(smem + P.L.a0);
  T* const B0 = reinterpret_cast<T*>(smem + P.L.b0);
  const int a_step = int(P.L.a_step) / ES, b_step = int(P.L.b_step) / ES;
  const int S = P.L.stages;
  const int nk = (P.C + KC - 1) / KC;
  for (int s = 0; s < S - 1; ++s) {
    if (s < nk) load_stage<T, kCL>(P, pix, A0 + s * a_step, B0 + s * b_step, s * KC, n, c0);
    cp_async_commit();
  }
  for (int kc = 0; kc < nk; ++kc) {
    cp_async_wait_pending(S - 2);
    __syncthreads();
    const int nxt = kc + S - 1, nb = nxt % S, cb = kc % S;
    if (nxt < nk) load_stage<T, kCL>(P, pix, A0 + nb * a_step, B0 + nb * b_step, nxt * KC, n, c0);
    cp_async_commit();
    consume(A0 + cb * a_step, B0 + cb * b_step);
  }
  cp_async_wait<0>();  // only empty groups can be pending here
  __syncthreads();     // every warp is done with the stages, which Z overwrites next
}

// Runs the whole K loop and leaves z1 (without bias) in Z. Ends with a barrier after Z is written. Callers must
// have built the pixel table and put a barrier after it. kTF32 only matters for T = float.
template <typename T, bool kTF32, bool kCL>
__device__ void gemm_rect(const KernelParams& P, unsigned char* smem, long long n, int c0) {
  namespace wmma = nvcuda::wmma;
  constexpr bool kTensorCores = sizeof(T) == 2 || kTF32;
  const long long* pix = reinterpret_cast<const long long*>(smem + P.L.pix);
  float* Z = reinterpret_cast<float*>(smem + P.L.z);
  const int cols = P.L.cols, col_tiles = cols / 16;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  if constexpr (kTensorCores) {
    AccFrag<T> acc[kColTilesPerWarp][2];
#pragma unroll
    for (int r = 0; r < kColTilesPerWarp; ++r) {
      wmma::fill_fragment(acc[r][0], 0.f);
      wmma::fill_fragment(acc[r][1], 0.f);
    }
    k_loop<T, kCL>(P, pix, smem, n, c0, [&](const T* As, const T* Bs) { mma_stage<T>(As, Bs, col_tiles, acc); });
    const auto layout = kCL ? wmma::mem_col_major : wmma::mem_row_major;
#pragma unroll
    for (int r = 0; r < kColTilesPerWarp; ++r) {
      const int nt = warp + r * kWarps;
      if (nt < col_tiles) {
#pragma unroll
        for (int m = 0; m < 2; ++m) wmma::store_matrix_sync(Z + z_index<kCL>(P, 16 * m, 16 * nt), acc[r][m], P.L.ldz, layout);
      }
    }
  } else {
    float acc[kFfmaRows][kFfmaCols];
#pragma unroll
    for (int ii = 0; ii < kFfmaRows; ++ii)
#pragma unroll
      for (int r = 0; r < kFfmaCols; ++r) acc[ii][r] = 0.f;
    k_loop<T, kCL>(P, pix, smem, n, c0, [&](const T* As, const T* Bs) { ffma_stage(As, Bs, cols, acc); });
#pragma unroll
    for (int ii = 0; ii < kFfmaRows; ++ii)
#pragma unroll
      for (int r = 0; r < kFfmaCols; ++r) {
        const int q = lane + 32 * r;
        if (q < cols) Z[z_index<kCL>(P, warp * kFfmaRows + ii, q)] = acc[ii][r];
      }
  }
  __syncthreads();
}

}  // namespace cuda
}  // namespace ghostkernels
