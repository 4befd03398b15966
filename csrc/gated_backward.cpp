// The backward ops of GhostNetV2's gate, ghostkernels::ghost_module_gated_backward and dfc_gate_backward, composed of
// other ops and registered once for every device (CompositeExplicitAutograd): the schemas are in ghost_module.cpp,
// the autograd formulas that call them in ghostkernels/ops/registration.py.
//
// Why composed: the gate's map is a quarter-resolution tensor, so its backward (three convolution backwards, the
// pooling's and the sigmoid's) is small next to the Ghost module's, which these call through the dispatcher:
// ghost_module (the fused forward, to recompute the ungated output) and ghost_module_backward (the fused backward) of
// whatever device the tensors are on. Nothing of the forward is saved but its inputs (and the small map itself).
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/avg_pool2d.h>
#include <ATen/ops/avg_pool2d_backward.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/upsample_nearest2d.h>
#include <ATen/ops/upsample_nearest2d_backward.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <tuple>

#include "ghost_module_check.h"

namespace ghostkernels {
namespace {

using Grads5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

at::Tensor ghost_module_op(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                           const at::Tensor& b2, int64_t out_channels, c10::string_view act) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ghostkernels::ghost_module", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&, c10::SymInt, c10::string_view)>();
  return op.call(x, w1, b1, w2, b2, c10::SymInt(out_channels), act);
}

Grads5 ghost_module_backward_op(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1,
                                const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, int64_t out_channels,
                                c10::string_view act) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ghostkernels::ghost_module_backward", "")
                             .typed<Grads5(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, c10::SymInt, c10::string_view)>();
  return op.call(grad_out, x, w1, b1, w2, b2, c10::SymInt(out_channels), act);
}

// out = y * up(gate) with y = ghost_module(x, ...), up the nearest upsampling to (H, W): grad_y = grad_out * up(gate)
// goes through the Ghost module's own backward, and grad_gate = up^T(grad_out * y) sums each map element's pixels.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ghost_module_gated_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
    const at::Tensor& w_cheap, const at::Tensor& b_cheap, int64_t out_channels, c10::string_view act,
    const at::Tensor& gate) {
  constexpr const char* kOp = "ghostkernels::ghost_module_gated_backward";
  const GhostDims d =
      check_gated_inputs(kOp, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act, gate);
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == d.N && grad_out.size(1) == d.oc &&
                        grad_out.size(2) == d.H && grad_out.size(3) == d.W,
                    kOp, ": grad_out must be [", d.N, ", ", d.oc, ", ", d.H, ", ", d.W, "], got ", grad_out.sizes());
  check_like_x(kOp, x, grad_out, "grad_out");
  const at::Tensor y = ghost_module_op(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act);
  const at::Tensor up = at::upsample_nearest2d(gate, {d.H, d.W});
  const at::Tensor grad_gate =
      at::upsample_nearest2d_backward(grad_out.mul(y), {d.H, d.W}, gate.sizes()).contiguous();
  const at::Tensor grad_y = grad_out.mul(up).contiguous(output_memory_format(x));
  auto [gx, gw1, gb1, gw2, gb2] =
      ghost_module_backward_op(grad_y, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act);
  return {gx, gw1, gb1, gw2, gb2, grad_gate};
}

// gate = sigmoid(z3), z3 = dw_v(z2), z2 = dw_h(z1), z1 = conv1x1(p), p = avg_pool2x2(x): z1 and z2 are recomputed,
// sigmoid's derivative is gate * (1 - gate), and each convolution's backward gives its input's, weight's and bias's
// gradients.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dfc_gate_backward(
    const at::Tensor& grad_gate, const at::Tensor& gate, const at::Tensor& x, const at::Tensor& w_reduce,
    const at::Tensor& b_reduce, const at::Tensor& w_h, const at::Tensor& b_h, const at::Tensor& w_v,
    const at::Tensor& b_v) {
  constexpr const char* kOp = "ghostkernels::dfc_gate_backward";
  const GateDims d = check_dfc_gate_inputs(kOp, x, w_reduce, b_reduce, w_h, b_h, w_v, b_v);
  for (const at::Tensor* t : {&grad_gate, &gate}) {
    TORCH_CHECK_VALUE(t->dim() == 4 && t->size(0) == d.N && t->size(1) == d.O && t->size(2) == d.Hg &&
                          t->size(3) == d.Wg,
                      kOp, ": grad_gate and gate must be [", d.N, ", ", d.O, ", ", d.Hg, ", ", d.Wg, "], got ",
                      t->sizes());
    check_like_x(kOp, x, *t, t == &gate ? "gate" : "grad_gate");
  }
  const at::Tensor p = at::avg_pool2d(x, {2, 2}, {2, 2});
  const at::Tensor z1 = at::conv2d(p, w_reduce, b_reduce);
  const at::Tensor z2 =
      at::conv2d(z1, w_h, b_h, at::IntArrayRef{1, 1}, at::IntArrayRef{0, d.KH / 2}, at::IntArrayRef{1, 1}, d.O);
  const at::Tensor g3 = grad_gate.mul(gate).mul(gate.neg().add(1));  // grad * gate * (1 - gate)
  const auto conv_backward = [&](const at::Tensor& grad, const at::Tensor& input, const at::Tensor& w,
                                 c10::IntArrayRef padding, int64_t groups) {
    return at::convolution_backward(grad, input, w, c10::OptionalIntArrayRef(c10::IntArrayRef{w.size(0)}), {1, 1},
                                    padding, {1, 1}, /*transposed=*/false, {0, 0}, groups, {true, true, true});
  };
  auto [g2, gwv, gbv] = conv_backward(g3, z2, w_v, {d.KV / 2, 0}, d.O);
  auto [g1, gwh, gbh] = conv_backward(g2, z1, w_h, {0, d.KH / 2}, d.O);
  auto [gp, gw1, gb1] = conv_backward(g1, p, w_reduce, {0, 0}, 1);
  const at::Tensor gx = at::avg_pool2d_backward(gp, x, {2, 2}, {2, 2}, {0, 0}, /*ceil_mode=*/false,
                                                /*count_include_pad=*/true, std::nullopt)
                            .contiguous(output_memory_format(x));
  return {gx, gw1.contiguous(), gb1.contiguous(), gwh.contiguous(), gbh.contiguous(), gwv.contiguous(),
          gbv.contiguous()};
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CompositeExplicitAutograd, m) {
  m.impl("ghost_module_gated_backward", &ghost_module_gated_backward);
  m.impl("dfc_gate_backward", &dfc_gate_backward);
}

}  // namespace ghostkernels
