// Just enough of the CUDA device environment, on the host, to run the kernels of csrc/cuda unchanged in a plain C++
// program: so that their indexing, tiling, halos, barriers and reductions can be tested on a machine without a GPU.
//
// Include this before any kernel header. What it emulates, and how faithfully:
//   - a block's 256 threads are cooperative fibers (ghost_cuda_emulator.cpp) that run until they reach a barrier;
//     __syncthreads() waits for every thread of the block, a warp shuffle for the 32 lanes of its warp. A barrier
//     reached by some threads of a block but not others (divergence, an early return) is reported as an error.
//     The scheduler can run the threads in ascending or descending order, so a missing barrier between a write and
//     a read of shared memory by different threads changes the result between the two orders.
//   - dynamic shared memory is one buffer per block, filled with a NaN pattern before the block starts (reads of
//     never-written shared memory then poison the output);
//   - cp.async is a synchronous copy (same zero-fill rule), so its asynchrony is not tested;
//   - wmma fragments hold the whole 16x16 tile in every lane (each lane computes the full product, in float32 from
//     the exact float16/bfloat16/tf32 operands), which gives the same values as the tensor cores up to the order
//     of the float32 accumulation;
//   - __ldg is a plain load, __float2int_rz a truncation.
// Not emulated: timing, occupancy, bank conflicts, memory coalescing, anything about the real hardware.
#pragma once

#define GHOSTKERNELS_HOST_EMULATION 1

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace ghostkernels {
namespace emulation {

extern uint3 thread_index;  // of the fiber now running
extern uint3 block_index;

unsigned char* block_shared_memory();
void block_barrier();
float warp_shuffle_xor(float v, int lane_mask);

inline void copy_or_zero(void* dst, const void* src, bool valid, int bytes) {
  if (valid)
    std::memcpy(dst, src, size_t(bytes));
  else
    std::memset(dst, 0, size_t(bytes));
}

}  // namespace emulation
}  // namespace ghostkernels

#define threadIdx (::ghostkernels::emulation::thread_index)
#define blockIdx (::ghostkernels::emulation::block_index)

inline void __syncthreads() { ::ghostkernels::emulation::block_barrier(); }
inline float __shfl_xor_sync(unsigned /*mask*/, float v, int lane_mask) {
  return ::ghostkernels::emulation::warp_shuffle_xor(v, lane_mask);
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline int __float2int_rz(float f) { return int(f); }
using std::max;
using std::min;

// wmma with every lane holding the whole fragment.
namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

template <typename T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};

template <typename Use, int M, int N, int K>
struct shape;
template <int M, int N, int K>
struct shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  using element_type = typename storage<T>::type;
  static constexpr int rows = shape<Use, M, N, K>::rows, cols = shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  element_type x[num_elements];  // x[r * cols + c]
};

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f,
                      const typename fragment<Use, M, N, K, T, Layout>::element_type* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  constexpr bool row = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = row ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) {
      if (layout == mem_row_major)
        p[r * ldm + c] = f.x[r * N + c];
      else
        p[c * ldm + r] = f.x[r * N + c];
    }
}

template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float>& f, float v) {
  for (int t = 0; t < M * N; ++t) f.x[t] = v;
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float s = c.x[m * N + n];
      for (int k = 0; k < K; ++k) s += to_float(a.x[m * K + k]) * to_float(b.x[k * N + n]);
      out[m * N + n] = s;
    }
  std::memcpy(d.x, out, sizeof(out));
}

// Round to 10 mantissa bits, ties away from zero, as cvt.rna.tf32.f32 does for finite values.
inline float __float_to_tf32(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits += 0x1000u;
  bits &= ~0x1FFFu;
  float r;
  std::memcpy(&r, &bits, 4);
  return r;
}

}  // namespace wmma
}  // namespace nvcuda
