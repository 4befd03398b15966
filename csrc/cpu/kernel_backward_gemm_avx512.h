// Plain GEMMs on the AVX-512 forward kernel's register tile (kernel_ghost_forward_avx512.h), for the
// Ghost-module backward pass (launch_ghost_backward.cpp), whose three 1x1 GEMMs per work item are small and were the
// slowest part of it when run by the BLAS; the inference ops' float32 1x1 convolution (launch_pointwise_conv.cpp)
// runs on avx512_sgemm_nn too, and the DFC gate's 1x1 conv on either (kernel_dfc_gate_avx512.cpp). Launch functions,
// no torch. Row-major, leading dimensions in elements; available
// where avx512_forward_available(false, 1) is.
#pragma once

#include <cstdint>

namespace ghostkernels {
namespace cpu {

// C[m][n] = (accumulate ? C[m][n] : 0) + sum_k A[m][k] * B[k][n]
void avx512_sgemm_nn(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                     float* C, int64_t ldc, bool accumulate);
// The same in float32 from bfloat16 operands on the bf16 dot product (only where the CPU has AVX-512 BF16:
// avx512_forward_bf16_dot()): A [M][K] and B [K][N] are 32-bit words, each two bfloat16 of neighbouring k (low half
// first: k = 2w, 2w + 1), so K counts words; C is float32.
void avx512_bf16_pairs_gemm_nn(int64_t M, int64_t N, int64_t K, const uint32_t* A, int64_t lda, const uint32_t* B,
                               int64_t ldb, float* C, int64_t ldc, bool accumulate);
// dst[c][r] = src[r][c] for r < rows, c < cols (16 x 16 blocks transposed in registers).
void avx512_transpose(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst, int64_t ldd);

}  // namespace cpu
}  // namespace ghostkernels
