// What the two Ghost-module launchers (launch_ghost_forward.cpp, launch_ghost_backward.cpp) share: whether a call
// takes the AVX-512 kernels, and the generic kernels' pieces: the 1x1 GEMM's input operand, row access into 4-D
// tensors, and the bands' compact planes (util_plane_ops.h describes them).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <string>

#include "kernel_ghost_forward_avx512.h"
#include "util_kernel_choice.h"

namespace ghostkernels {
namespace cpu {

// Whether a call takes the AVX-512 kernels (kernel_ghost_forward_avx512.h) for this dtype (bf16: bfloat16, else
// float32) and depthwise kernel size; with GHOSTKERNELS_CPU_KERNEL=avx512 a call they cannot run raises, saying why.
inline bool use_avx512(CpuKernel knob, bool bf16, int64_t K) {
  return use_avx512_kernel(knob, avx512_forward_available(bf16, K), [&] {
    return std::string("this CPU lacks AVX-512 F/BW/VL/DQ") +
           ", or the depthwise kernel size " + std::to_string(K) + " is not one of 1, 3, 5, 7";
  });
}

// The GEMM operand of g images from n0 on, rows [a0, a0 + na): a [C, g*na*W] matrix. A view where the memory
// allows it (one image; or whole channels_last images, whose pixels are contiguous); otherwise packed into `pack`.
inline at::Tensor input_matrix(const at::Tensor& x, int64_t n0, int64_t g, int64_t a0, int64_t na,
                               bool channels_last, const at::Tensor& pack) {
  const int64_t C = x.size(1), W = x.size(3), P = g * na * W;
  const at::Tensor xs = x.narrow(0, n0, g).narrow(2, a0, na);  // [g, C, na, W]
  if (channels_last && (g == 1 || na == x.size(2))) return xs.permute({0, 2, 3, 1}).reshape({P, C}).t();
  if (!channels_last && g == 1) return xs.reshape({C, P});
  at::Tensor packed = pack.narrow(0, 0, C * P).view({C, g, na, W});
  packed.copy_(xs.transpose(0, 1));
  return packed.view({C, P});
}

// Rows of a 4-D tensor; CL fixes the element stride along W at compile time where it is 1 (NCHW), so row loops
// vectorize.
template <typename T, bool CL>
struct RowAccess {
  T* data;
  int64_t sn, sc, sh, sw;
  explicit RowAccess(const at::Tensor& t)
      : data(static_cast<T*>(t.data_ptr())), sn(t.stride(0)), sc(t.stride(1)), sh(t.stride(2)), sw(t.stride(3)) {}
  T* row(int64_t n, int64_t c, int64_t h) const { return data + n * sn + c * sc + h * sh; }
  int64_t step() const { return CL ? sw : 1; }
};

// A band's compact planes (see util_plane_ops.h): image rows [top, top + rows), pitch W, p elements of slack on each
// side; channel planes are `stride` elements apart and plane data starts at offset p.
struct Planes {
  int64_t top, rows, W, p, stride;
};

// Fills the plane at `origin` (its first element, after the front slack): rows outside [a0, a1) and the slack are
// zero, and the in-image element of compact index q (counted from row a0) is f(q).
template <typename acc_t, typename F>
inline void fill_plane(acc_t* origin, const Planes& g, int64_t a0, int64_t a1, F&& f) {
  acc_t* first = origin + (a0 - g.top) * g.W;
  acc_t* last = origin + (a1 - g.top) * g.W;
  std::fill(origin - g.p, first, acc_t(0));
  const int64_t n = last - first;
  for (int64_t q = 0; q < n; ++q) first[q] = f(q);
  std::fill(last, origin + g.rows * g.W + g.p, acc_t(0));
}

}  // namespace cpu
}  // namespace ghostkernels
