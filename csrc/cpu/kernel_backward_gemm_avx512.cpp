// The AVX-512 GEMMs of kernel_backward_gemm_avx512.h: the forward kernel's register-blocked microkernel
// (kernel_ghost_forward_avx512.cpp) without its epilogue, on float32 or on bfloat16 pairs (the bf16 dot product: its
// instructions only in the PairsOp instantiations, which run only where the CPU has AVX-512 BF16), and a 16 x 16
// register transpose.
//
// As in the other AVX-512 files: no torch header, and the AVX-512 code sits in the AVX-512 region
// (util_avx512_target.h) with internal linkage (plus the exported entry points), so the library still loads and runs
// on CPUs without AVX-512; the callers check avx512_forward_available() first.
//
// Numerics: K is cut into equal blocks of at most kKc; each C element is, per block, a sum over the block's k in
// order with fused multiply-adds (bfloat16 pairs: a pair's two products per step, as vdpbf16ps adds them), the
// blocks' sums added to C in turn (to C's old value when accumulating).
#include "kernel_backward_gemm_avx512.h"

#include <cmath>
#include <cstdint>

// util_avx512_common.h's own includes, here outside the AVX-512 region so that no inline function of theirs is
// compiled for AVX-512 (see util_avx512_common.h).
#include "../activations.h"
#include "util_avx512_target.h"

#if GK_AVX512_KERNELS
GK_AVX512_REGION_BEGIN
#include "util_avx512_common.h"
#endif

