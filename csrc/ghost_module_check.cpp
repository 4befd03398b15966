#include "ghost_module_check.h"

#include <c10/util/Exception.h>

#include <string>

#include "op_layouts.h"

namespace ghostkernels {

Act parse_act(c10::string_view act) {
  // An activation's code is its index in the table of names (op_layouts.h).
  for (int64_t code = 0; code < layouts::kNumActs; ++code) {
    if (act == layouts::kActNames[code]) return static_cast<Act>(code);
  }
  std::string names;
  for (int64_t code = 0; code < layouts::kNumActs; ++code) {
    names += (code > 0 ? ", " : "") + std::string(layouts::kActNames[code]);
  }
  TORCH_CHECK_VALUE(false, "ghostkernels: unknown act '", std::string(act), "'; expected one of ", names);
}

void check_like_x(const char* op, const at::Tensor& x, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": dtype mismatch: x is ", x.scalar_type(), " but ", name,
                   " is ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": device mismatch: x is on ", x.device(), " but ", name,
                    " is on ", t.device());
}

at::MemoryFormat output_memory_format(const at::Tensor& x) {
  if (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

GhostDims check_ghost_inputs(const char* op, const at::Tensor& x, const at::Tensor& w_primary,
                             const at::Tensor& b_primary, const at::Tensor& w_cheap, const at::Tensor& b_cheap,
                             int64_t out_channels, c10::string_view act) {
  GhostDims d{};
  d.act = parse_act(act);
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got ", x.dim(), "-D with shape ", x.sizes());
  TORCH_CHECK_VALUE(w_primary.dim() == 4 && w_primary.size(2) == 1 && w_primary.size(3) == 1, op,
                    ": w_primary must be [init, C, 1, 1], got shape ", w_primary.sizes());
  d.N = x.size(0);
  d.C = x.size(1);
  d.H = x.size(2);
  d.W = x.size(3);
  d.I = w_primary.size(0);
  TORCH_CHECK_VALUE(d.I > 0, op, ": w_primary has zero output channels");
  TORCH_CHECK_VALUE(w_primary.size(1) == d.C, op, ": channel mismatch: x has ", d.C,
                    " channels but w_primary expects ", w_primary.size(1));
  TORCH_CHECK_VALUE(b_primary.dim() == 1 && b_primary.size(0) == d.I, op, ": b_primary must be [", d.I,
                    "], got shape ", b_primary.sizes());
  TORCH_CHECK_VALUE(w_cheap.dim() == 4 && w_cheap.size(1) == 1, op,
                    ": w_cheap must be a depthwise weight [init*(ratio-1), 1, k, k], got shape ", w_cheap.sizes());
  TORCH_CHECK_VALUE(w_cheap.size(0) >= d.I && w_cheap.size(0) % d.I == 0, op, ": w_cheap has ", w_cheap.size(0),
                    " channels, which is not a positive multiple of init=", d.I, " (init*(ratio-1) with ratio >= 2)");
  d.M = w_cheap.size(0) / d.I;
  d.K = w_cheap.size(2);
  TORCH_CHECK_VALUE(w_cheap.size(3) == d.K, op, ": w_cheap must be square k x k, got shape ", w_cheap.sizes());
  TORCH_CHECK_VALUE(d.K >= 1 && d.K % 2 == 1, op, ": the depthwise kernel size must be odd (padding k//2 keeps the size), got k=", d.K);
  TORCH_CHECK_VALUE(b_cheap.dim() == 1 && b_cheap.size(0) == w_cheap.size(0), op, ": b_cheap must be [",
                    w_cheap.size(0), "], got shape ", b_cheap.sizes());
  TORCH_CHECK_VALUE(out_channels >= 1 && out_channels <= d.I * (d.M + 1), op, ": out_channels=", out_channels,
                    " is outside [1, init*ratio=", d.I * (d.M + 1), "]");
  d.oc = out_channels;

  const at::Tensor* ts[] = {&w_primary, &b_primary, &w_cheap, &b_cheap};
  const char* names[] = {"w_primary", "b_primary", "w_cheap", "b_cheap"};
  for (int i = 0; i < 4; ++i) check_like_x(op, x, *ts[i], names[i]);
  return d;
}

at::ScalarType bn_stats_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_bn_tensor(const char* op, const at::Tensor& like, const at::Tensor& t, at::IntArrayRef sizes,
                     const char* name) {
  const at::ScalarType want = bn_stats_dtype(like.scalar_type());
  TORCH_CHECK_TYPE(t.scalar_type() == want, op, ": ", name, " must be ", want, " (the statistics' dtype for ",
                   like.scalar_type(), " inputs), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": device mismatch: ", name, " is on ", t.device(),
                    " but the input is on ", like.device());
  TORCH_CHECK_VALUE(t.sizes() == sizes, op, ": ", name, " must have shape ", sizes, ", got ", t.sizes());
}

namespace {

void check_floating_4d(const char* op, const at::Tensor& t, const char* name, const char* dims) {
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must be 4-D ", dims, ", got ", t.dim(), "-D with shape ",
                    t.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
                   t.scalar_type());
}

}  // namespace

GhostDims check_bn_conv1x1_inputs(const char* op, const at::Tensor& x, const at::Tensor& w_primary) {
  check_floating_4d(op, x, "x", "[N, C, H, W]");
  TORCH_CHECK_VALUE(w_primary.dim() == 4 && w_primary.size(0) > 0, op,
                    ": w_primary must be [init, C, 1, 1] with init > 0, got shape ", w_primary.sizes());
  GhostDims d{};
  d.N = x.size(0), d.C = x.size(1), d.H = x.size(2), d.W = x.size(3);
  d.I = w_primary.size(0), d.M = 1, d.K = 1, d.oc = d.I, d.act = Act::Identity;
  check_bn_tensor(op, x, w_primary, {d.I, d.C, 1, 1}, "w_primary");
  return d;
}

GhostDims check_bn_z1_inputs(const char* op, const at::Tensor& z1, const at::Tensor& w_cheap, int64_t out_channels,
                             c10::string_view act, std::initializer_list<std::pair<const at::Tensor*, const char*>> primary,
                             std::initializer_list<std::pair<const at::Tensor*, const char*>> cheap) {
  GhostDims d{};
  d.act = parse_act(act);
  check_floating_4d(op, z1, "z1", "[N, init, H, W]");
  d.N = z1.size(0), d.I = z1.size(1), d.H = z1.size(2), d.W = z1.size(3), d.C = d.I;
  TORCH_CHECK_VALUE(d.I > 0, op, ": z1 has zero channels");
  TORCH_CHECK_VALUE(w_cheap.dim() == 4 && w_cheap.size(1) == 1 && w_cheap.size(2) == w_cheap.size(3), op,
                    ": w_cheap must be a depthwise weight [init*(ratio-1), 1, k, k], got shape ", w_cheap.sizes());
  TORCH_CHECK_VALUE(w_cheap.size(0) >= d.I && w_cheap.size(0) % d.I == 0, op, ": w_cheap has ", w_cheap.size(0),
                    " channels, which is not a positive multiple of init=", d.I, " (z1's channels)");
  d.M = w_cheap.size(0) / d.I;
  d.K = w_cheap.size(2);
  TORCH_CHECK_VALUE(d.K % 2 == 1, op, ": the depthwise kernel size must be odd (padding k//2 keeps the size), got k=",
                    d.K);
  check_bn_tensor(op, z1, w_cheap, w_cheap.sizes(), "w_cheap");
  const int64_t width = d.I * (d.M + 1);
  TORCH_CHECK_VALUE(out_channels == -1 || (out_channels >= 1 && out_channels <= width), op, ": out_channels=",
                    out_channels, " is outside [1, init*ratio=", width, "]");
  d.oc = out_channels == -1 ? width : out_channels;
  for (const auto& [t, name] : primary) check_bn_tensor(op, z1, *t, {d.I}, name);
  for (const auto& [t, name] : cheap) check_bn_tensor(op, z1, *t, {d.I * d.M}, name);
  return d;
}

void check_bn_grad_out(const char* op, const at::Tensor& grad_out, const at::Tensor& z1, const GhostDims& d) {
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == d.N && grad_out.size(1) == d.oc &&
                        grad_out.size(2) == d.H && grad_out.size(3) == d.W,
                    op, ": grad_out must be [", d.N, ", ", d.oc, ", ", d.H, ", ", d.W, "], got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == z1.scalar_type(), op, ": dtype mismatch: z1 is ", z1.scalar_type(),
                   " but grad_out is ", grad_out.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == z1.device(), op, ": device mismatch: z1 is on ", z1.device(),
                    " but grad_out is on ", grad_out.device());
}

