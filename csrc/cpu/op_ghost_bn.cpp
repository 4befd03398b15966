// The CPU bindings of the train-mode BatchNorm passes (ghost_bn_* in csrc/ghost_module.cpp): each checks its
// arguments (ghost_module_check.h, shared with the CUDA binding; CPU tensors of a supported dtype) and hands them to
// its launcher (entry_points.h): bn_conv1x1_stats (launch_bn_conv1x1_stats.cpp), bn_cheap_stats, bn_forward_out and
// bn_backward_reduce (launch_bn_z1_passes.cpp), ghost_backward with BN (launch_ghost_backward.cpp).
// The whole ATen API (tensor arithmetic of the composition in ghost_bn_train_local*), unlike the launchers, which
// take per-operator headers for the compile time.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <cmath>
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
// group), with the passes called directly (no dispatch) and the per-channel arithmetic between them in plain loops
// over the channel vectors: as ATen ops it was about forty small tensor ops per training step, 3-15 us each, which at
// batch 1 cost a late module more than its passes (bench/NOTES.md entry 48). The same formulas as train_bn.py, in
// the stats dtype; the compiler may fuse a multiply and an add, so results agree with the Python composition to
// rounding, not bitwise (tests/test_train_bn_ops.py).

at::ScalarType stats_dtype(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// A per-channel vector (a BN's weight or bias, a conv bias) as a contiguous tensor of the stats dtype; an absent one
// as the constant `fill` (affine=False: weight 1, bias 0; no conv bias: 0).
at::Tensor vector_or(const std::optional<at::Tensor>& t, int64_t channels, at::ScalarType sd, double fill) {
  if (given(t)) return t->to(sd).contiguous();
  return at::full({channels}, fill, at::TensorOptions().dtype(sd));
}

// invstd = 1 / sqrt(var + eps), as train_bn's rsqrt computes it (the division and the square root are correctly
// rounded, so the values are ATen's).
template <typename acc_t>
at::Tensor invstd_of(const at::Tensor& var, double eps) {
  const at::Tensor v = var.contiguous();
  at::Tensor invstd = at::empty({v.numel()}, v.options());
  const acc_t* vp = v.const_data_ptr<acc_t>();
  acc_t* out = invstd.mutable_data_ptr<acc_t>();
  const acc_t e = static_cast<acc_t>(eps);
  for (int64_t i = 0; i < v.numel(); ++i) out[i] = acc_t(1) / std::sqrt(vp[i] + e);
  return invstd;
}

// The mean of conv(x) without its bias (what the passes normalize; the op returns the mean with it, which is what
// running_mean tracks).
at::Tensor raw_mean(const at::Tensor& mean_with_bias, const std::optional<at::Tensor>& conv_bias) {
  return given(conv_bias) ? mean_with_bias - conv_bias->to(mean_with_bias.scalar_type()) : mean_with_bias.contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_local_cpu(
    const at::Tensor& x, const at::Tensor& w_primary, const std::optional<at::Tensor>& b_primary,
    const std::optional<at::Tensor>& bn_weight_primary, const std::optional<at::Tensor>& bn_bias_primary,
    double eps_primary, const at::Tensor& w_cheap, const std::optional<at::Tensor>& b_cheap,
    const std::optional<at::Tensor>& bn_weight_cheap, const std::optional<at::Tensor>& bn_bias_cheap,
    double eps_cheap, int64_t out_channels, c10::string_view act, bool keep_z1) {
  const at::ScalarType sd = stats_dtype(x);
  const at::Tensor w1 = w_primary.to(sd), w2 = w_cheap.to(sd);
  const int64_t init = w1.size(0), cheap = w2.size(0);
  const at::Tensor weight1 = vector_or(bn_weight_primary, init, sd, 1.0), bias1 = vector_or(bn_bias_primary, init, sd, 0.0);
  const at::Tensor weight2 = vector_or(bn_weight_cheap, cheap, sd, 1.0), bias2 = vector_or(bn_bias_cheap, cheap, sd, 0.0);
  auto [z1, mean1, var1] = conv1x1_stats_cpu(x, w1);
  const at::Tensor count =
      at::scalar_tensor(static_cast<double>(x.size(0) * x.size(2) * x.size(3)), x.options().dtype(sd));
  at::Tensor invstd1, invstd2;
  AT_DISPATCH_FLOATING_TYPES(sd, "ghost_bn_train_local", [&] { invstd1 = invstd_of<scalar_t>(var1, eps_primary); });
  auto [mean2, var2] = cheap_stats_cpu(z1, mean1, invstd1, weight1, bias1, w2, act);
  AT_DISPATCH_FLOATING_TYPES(sd, "ghost_bn_train_local", [&] { invstd2 = invstd_of<scalar_t>(var2, eps_cheap); });
  at::Tensor out =
      forward_out_cpu(z1, mean1, invstd1, weight1, bias1, w2, mean2, invstd2, weight2, bias2, out_channels, act);
  at::Tensor saved_z1 = keep_z1 ? z1 : z1.new_empty({0});
  if (given(b_primary)) mean1 = mean1 + b_primary->to(sd);
  if (given(b_cheap)) mean2 = mean2 + b_cheap->to(sd);
  return {out, mean1, var1, mean2, var2, count, saved_z1};
}

// The backward's per-channel arithmetic (train_bn.backward): BN2's batch means of dL/dy2 and dL/dy2 * xhat2 from the
// pass's sums over the count, and BN1's sums through dL/dx1 = grad_out + dwconv^T(dz2), linear in BN2's means:
//   via_j   = invstd2_j * weight2_j * (sums_c[2]_j - mean_dy2_j * sums_c[3]_j - mean_dy_xhat2_j * sums_c[4]_j)
//   via_x_j = the same with sums_c[5..7]
//   dbeta1_c = sums_p[0]_c + sum_{j of c} via_j,  dgamma1_c = sums_p[1]_c + sum_{j of c} via_x_j
// with j = c * mult + k the cheap channels made from primary channel c.
struct BackwardVectors {
  at::Tensor mean_dy1, mean_dy_xhat1, mean_dy2, mean_dy_xhat2, dgamma1, dbeta1, dgamma2, dbeta2;
};

template <typename acc_t>
BackwardVectors backward_vectors(const at::Tensor& sums_p, const at::Tensor& sums_c, const at::Tensor& invstd2,
                                 const at::Tensor& weight2, const at::Tensor& count_t, int64_t init, int64_t mult) {
  const int64_t cheap = init * mult;
  const auto opts = sums_c.options();
  BackwardVectors r{at::empty({init}, opts),  at::empty({init}, opts),  at::empty({cheap}, opts),
                    at::empty({cheap}, opts), at::empty({init}, opts),  at::empty({init}, opts),
                    at::empty({cheap}, opts), at::empty({cheap}, opts)};
  const at::Tensor p = sums_p.contiguous(), c = sums_c.contiguous();
  const acc_t* sp = p.const_data_ptr<acc_t>();
  const acc_t* sc = c.const_data_ptr<acc_t>();
  const acc_t* is2 = invstd2.const_data_ptr<acc_t>();
  const acc_t* w2 = weight2.const_data_ptr<acc_t>();
  const acc_t count = count_t.item<acc_t>();
  acc_t *md1 = r.mean_dy1.mutable_data_ptr<acc_t>(), *mdx1 = r.mean_dy_xhat1.mutable_data_ptr<acc_t>();
  acc_t *md2 = r.mean_dy2.mutable_data_ptr<acc_t>(), *mdx2 = r.mean_dy_xhat2.mutable_data_ptr<acc_t>();
  acc_t *dg1 = r.dgamma1.mutable_data_ptr<acc_t>(), *db1 = r.dbeta1.mutable_data_ptr<acc_t>();
  acc_t *dg2 = r.dgamma2.mutable_data_ptr<acc_t>(), *db2 = r.dbeta2.mutable_data_ptr<acc_t>();
  const auto row = [&](int64_t k) { return sc + k * cheap; };
  for (int64_t i = 0; i < init; ++i) {
    acc_t via_sum = 0, via_x_sum = 0;
    for (int64_t j = i * mult; j < (i + 1) * mult; ++j) {
      db2[j] = row(0)[j];
      dg2[j] = row(1)[j];
      md2[j] = row(0)[j] / count;
      mdx2[j] = row(1)[j] / count;
      const acc_t scale = is2[j] * w2[j];
      via_sum += scale * (row(2)[j] - md2[j] * row(3)[j] - mdx2[j] * row(4)[j]);
      via_x_sum += scale * (row(5)[j] - md2[j] * row(6)[j] - mdx2[j] * row(7)[j]);
    }
    db1[i] = sp[i] + via_sum;
    dg1[i] = sp[init + i] + via_x_sum;
    md1[i] = db1[i] / count;
    mdx1[i] = dg1[i] / count;
  }
  return r;
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
  const int64_t init = w1.size(0), cheap = w2.size(0), mult = cheap / init;
  TORCH_CHECK(mean_primary.scalar_type() == sd && var_primary.scalar_type() == sd && mean_cheap.scalar_type() == sd &&
                  var_cheap.scalar_type() == sd && count.scalar_type() == sd,
              "ghostkernels::ghost_bn_train_local_backward: the statistics must be ", sd, " (the forward's)");
  const at::Tensor weight1 = vector_or(bn_weight_primary, init, sd, 1.0), bias1 = vector_or(bn_bias_primary, init, sd, 0.0);
  const at::Tensor weight2 = vector_or(bn_weight_cheap, cheap, sd, 1.0), bias2 = vector_or(bn_bias_cheap, cheap, sd, 0.0);
  const at::Tensor mean1 = raw_mean(mean_primary, b_primary), mean2 = raw_mean(mean_cheap, b_cheap);
  at::Tensor invstd1, invstd2;
  AT_DISPATCH_FLOATING_TYPES(sd, "ghost_bn_train_local_backward", [&] {
    invstd1 = invstd_of<scalar_t>(var_primary, eps_primary);
    invstd2 = invstd_of<scalar_t>(var_cheap, eps_cheap);
  });
  // A 1-D saved_z1: the forward did not keep z1, so it is recomputed.
  const at::Tensor z1 = saved_z1.dim() == 4 ? saved_z1 : std::get<0>(conv1x1_stats_cpu(x, w1));
  const at::Tensor go = grad_out.to(x.scalar_type());
  auto [sums_p, sums_c] = backward_reduce_cpu(go, z1, mean1, invstd1, weight1, bias1, w2, mean2, invstd2, weight2,
                                              bias2, out_channels, act);
  BackwardVectors v;
  AT_DISPATCH_FLOATING_TYPES(sd, "ghost_bn_train_local_backward", [&] {
    v = backward_vectors<scalar_t>(sums_p, sums_c, invstd2, weight2, count, init, mult);
  });
  auto [grad_x, grad_w1, grad_w2] =
      backward_cpu(go, x, z1, w1, mean1, invstd1, weight1, bias1, v.mean_dy1, v.mean_dy_xhat1, w2, mean2, invstd2,
                   weight2, bias2, v.mean_dy2, v.mean_dy_xhat2, out_channels, act);
  return {grad_x, grad_w1, v.dgamma1, v.dbeta1, grad_w2, v.dgamma2, v.dbeta2};
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
