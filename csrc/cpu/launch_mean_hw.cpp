// The global average pooling (and flatten) of ghostkernels::chain's mean_hw step on the CPU (mean_hw in
// entry_points.h): [N, C, H, W] -> [N, C], each plane's mean: float32 and bfloat16 on the AVX-512 plane sums
// (kernel_plane_sums_avx512.h) where the CPU has them, else a plain loop over contiguous planes.
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "entry_points.h"
#include "kernel_plane_sums_avx512.h"
#include "util_bf16_bits.h"
#include "util_kernel_choice.h"

namespace ghostkernels {
namespace cpu {
namespace {

// y[p] = mean of plane p of x (contiguous), accumulated in the op math type as ATen's adaptive average pooling does.
// (bfloat16 as raw words, util_bf16_bits.h, so that the loop vectorizes.)
template <typename scalar_t>
void plane_means(const scalar_t* x, scalar_t* y, int64_t planes, int64_t HW) {
  using acc_t = at::opmath_type<scalar_t>;
  using raw_t = cpu::raw_type<scalar_t>;
  const raw_t* xp = reinterpret_cast<const raw_t*>(x);
  raw_t* yp = reinterpret_cast<raw_t*>(y);
  // Grains of ~16K elements: GhostNet's 960 planes of 7x7 at batch 1 stay on one thread.
  at::parallel_for(0, planes, std::max<int64_t>(1, 16384 / HW), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const raw_t* plane = xp + p * HW;
      acc_t s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t q = 0; q < HW; ++q) s += cpu::widen<acc_t>(plane[q]);
      yp[p] = cpu::narrow<raw_t>(s / static_cast<acc_t>(HW));
    }
  });
}

}  // namespace

at::Tensor mean_hw(const at::Tensor& x_in) {
  TORCH_CHECK_VALUE(x_in.dim() == 4, "mean_hw: x must be 4-D [N, C, H, W], got shape ", x_in.sizes());
  TORCH_CHECK_VALUE(x_in.size(2) * x_in.size(3) > 0, "mean_hw: x has an empty ", x_in.size(2), "x", x_in.size(3),
                    " image");
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty({x.size(0), x.size(1)}, x.options());
  const int64_t planes = x.size(0) * x.size(1), HW = x.size(2) * x.size(3);
  const auto t = x.scalar_type();
  if ((t == at::kFloat || t == at::kBFloat16) &&
      use_avx512_kernel(cpu_kernel_knob(), avx512_plane_sums_available(),
                        [] { return std::string("this CPU lacks AVX-512 F/BW/VL/DQ"); })) {
    // kernel_plane_sums_avx512.h (the loop below spends most of a 7x7 plane's time outside its adds).
    std::vector<float> sums(planes);
    at::parallel_for(0, planes, std::max<int64_t>(1, 16384 / HW), [&](int64_t p0, int64_t p1) {
      avx512_plane_sums(t == at::kBFloat16, x.const_data_ptr(), HW, p0, p1, sums.data());
      if (t == at::kFloat) {
        float* yp = y.mutable_data_ptr<float>();
        for (int64_t p = p0; p < p1; ++p) yp[p] = sums[p] / static_cast<float>(HW);
      } else {
        uint16_t* yp = reinterpret_cast<uint16_t*>(y.mutable_data_ptr<at::BFloat16>());
        for (int64_t p = p0; p < p1; ++p) yp[p] = cpu::narrow<uint16_t>(sums[p] / static_cast<float>(HW));
      }
    });
    return y;
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "ghostkernels_chain_mean_hw", [&] {
    plane_means<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), x.size(0) * x.size(1),
                          x.size(2) * x.size(3));
  });
  return y;
}

}  // namespace cpu
}  // namespace ghostkernels
