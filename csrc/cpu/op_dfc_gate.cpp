// ghostkernels::dfc_gate on the CPU: the binding. It checks the arguments (check_dfc_gate_inputs, shared with the
// CUDA binding) and runs dfc_gate_map (launch_dfc_gate.cpp). The op's backward (dfc_gate_backward) is composed of
// ATen ops for every device (csrc/gated_backward.cpp).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../ghost_module_check.h"
#include "entry_points.h"
#include "util_cpu_checks.h"

namespace ghostkernels {
namespace {

constexpr const char* kOp = "ghostkernels::dfc_gate (CPU)";

at::Tensor dfc_gate_cpu(const at::Tensor& x, const at::Tensor& w_reduce, const at::Tensor& b_reduce,
                        const at::Tensor& w_h, const at::Tensor& b_h, const at::Tensor& w_v, const at::Tensor& b_v) {
  const GateDims d = check_dfc_gate_inputs(kOp, x, w_reduce, b_reduce, w_h, b_h, w_v, b_v);
  cpu::check_cpu_op_dtype(kOp, x);
  return cpu::dfc_gate_map(x, w_reduce, b_reduce, w_h, b_h, w_v, b_v, d, /*float_map=*/false);
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) { m.impl("dfc_gate", &dfc_gate_cpu); }

}  // namespace ghostkernels
