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
  // ---- Training with batch-statistics BatchNorm (bench/NOTES.md entry 36 has the design and the math) ----
  //
  // A Ghost module in train mode is x -> z1 = conv1x1(x, W1) -> BN1 (batch statistics) -> act -> x1,
  // z2 = dwconv(x1, W2) -> BN2 -> act -> x2, out = cat(x1, x2)[:, :out_channels]. Its statistics must be known (and,
  // under SyncBatchNorm, all-reduced across processes) before the normalized values can be computed, so it runs as a
  // few passes with Python in between (ghostkernels/ops/train_bn.py); these are the passes. Every pass that needs x1
  // or the depthwise output recomputes them from z1. Each BN stage is given the way torch's batch_norm_elemt takes
  // it: mean, invstd, weight (gamma) and bias (beta) per channel, xhat = (z - mean) * invstd, y = weight * xhat +
  // bias, x1 = act(y1). Statistics, sums and per-channel vectors are float64 for float64 x and float32 otherwise (the
  // "stats dtype"); conv weights are in that dtype too (no rounding of the folded or raw weights to bfloat16).
  //
  // Pass 1: z1 = conv1x1(x, w_primary) (no bias; in x's dtype and memory format) and the mean and biased variance
  // of each of its channels over (N, H, W), computed from z1 as stored (Chan-combined per-block two-pass moments,
  // so a large mean costs no precision).
  m.def("ghost_bn_conv1x1_stats(Tensor x, Tensor w_primary) -> (Tensor z1, Tensor mean, Tensor var)");
  // Pass 2: the mean and biased variance over (N, H, W) of every channel of z2 = dwconv(x1, w_cheap) (no bias),
  // x1 = act(BN1(z1)); all init*(ratio-1) channels, the ones the slice drops included (their running statistics
  // are updated all the same).
  m.def(
      "ghost_bn_cheap_stats(Tensor z1, Tensor mean_primary, Tensor invstd_primary, Tensor weight_primary, "
      "Tensor bias_primary, Tensor w_cheap, str act) -> (Tensor mean, Tensor var)");
  // Pass 3: out = cat(x1, act(BN2(dwconv(x1, w_cheap))))[:, :out_channels], x1 = act(BN1(z1)); z1's dtype and
  // memory format.
  m.def(
      "ghost_bn_forward_out(Tensor z1, Tensor mean_primary, Tensor invstd_primary, Tensor weight_primary, "
      "Tensor bias_primary, Tensor w_cheap, Tensor mean_cheap, Tensor invstd_cheap, Tensor weight_cheap, "
      "Tensor bias_cheap, SymInt out_channels, str act) -> Tensor");
  // Backward pass 1: the per-channel sums from which the BN backward's reductions of both stages follow (the
  // second stage's depend on the first's only linearly, so one pass serves both). With g2 = dL/dy2 =
  // grad_out[:, init:] * act'(y2) (zero for channels past the slice), a1 = act'(y1), and for cheap channel j of
  // primary channel c = j / (ratio-1) the depthwise convolutions (no bias) da = dwconv(a1_c, w_cheap_j) and
  // dq = dwconv(a1_c * xhat1_c, w_cheap_j):
  //   sums_primary [2, init]: sum(a1 * grad_out[:, c]), sum(a1 * xhat1 * grad_out[:, c]) (zero past the slice)
  //   sums_cheap [8, init*(ratio-1)]: sum(g2), sum(g2 * xhat2), sum(da * g2), sum(da), sum(da * xhat2),
  //                                   sum(dq * g2), sum(dq), sum(dq * xhat2)
  // all over (N, H, W). ghostkernels/ops/train_bn.py turns them into dL/dbeta, dL/dgamma and the mean_dy* below.
  m.def(
      "ghost_bn_backward_reduce(Tensor grad_out, Tensor z1, Tensor mean_primary, Tensor invstd_primary, "
      "Tensor weight_primary, Tensor bias_primary, Tensor w_cheap, Tensor mean_cheap, Tensor invstd_cheap, "
      "Tensor weight_cheap, Tensor bias_cheap, SymInt out_channels, str act) -> (Tensor sums_primary, "
      "Tensor sums_cheap)");
  // Backward pass 2: the gradients of x, w_primary and w_cheap, with
  //   dz2 = invstd2 * weight2 * (g2 - mean_dy_cheap - xhat2 * mean_dy_xhat_cheap),
  //   g1 = (grad_out[:, :init] + dwconv_transposed(dz2, w_cheap)) * act'(y1),
  //   dz1 = invstd1 * weight1 * (g1 - mean_dy_primary - xhat1 * mean_dy_xhat_primary),
  //   grad_w_cheap = sum dz2 * (x1 at each tap), grad_w_primary = sum dz1 x^T, grad_x = w_primary^T dz1
  // (mean_dy* = the BN backward's means of dL/dy and dL/dy * xhat over the whole batch, all processes' under
  // SyncBatchNorm). grad_x in x's dtype and the output's memory-format rule, the weight gradients in the stats dtype.
  m.def(
      "ghost_bn_backward(Tensor grad_out, Tensor x, Tensor z1, Tensor w_primary, Tensor mean_primary, "
      "Tensor invstd_primary, Tensor weight_primary, Tensor bias_primary, Tensor mean_dy_primary, "
      "Tensor mean_dy_xhat_primary, Tensor w_cheap, Tensor mean_cheap, Tensor invstd_cheap, Tensor weight_cheap, "
      "Tensor bias_cheap, Tensor mean_dy_cheap, Tensor mean_dy_xhat_cheap, SymInt out_channels, str act) -> "
      "(Tensor grad_x, Tensor grad_w_primary, Tensor grad_w_cheap)");
  // The whole train-mode Ghost module, with autograd: the passes above with the statistics combined in between
  // (across the processes of the process group named `group` under SyncBatchNorm; "" for none). Its kernel is
  // Python (ghostkernels/ops/train_bn.py, registered with the fake kernel in ghostkernels/ops/registration.py),
  // because the statistics must cross processes between passes; its autograd kernel is C++
  // (csrc/bn_train_autograd.cpp). The conv
  // biases (None: none) only move the means (they cancel in the normalization; their gradient is zero); BN weight
  // and bias None mean an affine-free BN. Returns the output, each BN's batch mean (of the conv output, bias
  // included) and biased variance, the number of values per channel they were computed over (a float tensor of
  // shape [], summed over the processes), and z1 when it is worth keeping for backward instead of recomputing
  // (ghostkernels/ops/train_bn.py says when; else an empty tensor).
  m.def(
      "ghost_module_bn_train(Tensor x, Tensor w_primary, Tensor? b_primary, Tensor? bn_weight_primary, "
      "Tensor? bn_bias_primary, float eps_primary, Tensor w_cheap, Tensor? b_cheap, Tensor? bn_weight_cheap, "
      "Tensor? bn_bias_cheap, float eps_cheap, SymInt out_channels, str act, str group) -> (Tensor out, "
      "Tensor mean_primary, Tensor var_primary, Tensor mean_cheap, Tensor var_cheap, Tensor count, "
      "Tensor saved_z1)");
  // Its backward: the gradients of x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, w_cheap, b_cheap,
  // bn_weight_cheap, bn_bias_cheap (each of its input's shape; zeros for the conv biases, and for an input that was
  // None), from the forward's statistics and saved_z1.
  m.def(
      "ghost_module_bn_train_backward(Tensor grad_out, Tensor x, Tensor w_primary, Tensor? b_primary, "
      "Tensor? bn_weight_primary, Tensor? bn_bias_primary, float eps_primary, Tensor w_cheap, Tensor? b_cheap, "
      "Tensor? bn_weight_cheap, Tensor? bn_bias_cheap, float eps_cheap, Tensor mean_primary, Tensor var_primary, "
      "Tensor mean_cheap, Tensor var_cheap, Tensor count, Tensor saved_z1, SymInt out_channels, str act, "
      "str group) -> (Tensor grad_x, Tensor grad_w_primary, Tensor grad_b_primary, Tensor grad_bn_weight_primary, "
      "Tensor grad_bn_bias_primary, Tensor grad_w_cheap, Tensor grad_b_cheap, Tensor grad_bn_weight_cheap, "
      "Tensor grad_bn_bias_cheap)");
  // The two above without a process group (statistics of this process only), each one call with the passes and the
  // per-channel arithmetic between them in C++ (CPU only): the kernels of ghost_module_bn_train and its backward for
  // group "" on the CPU (ghostkernels/ops/train_bn.py), where the Python composition's twenty-odd small tensor ops
  // cost small modules more than their passes (bench/NOTES.md entry 43). The same arithmetic as that composition,
  // op for op. `keep_z1`: whether saved_z1 is z1 (train_bn.keep_z1 decides). The backward returns the gradients of
  // x, w_primary, bn_weight_primary, bn_bias_primary, w_cheap, bn_weight_cheap and bn_bias_cheap, the weights' in the
  // stats dtype (the caller gives them their parameters' dtypes and adds the conv biases' zero gradients).
  m.def(
      "ghost_bn_train_local(Tensor x, Tensor w_primary, Tensor? b_primary, Tensor? bn_weight_primary, "
      "Tensor? bn_bias_primary, float eps_primary, Tensor w_cheap, Tensor? b_cheap, Tensor? bn_weight_cheap, "
      "Tensor? bn_bias_cheap, float eps_cheap, SymInt out_channels, str act, bool keep_z1) -> (Tensor out, "
      "Tensor mean_primary, Tensor var_primary, Tensor mean_cheap, Tensor var_cheap, Tensor count, "
      "Tensor saved_z1)");
  m.def(
      "ghost_bn_train_local_backward(Tensor grad_out, Tensor x, Tensor w_primary, Tensor? b_primary, "
      "Tensor? bn_weight_primary, Tensor? bn_bias_primary, float eps_primary, Tensor w_cheap, Tensor? b_cheap, "
      "Tensor? bn_weight_cheap, Tensor? bn_bias_cheap, float eps_cheap, Tensor mean_primary, Tensor var_primary, "
      "Tensor mean_cheap, Tensor var_cheap, Tensor count, Tensor saved_z1, SymInt out_channels, str act) -> "
      "(Tensor grad_x, Tensor grad_w_primary, Tensor grad_bn_weight_primary, Tensor grad_bn_bias_primary, "
      "Tensor grad_w_cheap, Tensor grad_bn_weight_cheap, Tensor grad_bn_bias_cheap)");
  // The running statistics' update of a BatchNorm in training from the batch mean and biased variance that
  // ghost_module_bn_train returned, in place, as nn.BatchNorm2d updates them: num_batches_tracked += 1; factor =
  // momentum, or 1 / num_batches_tracked when momentum is None (a cumulative average); running_mean = (1 - factor) *
  // running_mean + factor * mean and running_var the same with the unbiased variance var * count / (count - 1).
  // One op per BN instead of the dozen small tensor ops of the update in Python (csrc/bn_running_stats.cpp says why).
  m.def(
      "ghost_bn_update_running_stats(Tensor(a!) running_mean, Tensor(b!) running_var, "
      "Tensor(c!) num_batches_tracked, Tensor mean, Tensor var, Tensor count, float? momentum) -> ()");
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
