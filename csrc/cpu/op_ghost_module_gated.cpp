// ghostkernels::ghost_module_gated on the CPU: the binding. It checks the arguments (check_gated_inputs, shared with
// the CUDA binding) and runs ghost_forward (launch_ghost_forward.cpp) with the map, which the AVX-512 kernel
// multiplies into both halves as it stores them. The op's backward (ghost_module_gated_backward) is composed of
// other ops for every device (csrc/gated_backward.cpp).
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include "../ghost_module_check.h"
#include "entry_points.h"
#include "util_cpu_checks.h"

namespace ghostkernels {
namespace {

constexpr const char* kOp = "ghostkernels::ghost_module_gated (CPU)";

at::Tensor ghost_module_gated_cpu(const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
                                  const at::Tensor& w_cheap, const at::Tensor& b_cheap, int64_t out_channels,
                                  c10::string_view act, const at::Tensor& gate) {
  const GhostDims d = check_gated_inputs(kOp, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act, gate);
  cpu::check_cpu_op_dtype(kOp, x);
  return cpu::ghost_forward(x, w_primary, b_primary, w_cheap, b_cheap, d, at::Tensor(), at::Tensor(), gate);
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) { m.impl("ghost_module_gated", &ghost_module_gated_cpu); }

}  // namespace ghostkernels
