// The op contract, defined once for every backend. Kernels register themselves per dispatch key in
// cpu/op_*.cpp and cuda/ghost_module_cuda.cpp; fake kernels and autograd are registered from Python
// (ghostkernels/ops/registration.py), the way pytorch/extension-cpp does it. The ABI tables the schemas' integer
// arguments refer to (activation codes, the chain's step layouts) are in op_layouts.h.
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "op_layouts.h"

namespace {

// A JSON string: the names in the tables are identifiers, but quotes and backslashes are escaped all the same.
std::string json_string(std::string_view v) {
  std::string out = "\"";
  for (const char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// A JSON list of names, written as Python's json.dumps writes it (", " between items).
template <typename NameOf>
std::string json_names(int64_t n, NameOf&& name_of) {
  std::string out = "[";
  for (int64_t i = 0; i < n; ++i) out += (i > 0 ? ", " : "") + json_string(name_of(i));
  return out + "]";
}

// What ghostkernels::_layouts returns: the tables of op_layouts.h, in their order.
std::string layouts_json() {
  namespace L = ghostkernels::layouts;
  std::string steps;
  for (int64_t op = 0; op < L::kNumChainSteps; ++op) {
    const L::ChainStep& s = L::kChainSteps[op];
    std::string optional = "[";
    for (int64_t k = 0; k < s.n_tensors; ++k) {
      if (!s.tensors[k].optional) continue;
      optional += (optional.size() > 1 ? ", " : "") + json_string(s.tensors[k].name);
    }
    optional += "]";
    steps += std::string(op > 0 ? ", " : "") + "{\"opcode\": " + std::to_string(s.opcode) +
             ", \"name\": " + json_string(s.name) +
             ", \"ints\": " + json_names(s.n_ints, [&](int64_t k) { return s.ints[k]; }) +
             ", \"tensors\": " + json_names(s.n_tensors, [&](int64_t k) { return s.tensors[k].name; }) +
             ", \"optional\": " + optional + "}";
  }
  return "{\"acts\": " + json_names(L::kNumActs, [](int64_t c) { return L::kActNames[c]; }) +
         ", \"chain_steps\": [" + steps + "]}";
}

}  // namespace

TORCH_LIBRARY(ghostkernels, m) {
  // out = cat(act(conv1x1(x, w_primary) + b_primary), act(dwconv_kxk(x1, w_cheap) + b_cheap))[:, :out_channels]
  m.def(
      "ghost_module(Tensor x, Tensor w_primary, Tensor b_primary, Tensor w_cheap, Tensor b_cheap, "
      "SymInt out_channels, str act) -> Tensor");
  // Gradients of x, w_primary, b_primary, w_cheap, b_cheap. Only x (and the weights) are needed: every
  // intermediate is recomputed from x, so nothing of the forward pass is kept alive for backward.
  m.def(
      "ghost_module_backward(Tensor grad_out, Tensor x, Tensor w_primary, Tensor b_primary, Tensor w_cheap, "
      "Tensor b_cheap, SymInt out_channels, str act) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // GhostNetV2's DFC attention map of x, BatchNorms folded: sigmoid(dw_v(dw_h(conv1x1(avg_pool2x2(x))))), with
  // conv1x1 = w_reduce [O, C, 1, 1] + b_reduce, dw_h the depthwise (1, kh) conv w_h [O, 1, 1, kh] + b_h (zero padding
  // kh//2 columns), dw_v the depthwise (kv, 1) conv w_v [O, 1, kv, 1] + b_v (kv//2 rows); kh, kv odd. avg_pool2x2
  // floors odd sizes: the map is [N, O, H // 2, W // 2], in x's dtype and memory format.
  m.def(
      "dfc_gate(Tensor x, Tensor w_reduce, Tensor b_reduce, Tensor w_h, Tensor b_h, Tensor w_v, Tensor b_v) -> "
      "Tensor");
  // Gradients of x and the six weights of dfc_gate, from the map's gradient and the map itself (its sigmoid's
  // derivative is gate * (1 - gate)); the other intermediates are recomputed from x.
  m.def(
      "dfc_gate_backward(Tensor grad_gate, Tensor gate, Tensor x, Tensor w_reduce, Tensor b_reduce, Tensor w_h, "
      "Tensor b_h, Tensor w_v, Tensor b_v) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // ghost_module(x, ...) * upsample_nearest(gate, (H, W)): GhostNetV2's gated Ghost module, the map gate
  // [N, out_channels, Hg, Wg] multiplied into both halves as the output is stored. Upsampling is
  // F.interpolate(mode='nearest')'s: output row i reads map row min(floor(i * (float(Hg) / H)), Hg - 1), columns
  // alike.
  m.def(
      "ghost_module_gated(Tensor x, Tensor w_primary, Tensor b_primary, Tensor w_cheap, Tensor b_cheap, "
      "SymInt out_channels, str act, Tensor gate) -> Tensor");
  // Gradients of x, w_primary, b_primary, w_cheap, b_cheap and gate: the ungated module is recomputed from x (as
  // ghost_module's backward recomputes its intermediates), so only the inputs are kept for backward.
  m.def(
      "ghost_module_gated_backward(Tensor grad_out, Tensor x, Tensor w_primary, Tensor b_primary, Tensor w_cheap, "
      "Tensor b_cheap, SymInt out_channels, str act, Tensor gate) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  // GhostNet's bottleneck, inference only (no autograd; FusedGhostBottleneck runs it where nothing needs a
  // gradient), BatchNorms folded into the convolutions, CPU only:
  //   y = ghost_module(x, ghost1_*, mid_channels, act)
  //   y = conv2d(y, dw_w, dw_b, stride, padding k//2, groups=mid)                  when stride == 2
  //   y = y * hardsigmoid(conv1x1(relu(conv1x1(mean_hw(y), se_reduce_*)), se_expand_*))   when se_* are given
  //   out = ghost_module(y, ghost2_*, out_channels, "identity") + shortcut(x)
  //   shortcut(x) = x, or conv1x1(conv2d(x, shortcut_dw_*, stride, padding k//2, groups=C), shortcut_pw_*)
  m.def(
      "ghost_bottleneck(Tensor x, Tensor ghost1_w_primary, Tensor ghost1_b_primary, Tensor ghost1_w_cheap, "
      "Tensor ghost1_b_cheap, SymInt mid_channels, str act, Tensor? dw_w, Tensor? dw_b, int stride, "
      "Tensor? se_reduce_w, Tensor? se_reduce_b, Tensor? se_expand_w, Tensor? se_expand_b, "
      "Tensor ghost2_w_primary, Tensor ghost2_b_primary, Tensor ghost2_w_cheap, Tensor ghost2_b_cheap, "
      "SymInt out_channels, Tensor? shortcut_dw_w, Tensor? shortcut_dw_b, Tensor? shortcut_pw_w, "
      "Tensor? shortcut_pw_b) -> Tensor");
  // GhostNetV2's bottleneck (ghost1 gated): ghost_bottleneck with its first Ghost module
  // ghost_module_gated(x, ghost1_*, mid_channels, act, dfc_gate(x, gate_*)); inference only, CPU only.
  m.def(
      "ghost_bottleneck_gated(Tensor x, Tensor ghost1_w_primary, Tensor ghost1_b_primary, Tensor ghost1_w_cheap, "
      "Tensor ghost1_b_cheap, SymInt mid_channels, str act, Tensor gate_w_reduce, Tensor gate_b_reduce, "
      "Tensor gate_w_h, Tensor gate_b_h, Tensor gate_w_v, Tensor gate_b_v, Tensor? dw_w, Tensor? dw_b, int stride, "
      "Tensor? se_reduce_w, Tensor? se_reduce_b, Tensor? se_expand_w, Tensor? se_expand_b, "
      "Tensor ghost2_w_primary, Tensor ghost2_b_primary, Tensor ghost2_w_cheap, Tensor ghost2_b_cheap, "
      "SymInt out_channels, Tensor? shortcut_dw_w, Tensor? shortcut_dw_b, Tensor? shortcut_pw_w, "
      "Tensor? shortcut_pw_b) -> Tensor");
  // act(conv2d(x, w, b, stride, padding k//2)), groups 1, odd k, stride 1 or 2: a convolution with its BatchNorm
  // folded in, inference only (no autograd), CPU only. FusedStemConv and FusedConvBnAct run GhostNet's stem and last
  // ConvBnAct on it where nothing needs a gradient (ghostkernels/nn/conv_bn_act.py).
  m.def("conv2d_act(Tensor x, Tensor w, Tensor b, int stride, str act) -> Tensor");
  // act(x @ w^T + b) for x [N, K], w [out, K]: inference only (no autograd), CPU only. FusedConvHead and
  // FusedClassifier run GhostNet's head on it where nothing needs a gradient (ghostkernels/nn/head.py).
  m.def("linear_act(Tensor x, Tensor w, Tensor b, str act) -> Tensor");
  // A chain of the inference ops above in one call (inference only, no autograd, CPU only; ghostkernels.freeze()
  // runs a fused GhostNet's whole forward on it, ghostkernels/patch/frozen.py). `program` is a list of steps, each an
  // opcode and its integers; each step takes its tensors from `tensors` in order and its input from the step before.
  // The steps (conv2d_act, ghost_bottleneck, mean_hw: [N, C, H, W] -> [N, C] plane means, linear_act,
  // ghost_bottleneck_gated), their opcodes, integers and tensors (the op's own arguments after x, in the order of its
  // schema above; None where that schema has Tensor?) and the activation codes are the table of op_layouts.h, which
  // _layouts() returns.
  // Each step computes exactly what its op computes.
  m.def("chain(Tensor x, Tensor?[] tensors, int[] program) -> Tensor");
  // Internal (the tests reach the CPU depthwise kernel through it): act(conv2d(x, w, b, stride, padding k//2,
  // groups=C)), contiguous output.
  m.def("_depthwise_conv2d(Tensor x, Tensor w, Tensor b, int stride, str act) -> Tensor");
  // Internal: the ABI tables of op_layouts.h (activation names by code; ghostkernels::chain's step layouts) as JSON,
  // {"acts": [...], "chain_steps": [{"opcode", "name", "ints", "tensors", "optional"}, ...]}, so that the Python
  // side can check its own copies against them. No tensors, so one kernel serves every dispatch key.
  m.def("_layouts() -> str", &layouts_json);
}
