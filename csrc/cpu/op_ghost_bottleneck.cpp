// ghostkernels::ghost_bottleneck and ghost_bottleneck_gated (GhostNetV2's block: ghost1 gated) on the CPU: the
// bindings. They check the arguments (all of them, with the messages the Python checks of
// ghostkernels/ops/validation.py mirror) and call the launcher, ghost_bottleneck_forward
// (launch_ghost_bottleneck.cpp), which says how the block runs and why it is one op.
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <array>
#include <initializer_list>
#include <optional>

#include "../ghost_module_check.h"
#include "entry_points.h"
#include "kernel_depthwise_avx512.h"  // depthwise_output_size

namespace ghostkernels {
namespace {

constexpr const char* kPlainOp = "ghostkernels::ghost_bottleneck (CPU)";
constexpr const char* kGatedOp = "ghostkernels::ghost_bottleneck_gated (CPU)";

using cpu::BottleneckArgs;
using cpu::BottleneckDims;
using OptTensor = std::optional<at::Tensor>;

// All of an optional group given, or none; returns which.
bool all_or_none(const char* kOp, const char* group, std::initializer_list<const OptTensor*> ts) {
  int given = 0;
  for (const OptTensor* t : ts) given += t->has_value() ? 1 : 0;
  TORCH_CHECK_VALUE(given == 0 || given == static_cast<int>(ts.size()), kOp, ": give all of ", group,
                    " or none of them (", given, " of ", ts.size(), " given)");
  return given > 0;
}

void check_conv1x1(const char* kOp, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t in,
                   const char* what) {
  TORCH_CHECK_VALUE(w.dim() == 4 && w.size(1) == in && w.size(2) == 1 && w.size(3) == 1, kOp, ": ", what,
                    " weight must be [out, ", in, ", 1, 1], got shape ", w.sizes());
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == w.size(0), kOp, ": ", what, " bias must be [", w.size(0),
                    "], got shape ", b.sizes());
  check_like_x(kOp, x, w, what);
  check_like_x(kOp, x, b, what);
}

BottleneckDims check_inputs(const BottleneckArgs& a) {
  const bool gated = a.gate[0] != nullptr;
  const char* kOp = gated ? kGatedOp : kPlainOp;
  const at::Tensor& x = a.x;
  const int64_t mid = a.mid, stride = a.stride, out_channels = a.out_channels;
  const OptTensor &dw_w = a.dw_w, &dw_b = a.dw_b, &se_rw = a.se_rw, &se_rb = a.se_rb, &se_ew = a.se_ew,
                  &se_eb = a.se_eb, &sc_dw_w = a.sc_dw_w, &sc_dw_b = a.sc_dw_b, &sc_pw_w = a.sc_pw_w,
                  &sc_pw_b = a.sc_pw_b;
  BottleneckDims d{};
  d.ghost1 = check_ghost_inputs(gated ? "ghostkernels::ghost_bottleneck_gated (ghost1)"
                                      : "ghostkernels::ghost_bottleneck (ghost1)",
                                x, a.g1w1, a.g1b1, a.g1w2, a.g1b2, mid, a.act);
  d.gated = gated;
  if (gated) {
    d.gate = check_dfc_gate_inputs("ghostkernels::ghost_bottleneck_gated (ghost1's gate)", x, *a.gate[0], *a.gate[1],
                                   *a.gate[2], *a.gate[3], *a.gate[4], *a.gate[5]);
    TORCH_CHECK_VALUE(d.gate.O == mid, kOp, ": ghost1's gate makes ", d.gate.O, " channels, not ghost1's ", mid);
  }
  TORCH_CHECK_VALUE(x.device().is_cpu(), kOp, ": expected CPU tensors, got ", x.device(),
                    " (the op has a CPU kernel only; FusedGhostBottleneck runs the block's own layers elsewhere)");
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kDouble || t == at::kFloat || t == at::kBFloat16, kOp,
                   ": supported dtypes are float64, float32 and bfloat16, got ", t);
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, kOp, ": stride must be 1 or 2, got ", stride);
  d.stride = stride;
  // Stand-ins of the intermediate tensors for the shape checks: one element of x's dtype and device, expanded.
  const at::Tensor one = at::empty({}, x.options());
  const at::Tensor y1 = one.expand({d.ghost1.N, mid, d.ghost1.H, d.ghost1.W});
  d.has_dw = all_or_none(kOp, "dw_w, dw_b", {&dw_w, &dw_b});
  TORCH_CHECK_VALUE(d.has_dw == (stride == 2), kOp, ": dw_w/dw_b (conv_dw) must be given exactly when stride is 2 ",
                    "(stride=", stride, ", ", d.has_dw ? "given" : "not given", ")");
  if (d.has_dw) cpu::check_depthwise_inputs(kOp, "conv_dw", y1, *dw_w, *dw_b, stride);
  const int64_t K_dw = d.has_dw ? dw_w->size(2) : 1;
  d.Ho = d.has_dw ? cpu::depthwise_output_size(d.ghost1.H, K_dw, stride) : d.ghost1.H;
  d.Wo = d.has_dw ? cpu::depthwise_output_size(d.ghost1.W, K_dw, stride) : d.ghost1.W;
  d.has_se =
      all_or_none(kOp, "se_reduce_w, se_reduce_b, se_expand_w, se_expand_b", {&se_rw, &se_rb, &se_ew, &se_eb});
  if (d.has_se) {
    check_conv1x1(kOp, x, *se_rw, *se_rb, mid, "se_reduce");
    check_conv1x1(kOp, x, *se_ew, *se_eb, se_rw->size(0), "se_expand");
    TORCH_CHECK_VALUE(se_ew->size(0) == mid, kOp, ": se_expand must give back the block's ", mid,
                      " channels, got weight shape ", se_ew->sizes());
  }
  const at::Tensor y2 = one.expand({d.ghost1.N, mid, d.Ho, d.Wo});
  d.ghost2 = check_ghost_inputs(gated ? "ghostkernels::ghost_bottleneck_gated (ghost2)"
                                      : "ghostkernels::ghost_bottleneck (ghost2)",
                                y2, a.g2w1, a.g2b1, a.g2w2, a.g2b2, out_channels, "identity");
  d.has_shortcut = all_or_none(kOp, "shortcut_dw_w, shortcut_dw_b, shortcut_pw_w, shortcut_pw_b",
                               {&sc_dw_w, &sc_dw_b, &sc_pw_w, &sc_pw_b});
  if (d.has_shortcut) {
    cpu::check_depthwise_inputs(kOp, "the shortcut's depthwise conv", x, *sc_dw_w, *sc_dw_b, stride);
    TORCH_CHECK_VALUE(sc_dw_w->size(2) == K_dw || !d.has_dw, kOp, ": the shortcut's depthwise kernel (k=",
                      sc_dw_w->size(2), ") must match conv_dw's (k=", K_dw, ") so both halve the image alike");
    TORCH_CHECK_VALUE(cpu::depthwise_output_size(d.ghost1.H, sc_dw_w->size(2), stride) == d.Ho &&
                          cpu::depthwise_output_size(d.ghost1.W, sc_dw_w->size(2), stride) == d.Wo,
                      kOp, ": the shortcut's output size differs from the main branch's");
    check_conv1x1(kOp, x, *sc_pw_w, *sc_pw_b, d.ghost1.C, "shortcut_pw");
    TORCH_CHECK_VALUE(sc_pw_w->size(0) == out_channels, kOp, ": shortcut_pw must make out_channels=",
                      out_channels, " channels, got weight shape ", sc_pw_w->sizes());
  } else {
    TORCH_CHECK_VALUE(d.ghost1.C == out_channels && stride == 1, kOp, ": without shortcut weights the shortcut is ",
                      "the identity, which needs in_channels == out_channels and stride 1 (got ", d.ghost1.C, " -> ",
                      out_channels, ", stride ", stride, ")");
  }
  return d;
}

}  // namespace

