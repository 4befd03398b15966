// What the two Ghost-module launchers (launch_ghost_forward.cpp, launch_ghost_backward.cpp) share: whether a call
// takes the AVX-512 kernels, and the generic kernels' pieces: the 1x1 GEMM's input operand, row access into 4-D
// tensors, and the bands' compact planes (util_plane_ops.h describes them).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <string>

#include "../ghost_module_check.h"
#include "kernel_backward_gemm_avx512.h"
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

// out = a . b, for a [M, K] contiguous, b [K, N] and out [M, N] contiguous, all of one dtype: on the AVX-512 float32
// GEMM (kernel_backward_gemm_avx512.h; on the small per-item products about twice the BLAS's rate in entry 8 of
// bench/NOTES.md, 0.9-1.15x MKL's on the Intel VM of entry 46) when `avx512` and the operands are float32 with unit column stride, else at::mm_out.
inline void matmul_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool avx512) {
  if (avx512 && a.scalar_type() == at::kFloat && b.stride(1) == 1 && out.is_contiguous() && a.is_contiguous()) {
    avx512_sgemm_nn(a.size(0), b.size(1), a.size(1), a.const_data_ptr<float>(), a.size(1), b.const_data_ptr<float>(),
                    b.stride(0), out.mutable_data_ptr<float>(), b.size(1), /*accumulate=*/false);
  } else {
    at::mm_out(out, a, b);
  }
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

// Copies between a dense 4-D tensor (NCHW, or channels_last: output_memory_format's two layouts) and a buffer of
// the accumulation type laid out [channel][image][rows * W]: plain loops on raw pointers, since a work item moves a
// few kilobytes and ATen's narrow + copy_ cost more per call than that (a quarter of the train-mode BN passes' time
// at GhostNet's 56x56 layers, measured with torch.profiler).
template <typename acc_t>
class RowCopy {
 public:
  explicit RowCopy(const at::Tensor& t) : t_(t) {
    const bool cl = output_memory_format(t) == at::MemoryFormat::ChannelsLast;
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t.scalar_type(), "ghostkernels_row_copy", [&] {
      if (cl) {
        gather_ = &gather<scalar_t, true>, scatter_ = &scatter<scalar_t, true>;
      } else {
        gather_ = &gather<scalar_t, false>, scatter_ = &scatter<scalar_t, false>;
      }
    });
  }
  // dst[((c - c0) * g + i) * nh * W + q] = t[n0 + i, c, h0 + q / W, q % W] for c in [c0, c0 + nc), i < g.
  void to_buffer(int64_t n0, int64_t g, int64_t c0, int64_t nc, int64_t h0, int64_t nh, acc_t* dst) const {
    gather_(t_, n0, g, c0, nc, h0, nh, dst);
  }
  // The reverse.
  void from_buffer(int64_t n0, int64_t g, int64_t c0, int64_t nc, int64_t h0, int64_t nh, const acc_t* src) const {
    scatter_(t_, n0, g, c0, nc, h0, nh, src);
  }

 private:
  template <typename scalar_t, bool CL>
  static void gather(const at::Tensor& t, int64_t n0, int64_t g, int64_t c0, int64_t nc, int64_t h0, int64_t nh,
                     acc_t* dst) {
    const RowAccess<const scalar_t, CL> a(t);
    const int64_t n = nh * t.size(3), step = a.step();
    for (int64_t c = 0; c < nc; ++c) {
      for (int64_t i = 0; i < g; ++i) {
        const scalar_t* src = a.row(n0 + i, c0 + c, h0);
        acc_t* d = dst + (c * g + i) * n;
        for (int64_t q = 0; q < n; ++q) d[q] = static_cast<acc_t>(src[q * step]);
      }
    }
  }
  template <typename scalar_t, bool CL>
  static void scatter(const at::Tensor& t, int64_t n0, int64_t g, int64_t c0, int64_t nc, int64_t h0, int64_t nh,
                      const acc_t* src) {
    const RowAccess<scalar_t, CL> a(t);
    const int64_t n = nh * t.size(3), step = a.step();
    for (int64_t c = 0; c < nc; ++c) {
      for (int64_t i = 0; i < g; ++i) {
        scalar_t* d = a.row(n0 + i, c0 + c, h0);
        const acc_t* s = src + (c * g + i) * n;
        for (int64_t q = 0; q < n; ++q) d[q * step] = static_cast<scalar_t>(s[q]);
      }
    }
  }
  using Fn = void (*)(const at::Tensor&, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, acc_t*);
  using CFn = void (*)(const at::Tensor&, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const acc_t*);
  at::Tensor t_;
  Fn gather_ = nullptr;
  CFn scatter_ = nullptr;
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
