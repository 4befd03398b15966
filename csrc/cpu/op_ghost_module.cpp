// ghostkernels::ghost_module and ghostkernels::ghost_module_backward on the CPU: the bindings. Each checks its
// arguments (check_ghost_inputs, shared with the CUDA binding; CPU tensors of a supported dtype) and hands them to
// its launcher: ghost_forward (launch_ghost_forward.cpp) or ghost_backward (launch_ghost_backward.cpp).
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <tuple>

#include "../ghost_module_check.h"
#include "entry_points.h"
#include "util_cpu_checks.h"

namespace ghostkernels {
namespace {

constexpr const char* kForwardOp = "ghostkernels::ghost_module (CPU)";
constexpr const char* kBackwardOp = "ghostkernels::ghost_module_backward (CPU)";

using cpu::check_cpu_op_dtype;

at::Tensor ghost_module_cpu(const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
                            const at::Tensor& w_cheap, const at::Tensor& b_cheap, int64_t out_channels,
                            c10::string_view act) {
  const GhostDims d = check_ghost_inputs(kForwardOp, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act);
  check_cpu_op_dtype(kForwardOp, x);
  return cpu::ghost_forward(x, w_primary, b_primary, w_cheap, b_cheap, d, at::Tensor(), at::Tensor());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ghost_module_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
    const at::Tensor& w_cheap, const at::Tensor& b_cheap, int64_t out_channels, c10::string_view act) {
  const GhostDims d =
      check_ghost_inputs(kBackwardOp, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act);
  check_cpu_op_dtype(kBackwardOp, x);
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == d.N && grad_out.size(1) == d.oc &&
                        grad_out.size(2) == d.H && grad_out.size(3) == d.W,
                    kBackwardOp, ": grad_out must be [", d.N, ", ", d.oc, ", ", d.H, ", ", d.W, "], got ",
                    grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), kBackwardOp, ": grad_out dtype ",
                   grad_out.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == x.device(), kBackwardOp, ": grad_out is on ", grad_out.device(),
                    " but x is on ", x.device());
  return cpu::ghost_backward(grad_out, x, w_primary, b_primary, w_cheap, b_cheap, d);
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) {
  m.impl("ghost_module", &ghost_module_cpu);
  m.impl("ghost_module_backward", &ghost_module_backward_cpu);
}

}  // namespace ghostkernels