namespace ghostkernels {
namespace cpu {

#if GK_AVX512_KERNELS
namespace {

constexpr int64_t kLanes = 16;  // floats per 512-bit vector
// The forward kernel's tile (kernel_ghost_forward_avx512.cpp: kForwardTileChannels x kNV): 6 rows x 4 vectors of
// 16 floats, 24 accumulator registers of 32.
constexpr int64_t kMR = 6;
constexpr int64_t kNV = 4;
constexpr int kMR1 = 12;  // rows of the one-vector tiles (avx512_sgemm_nn)
// Rows of B per block of K: a 128 x 64 block of B is 32 KiB, inside the 48 KiB L1 of the CPUs measured.
constexpr int64_t kKc = 128;

// The operand types of the GEMMs: float32, or 32-bit words of two bfloat16 (neighbouring k) on the bf16 dot product.
struct F32Op {
  using elem = float;
  using vec = __m512;
  static vec load(const elem* p) { return _mm512_loadu_ps(p); }
  static vec load(__mmask16 m, const elem* p) { return _mm512_maskz_loadu_ps(m, p); }
  static vec broadcast(elem a) { return _mm512_set1_ps(a); }
  static __m512 madd(__m512 acc, vec a, vec b) { return _mm512_fmadd_ps(a, b, acc); }
};
struct PairsOp {
  using elem = uint32_t;
  using vec = __m512i;
  static vec load(const elem* p) { return _mm512_loadu_si512(p); }
  static vec load(__mmask16 m, const elem* p) { return _mm512_maskz_loadu_epi32(m, p); }
  static vec broadcast(elem a) { return _mm512_set1_epi32(static_cast<int>(a)); }
  static __m512 madd(__m512 acc, vec a, vec b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
};

// C tile [MR x 16*NV] at (m0, n0) of the GEMM; `tail` masks the last vector's columns past N.
template <typename Op, int MR, int NV>
void gemm_nn_tile(int64_t K, const typename Op::elem* A, int64_t lda, const typename Op::elem* B, int64_t ldb,
                  float* C, int64_t ldc, bool accumulate, __mmask16 tail) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  }
#pragma GCC unroll 2
  for (int64_t k = 0; k < K; ++k) {
    const typename Op::elem* bk = B + k * ldb;
    typename Op::vec bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV - 1; ++v) bv[v] = Op::load(bk + v * kLanes);
    bv[NV - 1] = Op::load(tail, bk + (NV - 1) * kLanes);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const typename Op::vec av = Op::broadcast(A[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = Op::madd(acc[r][v], av, bv[v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? tail : static_cast<__mmask16>(0xFFFF);
      float* c = C + r * ldc + v * kLanes;
      const __m512 old = accumulate ? _mm512_maskz_loadu_ps(m, c) : _mm512_setzero_ps();
      _mm512_mask_storeu_ps(c, m, _mm512_add_ps(old, acc[r][v]));
    }
  }
}

template <typename Op>
using GemmNNTile = void (*)(int64_t, const typename Op::elem*, int64_t, const typename Op::elem*, int64_t, float*,
                            int64_t, bool, __mmask16);

template <typename Op, int MR>
GemmNNTile<Op> gemm_nn_tile_for_nv(int64_t nv) {
  switch (nv) {
    case 1: return &gemm_nn_tile<Op, MR, 1>;
    case 2: return &gemm_nn_tile<Op, MR, 2>;
    case 3: return &gemm_nn_tile<Op, MR, 3>;
    default: return &gemm_nn_tile<Op, MR, 4>;
  }
}

template <typename Op>
GemmNNTile<Op> gemm_nn_tile_for(int64_t mr, int64_t nv) {
  static_assert(kMR == 6 && kNV == 4, "the switches below enumerate the tile shapes");
  switch (mr) {
    case 1: return gemm_nn_tile_for_nv<Op, 1>(nv);
    case 2: return gemm_nn_tile_for_nv<Op, 2>(nv);
    case 3: return gemm_nn_tile_for_nv<Op, 3>(nv);
    case 4: return gemm_nn_tile_for_nv<Op, 4>(nv);
    case 5: return gemm_nn_tile_for_nv<Op, 5>(nv);
    default: return gemm_nn_tile_for_nv<Op, 6>(nv);
  }
}

template <typename Op>
void gemm_nn(int64_t M, int64_t N, int64_t K, const typename Op::elem* A, int64_t lda, const typename Op::elem* B,
             int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  // Column strips outside, blocks of K next, row tiles inside: a block of a strip of B (<= kKc x 64) is re-read from
  // L1 by every row tile. (Without the K blocks the strip of a K of 300-700 sat in L2, and products such as
  // 56 x 784 x 672 ran at half the rate of K <= 128, bench/NOTES.md entry 46.)
  const int64_t blocks = imax(1, (K + kKc - 1) / kKc), kb = imax(1, (K + blocks - 1) / blocks);  // equal, <= kKc
  for (int64_t n0 = 0; n0 < N; n0 += kNV * kLanes) {
    const int64_t vecs = imin(kNV, (N - n0 + kLanes - 1) / kLanes);
    const __mmask16 tail = lane_range(0, N - (n0 + (vecs - 1) * kLanes));
    for (int64_t k0 = 0; k0 == 0 || k0 < K; k0 += kb) {  // (K = 0: one pass, which writes C's old values or 0)
      int64_t m0 = 0;
      if (vecs == 1) {
        // One vector of columns (N <= 16, e.g. the DFC gate's 3x3 and 2x2 pooled maps): tiles of kMR1 rows, whose
        // kMR1 accumulator chains hide the multiply-add's latency, where a 6 x 1 tile's six chains waited on it
        // (bench/NOTES.md entry 62).
        for (; m0 + kMR1 <= M; m0 += kMR1) {
          gemm_nn_tile<Op, kMR1, 1>(imin(kb, K - k0), A + m0 * lda + k0, lda, B + k0 * ldb + n0, ldb,
                                    C + m0 * ldc + n0, ldc, accumulate || k0 > 0, tail);
        }
      }
      for (; m0 < M; m0 += kMR) {
        gemm_nn_tile_for<Op>(imin(kMR, M - m0), vecs)(imin(kb, K - k0), A + m0 * lda + k0, lda, B + k0 * ldb + n0,
                                                      ldb, C + m0 * ldc + n0, ldc, accumulate || k0 > 0, tail);
      }
    }
  }
}

}  // namespace

void avx512_sgemm_nn(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                     float* C, int64_t ldc, bool accumulate) {
  gemm_nn<F32Op>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

void avx512_bf16_pairs_gemm_nn(int64_t M, int64_t N, int64_t K, const uint32_t* A, int64_t lda, const uint32_t* B,
                               int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  gemm_nn<PairsOp>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

void avx512_transpose(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst, int64_t ldd) {
  for (int64_t r0 = 0; r0 < rows; r0 += kLanes) {
    const int64_t nr = imin(kLanes, rows - r0);
    const __mmask16 out_lanes = lane_range(0, nr);
    for (int64_t c0 = 0; c0 < cols; c0 += kLanes) {
      const int64_t nc = imin(kLanes, cols - c0);
      const __mmask16 in_lanes = lane_range(0, nc);
      __m512 r[16];
      for (int i = 0; i < 16; ++i) {
        r[i] = i < nr ? _mm512_maskz_loadu_ps(in_lanes, src + (r0 + i) * lds + c0) : _mm512_setzero_ps();
      }
      transpose_16x16(r);
      for (int64_t c = 0; c < nc; ++c) _mm512_mask_storeu_ps(dst + (c0 + c) * ldd + r0, out_lanes, r[c]);
    }
  }
}

#else
// Never called: avx512_forward_available() is false.
void avx512_sgemm_nn(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, bool) {}
void avx512_bf16_pairs_gemm_nn(int64_t, int64_t, int64_t, const uint32_t*, int64_t, const uint32_t*, int64_t, float*,
                               int64_t, bool) {}
void avx512_transpose(int64_t, int64_t, const float*, int64_t, float*, int64_t) {}
#endif

}  // namespace cpu
}  // namespace ghostkernels

#if GK_AVX512_KERNELS
GK_AVX512_REGION_END
#endif
