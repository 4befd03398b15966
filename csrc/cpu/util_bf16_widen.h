// bfloat16 matrix products and convolutions of the generic kernels, widened to float32 where ATen's own bfloat16
// ones would be slow.
//
// Why: on x86 CPUs without AVX-512, ATen has no fast bfloat16 GEMM (oneDNN's bfloat16 path wants AVX-512), so
// at::mm / at::addmm / at::conv2d on bfloat16 tensors fall back to scalar loops (cpublas_gemm_impl, and im2col
// with unfolded2d_copy for convolutions). Measured on an AMD EPYC (Zen 3, AVX2) with 2 threads: GhostNet's
// bfloat16 forward took 8-13x its float32 time, eager and fused alike (bench/NOTES.md entry 61).
// Widened: the operands are converted to float32 (exactly; every bfloat16 is a float), the float32 op runs on MKL
// or oneDNN's AVX2 kernels, and the result is rounded to bfloat16 once, which is what ATen's bfloat16 convolution
// does too (float accumulation, one rounding of the output), so results differ from eager only in summation order.
//
// GHOSTKERNELS_CPU_BF16_WIDEN (read at every call): "auto" (default) widens on x86 CPUs without AVX-512
// F/BW/VL/DQ, "1" always (the tests run both ways on every machine), "0" never.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/conv2d.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

#include "util_cpu_features.h"

namespace ghostkernels {
namespace cpu {

// Whether a generic kernel's bfloat16 GEMM or convolution on `x` runs widened to float32.
inline bool widen_bf16(const at::Tensor& x) {
  if (x.scalar_type() != at::kBFloat16) return false;
  const char* knob = std::getenv("GHOSTKERNELS_CPU_BF16_WIDEN");
  if (knob != nullptr && std::strcmp(knob, "auto") != 0) {
    TORCH_CHECK(std::strcmp(knob, "0") == 0 || std::strcmp(knob, "1") == 0,
                "GHOSTKERNELS_CPU_BF16_WIDEN must be auto, 0 or 1, got '", knob, "'");
    return knob[0] == '1';
  }
#if defined(__x86_64__) || defined(_M_X64)
  return !cpu_has_avx512(false);
#else
  return false;  // elsewhere ATen's bfloat16 path (e.g. Arm's bf16 instructions through oneDNN) is left to it
#endif
}

// t as float32 if it is a defined bfloat16 tensor, else t itself.
inline at::Tensor as_float(const at::Tensor& t) {
  return t.defined() && t.scalar_type() == at::kBFloat16 ? t.to(at::kFloat) : t;
}

// at::conv2d, widened (see above) where widen_bf16(x).
inline at::Tensor conv2d_maybe_widened(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                       at::IntArrayRef stride = {1, 1}, at::IntArrayRef padding = {0, 0},
                                       at::IntArrayRef dilation = {1, 1}, int64_t groups = 1) {
  if (!widen_bf16(x)) return at::conv2d(x, w, b, stride, padding, dilation, groups);
  return at::conv2d(as_float(x), as_float(w), as_float(b), stride, padding, dilation, groups).to(at::kBFloat16);
}

}  // namespace cpu
}  // namespace ghostkernels
