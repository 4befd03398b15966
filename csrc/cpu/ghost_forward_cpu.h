// The CPU forward of ghostkernels::ghost_module as a C++ function, for the other CPU ops that run Ghost modules
// (op_ghost_bottleneck.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include "../ghost_module_check.h"

namespace ghostkernels {
namespace cpu {

// out = ghost_module(x, ...) for inputs already checked by check_ghost_inputs (d is what it returned) and on the
// CPU, plus `residual` when it is defined (a tensor of the output's shape and dtype, added after the activation).
// The output is written into `into` when that is defined (a tensor of the output's shape and dtype, e.g. a slice of
// a larger batch), else into a new tensor in the contract's memory format from the CPU block pool (util_tensor_pool.h).
at::Tensor ghost_forward(const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
                         const at::Tensor& w_cheap, const at::Tensor& b_cheap, const GhostDims& d,
                         const at::Tensor& residual, const at::Tensor& into);

}  // namespace cpu
}  // namespace ghostkernels
