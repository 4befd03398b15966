// The check every CPU binding makes of its main input after the op's own contract checks: a CPU tensor of a dtype
// the CPU kernels have (float64, float32, bfloat16; no float16 path).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace ghostkernels {
namespace cpu {

inline void check_cpu_input(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": expected CPU tensors, got ", x.device());
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kDouble || t == at::kFloat || t == at::kBFloat16, op,
                   ": supported dtypes are float64, float32 and bfloat16, got ", t);
}

}  // namespace cpu
}  // namespace ghostkernels