GhostDims check_bn_two_stage_inputs(const char* op, const at::Tensor& z1, const at::Tensor& mean1,
                                    const at::Tensor& invstd1, const at::Tensor& weight1, const at::Tensor& bias1,
                                    const at::Tensor& w_cheap, const at::Tensor& mean2, const at::Tensor& invstd2,
                                    const at::Tensor& weight2, const at::Tensor& bias2, int64_t out_channels,
                                    c10::string_view act) {
  return check_bn_z1_inputs(
      op, z1, w_cheap, out_channels, act,
      {{&mean1, "mean_primary"}, {&invstd1, "invstd_primary"}, {&weight1, "weight_primary"}, {&bias1, "bias_primary"}},
      {{&mean2, "mean_cheap"}, {&invstd2, "invstd_cheap"}, {&weight2, "weight_cheap"}, {&bias2, "bias_cheap"}});
}

GhostDims check_bn_backward_inputs(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                   const at::Tensor& z1, const at::Tensor& w_primary, const at::Tensor& mean1,
                                   const at::Tensor& invstd1, const at::Tensor& weight1, const at::Tensor& bias1,
                                   const at::Tensor& mean_dy1, const at::Tensor& mean_dy_xhat1,
                                   const at::Tensor& w_cheap, const at::Tensor& mean2, const at::Tensor& invstd2,
                                   const at::Tensor& weight2, const at::Tensor& bias2, const at::Tensor& mean_dy2,
                                   const at::Tensor& mean_dy_xhat2, int64_t out_channels, c10::string_view act) {
  TORCH_CHECK_TYPE(z1.scalar_type() == x.scalar_type(), op, ": dtype mismatch: x is ", x.scalar_type(),
                   " but z1 is ", z1.scalar_type());
  GhostDims d = check_bn_z1_inputs(
      op, z1, w_cheap, out_channels, act,
      {{&mean1, "mean_primary"}, {&invstd1, "invstd_primary"}, {&weight1, "weight_primary"}, {&bias1, "bias_primary"},
       {&mean_dy1, "mean_dy_primary"}, {&mean_dy_xhat1, "mean_dy_xhat_primary"}},
      {{&mean2, "mean_cheap"}, {&invstd2, "invstd_cheap"}, {&weight2, "weight_cheap"}, {&bias2, "bias_cheap"},
       {&mean_dy2, "mean_dy_cheap"}, {&mean_dy_xhat2, "mean_dy_xhat_cheap"}});
  const GhostDims dx = check_bn_conv1x1_inputs(op, x, w_primary);
  TORCH_CHECK_VALUE(dx.N == d.N && dx.H == d.H && dx.W == d.W && dx.I == d.I, op, ": z1 has shape ", z1.sizes(),
                    ", but conv1x1(x, w_primary) has shape [", dx.N, ", ", dx.I, ", ", dx.H, ", ", dx.W, "]");
  check_bn_grad_out(op, grad_out, z1, d);
  d.C = dx.C;
  return d;
}

