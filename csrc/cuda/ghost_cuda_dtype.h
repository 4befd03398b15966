// The CUDA kernels' dtype of a tensor, raising for dtypes they do not have: one definition for the bindings
// (ghost_module_cuda.cpp, ghost_gate_cuda.cpp). Torch headers only, no CUDA runtime: the bindings' own files.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "ghost_cuda.h"

namespace ghostkernels {
namespace cuda {

inline DType cuda_dtype(const char* op, const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default:
      TORCH_CHECK_TYPE(false, op, ": supported dtypes on CUDA are float32, float16 and bfloat16, got ",
                       x.scalar_type());
  }
}

}  // namespace cuda
}  // namespace ghostkernels
