// Which CPU kernel runs a call: the AVX-512 kernels where they apply, else the generic ones.
//
// GHOSTKERNELS_CPU_KERNEL (read at every call): "auto" (default) takes the AVX-512 kernels where they apply,
// "generic" never does (the tests run both), "avx512" insists and raises where the CPU cannot run them.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace ghostkernels {
namespace cpu {

enum class CpuKernel { Auto, Generic, Avx512 };

inline CpuKernel cpu_kernel_knob() {
  const char* knob = std::getenv("GHOSTKERNELS_CPU_KERNEL");
  if (knob == nullptr || std::strcmp(knob, "auto") == 0) return CpuKernel::Auto;
  if (std::strcmp(knob, "generic") == 0) return CpuKernel::Generic;
  TORCH_CHECK(std::strcmp(knob, "avx512") == 0, "GHOSTKERNELS_CPU_KERNEL must be auto, generic or avx512, got '",
              knob, "'");
  return CpuKernel::Avx512;
}

// Whether to take an AVX-512 kernel that is `available` for this call; with the knob at "avx512" an unavailable
// one raises, naming why_not() (a reason such as "this CPU lacks AVX-512 BF16").
template <typename WhyNot>
bool use_avx512_kernel(CpuKernel knob, bool available, WhyNot&& why_not) {
  if (knob == CpuKernel::Generic) return false;
  TORCH_CHECK(available || knob != CpuKernel::Avx512, "GHOSTKERNELS_CPU_KERNEL=avx512, but ", why_not());
  return available;
}

}  // namespace cpu
}  // namespace ghostkernels
