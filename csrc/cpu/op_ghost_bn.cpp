// The CPU bindings of the train-mode BatchNorm passes (ghost_bn_* in csrc/ghost_module.cpp): each checks its
// arguments (ghost_module_check.h, shared with the CUDA binding; CPU tensors of a supported dtype) and hands them to
// its launcher (entry_points.h): bn_conv1x1_stats (launch_bn_conv1x1_stats.cpp), bn_cheap_stats, bn_forward_out and
// bn_backward_reduce (launch_bn_z1_passes.cpp), ghost_backward with BN (launch_ghost_backward.cpp).
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
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

cpu::BnStage stage(const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& weight,
                   const at::Tensor& bias) {
  return {mean.contiguous(), invstd.contiguous(), weight.contiguous(), bias.contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv1x1_stats_cpu(const at::Tensor& x, const at::Tensor& w_primary) {
  constexpr const char* op = "ghostkernels::ghost_bn_conv1x1_stats (CPU)";
  const GhostDims d = check_bn_conv1x1_inputs(op, x, w_primary);
  cpu::check_cpu_op_dtype(op, x);
  return cpu::bn_conv1x1_stats(x, w_primary, d);
}

std::tuple<at::Tensor, at::Tensor> cheap_stats_cpu(const at::Tensor& z1, const at::Tensor& mean1,
                                                   const at::Tensor& invstd1, const at::Tensor& weight1,
                                                   const at::Tensor& bias1, const at::Tensor& w_cheap,
                                                   c10::string_view act) {
  constexpr const char* op = "ghostkernels::ghost_bn_cheap_stats (CPU)";
  const GhostDims d = check_bn_z1_inputs(
      op, z1, w_cheap, -1, act,
      {{&mean1, "mean_primary"}, {&invstd1, "invstd_primary"}, {&weight1, "weight_primary"}, {&bias1, "bias_primary"}},
      {});
  cpu::check_cpu_op_dtype(op, z1);
  return cpu::bn_cheap_stats(z1, stage(mean1, invstd1, weight1, bias1), w_cheap, d);
}

at::Tensor forward_out_cpu(const at::Tensor& z1, const at::Tensor& mean1, const at::Tensor& invstd1,
                           const at::Tensor& weight1, const at::Tensor& bias1, const at::Tensor& w_cheap,
                           const at::Tensor& mean2, const at::Tensor& invstd2, const at::Tensor& weight2,
                           const at::Tensor& bias2, int64_t out_channels, c10::string_view act) {
  constexpr const char* op = "ghostkernels::ghost_bn_forward_out (CPU)";
  const GhostDims d = check_bn_two_stage_inputs(op, z1, mean1, invstd1, weight1, bias1, w_cheap, mean2, invstd2,
                                                weight2, bias2, out_channels, act);
  cpu::check_cpu_op_dtype(op, z1);
  return cpu::bn_forward_out(z1, stage(mean1, invstd1, weight1, bias1), w_cheap,
                             stage(mean2, invstd2, weight2, bias2), d);
}

std::tuple<at::Tensor, at::Tensor> backward_reduce_cpu(
    const at::Tensor& grad_out, const at::Tensor& z1, const at::Tensor& mean1, const at::Tensor& invstd1,
    const at::Tensor& weight1, const at::Tensor& bias1, const at::Tensor& w_cheap, const at::Tensor& mean2,
    const at::Tensor& invstd2, const at::Tensor& weight2, const at::Tensor& bias2, int64_t out_channels,
    c10::string_view act) {
  constexpr const char* op = "ghostkernels::ghost_bn_backward_reduce (CPU)";
  const GhostDims d = check_bn_two_stage_inputs(op, z1, mean1, invstd1, weight1, bias1, w_cheap, mean2, invstd2,
                                                weight2, bias2, out_channels, act);
  check_bn_grad_out(op, grad_out, z1, d);
  cpu::check_cpu_op_dtype(op, z1);
  return cpu::bn_backward_reduce(grad_out, z1, stage(mean1, invstd1, weight1, bias1), w_cheap,
                                 stage(mean2, invstd2, weight2, bias2), d);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& z1, const at::Tensor& w_primary,
    const at::Tensor& mean1, const at::Tensor& invstd1, const at::Tensor& weight1, const at::Tensor& bias1,
    const at::Tensor& mean_dy1, const at::Tensor& mean_dy_xhat1, const at::Tensor& w_cheap, const at::Tensor& mean2,
    const at::Tensor& invstd2, const at::Tensor& weight2, const at::Tensor& bias2, const at::Tensor& mean_dy2,
    const at::Tensor& mean_dy_xhat2, int64_t out_channels, c10::string_view act) {
  constexpr const char* op = "ghostkernels::ghost_bn_backward (CPU)";
  const GhostDims d =
      check_bn_backward_inputs(op, grad_out, x, z1, w_primary, mean1, invstd1, weight1, bias1, mean_dy1, mean_dy_xhat1,
                               w_cheap, mean2, invstd2, weight2, bias2, mean_dy2, mean_dy_xhat2, out_channels, act);
  cpu::check_cpu_op_dtype(op, x);
  cpu::BnBackwardArgs bn{z1,      stage(mean1, invstd1, weight1, bias1), stage(mean2, invstd2, weight2, bias2),
                         mean_dy1, mean_dy_xhat1,                        mean_dy2,
                         mean_dy_xhat2};
  // The bias arguments only give the (meaningless, dropped) bias gradients their shapes.
  auto g = cpu::ghost_backward(grad_out, x, w_primary, mean1, w_cheap, mean2, d, &bn);
  return {std::get<0>(g), std::get<1>(g), std::get<3>(g)};
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) {
  m.impl("ghost_bn_conv1x1_stats", &conv1x1_stats_cpu);
  m.impl("ghost_bn_cheap_stats", &cheap_stats_cpu);
  m.impl("ghost_bn_forward_out", &forward_out_cpu);
  m.impl("ghost_bn_backward_reduce", &backward_reduce_cpu);
  m.impl("ghost_bn_backward", &backward_cpu);
}

}  // namespace ghostkernels
