// The check every CPU binding of a ghost_module-like op makes after the shared shape checks: CPU tensors of a dtype
// the CPU kernels have (float64, float32, bfloat16). One definition for op_ghost_module.cpp, op_ghost_module_gated.cpp
// and op_dfc_gate.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace ghostkernels {
namespace cpu {

inline void check_cpu_op_dtype(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": expected CPU tensors, got ", x.device());
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kDouble || t == at::kFloat || t == at::kBFloat16, op,
                   ": supported dtypes are float64, float32 and bfloat16, got ", t);
}

}  // namespace cpu
}  // namespace ghostkernels