GateDims check_dfc_gate_inputs(const char* op, const at::Tensor& x, const at::Tensor& w_reduce,
                               const at::Tensor& b_reduce, const at::Tensor& w_h, const at::Tensor& b_h,
                               const at::Tensor& w_v, const at::Tensor& b_v) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got shape ", x.sizes());
  GateDims d{};
  d.N = x.size(0);
  d.C = x.size(1);
  d.H = x.size(2);
  d.W = x.size(3);
  TORCH_CHECK_VALUE(d.H >= 2 && d.W >= 2, op, ": x must be at least 2x2 (the gate pools 2x2 windows), got ", d.H,
                    "x", d.W);
  TORCH_CHECK_VALUE(w_reduce.dim() == 4 && w_reduce.size(1) == d.C && w_reduce.size(2) == 1 && w_reduce.size(3) == 1,
                    op, ": w_reduce must be [O, ", d.C, ", 1, 1], got shape ", w_reduce.sizes());
  d.O = w_reduce.size(0);
  TORCH_CHECK_VALUE(d.O > 0, op, ": w_reduce has zero output channels");
  TORCH_CHECK_VALUE(w_h.dim() == 4 && w_h.size(0) == d.O && w_h.size(1) == 1 && w_h.size(2) == 1 &&
                        w_h.size(3) % 2 == 1,
                    op, ": w_h must be a depthwise (1, k) weight [", d.O, ", 1, 1, k] with k odd, got shape ",
                    w_h.sizes());
  TORCH_CHECK_VALUE(w_v.dim() == 4 && w_v.size(0) == d.O && w_v.size(1) == 1 && w_v.size(3) == 1 &&
                        w_v.size(2) % 2 == 1,
                    op, ": w_v must be a depthwise (k, 1) weight [", d.O, ", 1, k, 1] with k odd, got shape ",
                    w_v.sizes());
  const at::Tensor* biases[] = {&b_reduce, &b_h, &b_v};
  const char* bias_names[] = {"b_reduce", "b_h", "b_v"};
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK_VALUE(biases[i]->dim() == 1 && biases[i]->size(0) == d.O, op, ": ", bias_names[i], " must be [",
                      d.O, "], got shape ", biases[i]->sizes());
  }
  const at::Tensor* ts[] = {&w_reduce, &b_reduce, &w_h, &b_h, &w_v, &b_v};
  const char* names[] = {"w_reduce", "b_reduce", "w_h", "b_h", "w_v", "b_v"};
  for (int i = 0; i < 6; ++i) check_like_x(op, x, *ts[i], names[i]);
  d.Hg = d.H / 2;
  d.Wg = d.W / 2;
  d.KH = w_h.size(3);
  d.KV = w_v.size(2);
  return d;
}

GhostDims check_gated_inputs(const char* op, const at::Tensor& x, const at::Tensor& w_primary,
                             const at::Tensor& b_primary, const at::Tensor& w_cheap, const at::Tensor& b_cheap,
                             int64_t out_channels, c10::string_view act, const at::Tensor& gate) {
  const GhostDims d = check_ghost_inputs(op, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act);
  TORCH_CHECK_VALUE(gate.dim() == 4 && gate.size(0) == d.N && gate.size(1) == out_channels && gate.size(2) >= 1 &&
                        gate.size(3) >= 1,
                    op, ": gate must be [", d.N, ", ", out_channels, ", Hg, Wg] with Hg, Wg >= 1, got shape ",
                    gate.sizes());
  check_like_x(op, x, gate, "gate");
  return d;
}

}  // namespace ghostkernels
