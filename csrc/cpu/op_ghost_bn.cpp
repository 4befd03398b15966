// The CPU bindings of the train-mode BatchNorm passes (ghost_bn_* in csrc/ghost_module.cpp): each checks its
// arguments (ghost_module_check.h, shared with the CUDA binding; CPU tensors of a supported dtype) and hands them to
// its launcher (entry_points.h): bn_conv1x1_stats (launch_bn_conv1x1_stats.cpp), bn_cheap_stats, bn_forward_out and
// bn_backward_reduce (launch_bn_z1_passes.cpp), ghost_backward with BN (launch_ghost_backward.cpp).
// The whole ATen API (tensor arithmetic of the composition in ghost_bn_train_local*), unlike the launchers, which
// take per-operator headers for the compile time.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <optional>
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

// ghost_bn_train_local and its backward: ghostkernels/ops/train_bn.py's composition for group "" (no process
// group), op for op, with the passes called directly (no dispatch) and the per-channel arithmetic in ATen from C++.

at::ScalarType stats_dtype(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// A BN's weight or bias in the stats dtype (that of `like`); an absent one (affine=False) as its constant.
at::Tensor affine(const std::optional<at::Tensor>& t, const at::Tensor& like, double fill) {
  return given(t) ? t->to(like.scalar_type()) : at::full(like.sizes(), fill, like.options());
}

// The mean of conv(x) without its bias (what the passes normalize).
at::Tensor raw_mean(const at::Tensor& mean_with_bias, const std::optional<at::Tensor>& conv_bias) {
  return given(conv_bias) ? mean_with_bias - conv_bias->to(mean_with_bias.scalar_type()) : mean_with_bias;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_local_cpu(
    const at::Tensor& x, const at::Tensor& w_primary, const std::optional<at::Tensor>& b_primary,
    const std::optional<at::Tensor>& bn_weight_primary, const std::optional<at::Tensor>& bn_bias_primary,
    double eps_primary, const at::Tensor& w_cheap, const std::optional<at::Tensor>& b_cheap,
    const std::optional<at::Tensor>& bn_weight_cheap, const std::optional<at::Tensor>& bn_bias_cheap,
    double eps_cheap, int64_t out_channels, c10::string_view act, bool keep_z1) {
  const at::ScalarType sd = stats_dtype(x);
  const at::Tensor w1 = w_primary.to(sd), w2 = w_cheap.to(sd);
  auto [z1, mean1, var1] = conv1x1_stats_cpu(x, w1);
  const at::Tensor count =
      at::scalar_tensor(static_cast<double>(x.size(0) * x.size(2) * x.size(3)), x.options().dtype(sd));
  const at::Tensor invstd1 = at::rsqrt(var1 + eps_primary);
  const at::Tensor weight1 = affine(bn_weight_primary, mean1, 1.0), bias1 = affine(bn_bias_primary, mean1, 0.0);
  auto [mean2, var2] = cheap_stats_cpu(z1, mean1, invstd1, weight1, bias1, w2, act);
  const at::Tensor invstd2 = at::rsqrt(var2 + eps_cheap);
  const at::Tensor weight2 = affine(bn_weight_cheap, mean2, 1.0), bias2 = affine(bn_bias_cheap, mean2, 0.0);
  at::Tensor out =
      forward_out_cpu(z1, mean1, invstd1, weight1, bias1, w2, mean2, invstd2, weight2, bias2, out_channels, act);
  at::Tensor saved_z1 = keep_z1 ? z1 : z1.new_empty({0});
  if (given(b_primary)) mean1 = mean1 + b_primary->to(sd);
  if (given(b_cheap)) mean2 = mean2 + b_cheap->to(sd);
  return {out, mean1, var1, mean2, var2, count, saved_z1};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_local_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w_primary,
    const std::optional<at::Tensor>& b_primary, const std::optional<at::Tensor>& bn_weight_primary,
    const std::optional<at::Tensor>& bn_bias_primary, double eps_primary, const at::Tensor& w_cheap,
    const std::optional<at::Tensor>& b_cheap, const std::optional<at::Tensor>& bn_weight_cheap,
    const std::optional<at::Tensor>& bn_bias_cheap, double eps_cheap, const at::Tensor& mean_primary,
    const at::Tensor& var_primary, const at::Tensor& mean_cheap, const at::Tensor& var_cheap, const at::Tensor& count,
    const at::Tensor& saved_z1, int64_t out_channels, c10::string_view act) {
  const at::ScalarType sd = stats_dtype(x);
  const at::Tensor w1 = w_primary.to(sd), w2 = w_cheap.to(sd);
  const int64_t init = w1.size(0), mult = w2.size(0) / init;
  const at::Tensor mean1 = raw_mean(mean_primary, b_primary), mean2 = raw_mean(mean_cheap, b_cheap);
  const at::Tensor invstd1 = at::rsqrt(var_primary + eps_primary), invstd2 = at::rsqrt(var_cheap + eps_cheap);
  const at::Tensor weight1 = affine(bn_weight_primary, mean1, 1.0), bias1 = affine(bn_bias_primary, mean1, 0.0);
  const at::Tensor weight2 = affine(bn_weight_cheap, mean2, 1.0), bias2 = affine(bn_bias_cheap, mean2, 0.0);
  // A 1-D saved_z1: the forward did not keep z1, so it is recomputed.
  const at::Tensor z1 = saved_z1.dim() == 4 ? saved_z1 : std::get<0>(conv1x1_stats_cpu(x, w1));
  const at::Tensor go = grad_out.to(x.scalar_type());
  auto [sums_p, sums_c] = backward_reduce_cpu(go, z1, mean1, invstd1, weight1, bias1, w2, mean2, invstd2, weight2,
                                              bias2, out_channels, act);
  // BN2's reductions and, through the linear dependence of dL/dx1 on them, BN1's sums (train_bn.backward).
  const at::Tensor mean_dy2 = sums_c[0] / count, mean_dy_xhat2 = sums_c[1] / count;
  const at::Tensor dz_scale2 = invstd2 * weight2;
  const at::Tensor via = dz_scale2 * (sums_c[2] - mean_dy2 * sums_c[3] - mean_dy_xhat2 * sums_c[4]);
  const at::Tensor via_x = dz_scale2 * (sums_c[5] - mean_dy2 * sums_c[6] - mean_dy_xhat2 * sums_c[7]);
  const at::Tensor dbeta1 = sums_p[0] + via.view({init, mult}).sum(1);
  const at::Tensor dgamma1 = sums_p[1] + via_x.view({init, mult}).sum(1);
  auto [grad_x, grad_w1, grad_w2] =
      backward_cpu(go, x, z1, w1, mean1, invstd1, weight1, bias1, dbeta1 / count, dgamma1 / count, w2, mean2,
                   invstd2, weight2, bias2, mean_dy2, mean_dy_xhat2, out_channels, act);
  return {grad_x, grad_w1, dgamma1, dbeta1, grad_w2, sums_c[1].clone(), sums_c[0].clone()};
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) {
  m.impl("ghost_bn_conv1x1_stats", &conv1x1_stats_cpu);
  m.impl("ghost_bn_cheap_stats", &cheap_stats_cpu);
  m.impl("ghost_bn_forward_out", &forward_out_cpu);
  m.impl("ghost_bn_backward_reduce", &backward_reduce_cpu);
  m.impl("ghost_bn_backward", &backward_cpu);
  m.impl("ghost_bn_train_local", &train_local_cpu);
  m.impl("ghost_bn_train_local_backward", &train_local_backward_cpu);
}

}  // namespace ghostkernels
