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