namespace cpu {

at::Tensor ghost_bottleneck_cpu(const at::Tensor& x, const at::Tensor& g1w1, const at::Tensor& g1b1,
                                const at::Tensor& g1w2, const at::Tensor& g1b2, int64_t mid, c10::string_view act,
                                const OptTensor& dw_w, const OptTensor& dw_b, int64_t stride, const OptTensor& se_rw,
                                const OptTensor& se_rb, const OptTensor& se_ew, const OptTensor& se_eb,
                                const at::Tensor& g2w1, const at::Tensor& g2b1, const at::Tensor& g2w2,
                                const at::Tensor& g2b2, int64_t out_channels, const OptTensor& sc_dw_w,
                                const OptTensor& sc_dw_b, const OptTensor& sc_pw_w, const OptTensor& sc_pw_b) {
  const BottleneckArgs args{x, g1w1, g1b1, g1w2, g1b2, mid, act, dw_w, dw_b, stride, se_rw, se_rb, se_ew, se_eb,
                            g2w1, g2b1, g2w2, g2b2, out_channels, sc_dw_w, sc_dw_b, sc_pw_w, sc_pw_b, {}};
  const BottleneckDims d = check_inputs(args);
  return ghost_bottleneck_forward(args, d);
}

at::Tensor ghost_bottleneck_gated_cpu(const at::Tensor& x, const at::Tensor& g1w1, const at::Tensor& g1b1,
                                      const at::Tensor& g1w2, const at::Tensor& g1b2, int64_t mid,
                                      c10::string_view act, const at::Tensor& gate_w_reduce,
                                      const at::Tensor& gate_b_reduce, const at::Tensor& gate_w_h,
                                      const at::Tensor& gate_b_h, const at::Tensor& gate_w_v,
                                      const at::Tensor& gate_b_v, const OptTensor& dw_w, const OptTensor& dw_b,
                                      int64_t stride, const OptTensor& se_rw, const OptTensor& se_rb,
                                      const OptTensor& se_ew, const OptTensor& se_eb, const at::Tensor& g2w1,
                                      const at::Tensor& g2b1, const at::Tensor& g2w2, const at::Tensor& g2b2,
                                      int64_t out_channels, const OptTensor& sc_dw_w, const OptTensor& sc_dw_b,
                                      const OptTensor& sc_pw_w, const OptTensor& sc_pw_b) {
  BottleneckArgs args{x, g1w1, g1b1, g1w2, g1b2, mid, act, dw_w, dw_b, stride, se_rw, se_rb, se_ew, se_eb,
                      g2w1, g2b1, g2w2, g2b2, out_channels, sc_dw_w, sc_dw_b, sc_pw_w, sc_pw_b};
  args.gate = {&gate_w_reduce, &gate_b_reduce, &gate_w_h, &gate_b_h, &gate_w_v, &gate_b_v};
  const BottleneckDims d = check_inputs(args);
  return ghost_bottleneck_forward(args, d);
}

}  // namespace cpu

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) {
  m.impl("ghost_bottleneck", &cpu::ghost_bottleneck_cpu);
  m.impl("ghost_bottleneck_gated", &cpu::ghost_bottleneck_gated_cpu);
}

}  // namespace ghostkernels
