// ghostkernels::chain on the CPU: a chain of this library's inference ops (a whole GhostNet) in one op call.
//
// Why: at batch 1 a fused GhostNet is ~20 op calls of 20-250 us each, and between them Python runs a module call
// per block (hooks, the fold cache, the argument list) plus the dispatcher's work per op. Each of those steps reads
// Python objects and tensor metadata that the kernels' traffic has pushed out of the caches since the last
// forward, so inside a forward they cost several times what they cost in a loop: ~0.6 ms of a ~4 ms forward
// (bench/NOTES.md, entry 23). Here the network is one call: the steps run back to back in C++, calling the ops'
// CPU functions directly (entry_points.h), each with the same validation and the same numerics as the op itself;
// only the global average pool (a plain loop here, ATen's pooling in the network's own forward) may round
// differently. ghostkernels.freeze() builds the program from a fused network (ghostkernels/patch/frozen.py); the schema
// is in csrc/ghost_module.cpp, the program's encoding in csrc/op_layouts.h.
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/record_function.h>
#include <ATen/ops/cat.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "../op_layouts.h"
#include "entry_points.h"
#include "util_image_split.h"
#include "util_tensor_pool.h"

namespace ghostkernels {
namespace {

constexpr const char* kOp = "ghostkernels::chain (CPU)";

using OptTensor = std::optional<at::Tensor>;

// Opcodes, the steps' integers and tensors, and activation codes: the ABI table of op_layouts.h, mirrored in Python
// by ghostkernels/ops/layouts.py (CHAIN_STEPS) and ops/reference.py (ACTS); ghostkernels::_layouts returns the table
// and tests/test_layouts.py compares the two.
using layouts::kActNames;
using layouts::kChainConv2dAct;
using layouts::kChainGhostBottleneck;
using layouts::kChainGhostBottleneckGated;
using layouts::kChainLinearAct;
using layouts::kChainMeanHW;
using layouts::kChainSteps;

// run_step below passes each step's integers and tensors on by position, in the order of the op's schema; these pin
// those positions to the table's names.
static_assert(layouts::step_args_are(kChainConv2dAct, true, {"stride", "act"}) &&
                  layouts::step_args_are(kChainConv2dAct, false, {"w", "b"}),
              "run_step's conv2d_act arguments");
static_assert(layouts::step_args_are(kChainGhostBottleneck, true, {"mid_channels", "act", "stride", "out_channels"}) &&
                  layouts::step_args_are(kChainGhostBottleneck, false,
                                         {"ghost1_w_primary", "ghost1_b_primary", "ghost1_w_cheap", "ghost1_b_cheap",
                                          "dw_w", "dw_b", "se_reduce_w", "se_reduce_b", "se_expand_w",
                                          "se_expand_b", "ghost2_w_primary", "ghost2_b_primary", "ghost2_w_cheap",
                                          "ghost2_b_cheap", "shortcut_dw_w", "shortcut_dw_b", "shortcut_pw_w",
                                          "shortcut_pw_b"}),
              "run_step's ghost_bottleneck arguments");
static_assert(layouts::step_args_are(kChainGhostBottleneckGated, true,
                                     {"mid_channels", "act", "stride", "out_channels"}) &&
                  layouts::step_args_are(kChainGhostBottleneckGated, false,
                                         {"ghost1_w_primary", "ghost1_b_primary", "ghost1_w_cheap", "ghost1_b_cheap",
                                          "gate_w_reduce", "gate_b_reduce", "gate_w_h", "gate_b_h", "gate_w_v",
                                          "gate_b_v", "dw_w", "dw_b", "se_reduce_w", "se_reduce_b", "se_expand_w",
                                          "se_expand_b", "ghost2_w_primary", "ghost2_b_primary", "ghost2_w_cheap",
                                          "ghost2_b_cheap", "shortcut_dw_w", "shortcut_dw_b", "shortcut_pw_w",
                                          "shortcut_pw_b"}),
              "run_step's ghost_bottleneck_gated arguments");
static_assert(layouts::step_args_are(kChainMeanHW, true, {}) && layouts::step_args_are(kChainMeanHW, false, {}),
              "run_step's mean_hw arguments");
static_assert(layouts::step_args_are(kChainLinearAct, true, {"act"}) &&
                  layouts::step_args_are(kChainLinearAct, false, {"w", "b"}),
              "run_step's linear_act arguments");

// "0 (a), 1 (b) or 2 (c)" for codes 0 .. n-1 and their names, for the error messages.
template <typename NameOf>
std::string codes_and_names(int64_t n, NameOf&& name_of) {
  std::string out;
  for (int64_t code = 0; code < n; ++code) {
    if (code > 0) out += code + 1 < n ? ", " : " or ";
    out += std::to_string(code) + " (" + std::string(name_of(code)) + ")";
  }
  return out;
}

// One decoded step: where its integers and tensors start.
struct Step {
  int64_t op, ints, tensors;
};

// Decodes and checks the program's structure (not the tensors' shapes: each step's kernel checks those).
std::vector<Step> decode(c10::IntArrayRef program, const std::vector<OptTensor>& tensors) {
  std::vector<Step> steps;
  int64_t pc = 0, t = 0;
  const int64_t n = static_cast<int64_t>(program.size());
  while (pc < n) {
    const int64_t i = static_cast<int64_t>(steps.size()), op = program[pc];
    TORCH_CHECK_VALUE(op >= 0 && op < layouts::kNumChainSteps, kOp, ": step ", i, " (program[", pc, "]) has opcode ",
                      op, "; expected ",
                      codes_and_names(layouts::kNumChainSteps, [](int64_t c) { return kChainSteps[c].name; }));
    const layouts::ChainStep& layout = kChainSteps[op];
    TORCH_CHECK_VALUE(pc + 1 + layout.n_ints <= n, kOp, ": step ", i, " (", layout.name, ") needs ", layout.n_ints,
                      " integer(s) after its opcode; the program ends after ", n - pc - 1);
    TORCH_CHECK_VALUE(t + layout.n_tensors <= static_cast<int64_t>(tensors.size()), kOp, ": step ", i, " (",
                      layout.name, ") needs ", layout.n_tensors, " tensor(s); only ", tensors.size() - t, " of ",
                      tensors.size(), " are left");
    for (int64_t k = 0; k < layout.n_tensors; ++k) {
      TORCH_CHECK_VALUE(layout.tensors[k].optional || tensors[t + k].has_value(), kOp, ": step ", i, " (",
                        layout.name, ") tensor ", k, " (tensors[", t + k, "]) is None where a tensor is required");
    }
    const int64_t* a = program.data() + pc + 1;
    for (int64_t k = 0; k < layout.n_ints; ++k) {
      if (layout.ints[k] != "act") continue;
      TORCH_CHECK_VALUE(a[k] >= 0 && a[k] < layouts::kNumActs, kOp, ": step ", i, " (", layout.name,
                        ") has activation code ", a[k], "; expected ",
                        codes_and_names(layouts::kNumActs, [](int64_t c) { return kActNames[c]; }));
    }
    steps.push_back({op, pc + 1, t});
    pc += 1 + layout.n_ints;
    t += layout.n_tensors;
  }
  TORCH_CHECK_VALUE(!steps.empty(), kOp, ": the program is empty");
  TORCH_CHECK_VALUE(t == static_cast<int64_t>(tensors.size()), kOp, ": the program's ", steps.size(),
                    " steps take ", t, " tensors, but ", tensors.size(), " were given");
  return steps;
}

// The name each step has in torch.profiler's trace (a user scope per step, so a profile of a frozen network shows
// where its forward goes; the scope costs a flag test when no profiler runs).
const char* profiler_name(int64_t op) {
  switch (op) {
    case kChainConv2dAct: return "ghostkernels::chain/conv2d_act";
    case kChainGhostBottleneck: return "ghostkernels::chain/ghost_bottleneck";
    case kChainGhostBottleneckGated: return "ghostkernels::chain/ghost_bottleneck_gated";
    case kChainMeanHW: return "ghostkernels::chain/mean_hw";
    case kChainLinearAct:
    default: return "ghostkernels::chain/linear_act";
  }
}

at::Tensor run_step(const Step& s, c10::IntArrayRef program, const std::vector<OptTensor>& ts, const at::Tensor& x) {
  RECORD_USER_SCOPE(profiler_name(s.op));
  const int64_t* a = program.data() + s.ints;
  const auto T = [&](int64_t k) -> const at::Tensor& { return *ts[s.tensors + k]; };
  const auto O = [&](int64_t k) -> const OptTensor& { return ts[s.tensors + k]; };
  switch (s.op) {
    case kChainConv2dAct:
      return cpu::conv2d_act_cpu(x, T(0), T(1), a[0], kActNames[a[1]]);
    case kChainGhostBottleneck:
      return cpu::ghost_bottleneck_cpu(x, T(0), T(1), T(2), T(3), /*mid=*/a[0], kActNames[a[1]], O(4), O(5),
                                       /*stride=*/a[2], O(6), O(7), O(8), O(9), T(10), T(11), T(12), T(13),
                                       /*out_channels=*/a[3], O(14), O(15), O(16), O(17));
    case kChainGhostBottleneckGated:
      return cpu::ghost_bottleneck_gated_cpu(x, T(0), T(1), T(2), T(3), /*mid=*/a[0], kActNames[a[1]], T(4), T(5),
                                             T(6), T(7), T(8), T(9), O(10), O(11), /*stride=*/a[2], O(12), O(13),
                                             O(14), O(15), T(16), T(17), T(18), T(19), /*out_channels=*/a[3], O(20),
                                             O(21), O(22), O(23));
    case kChainMeanHW:
      return cpu::mean_hw(x);
    case kChainLinearAct:
    default:
      return cpu::linear_act_cpu(x, T(0), T(1), kActNames[a[0]]);
  }
}

// The whole program on x, one step after another (each step parallel inside unless called from a parallel region).
at::Tensor run_program(const std::vector<Step>& steps, c10::IntArrayRef program, const std::vector<OptTensor>& tensors,
                       const at::Tensor& x) {
  at::Tensor y = x;
  for (size_t i = 0; i < steps.size(); ++i) {
    try {
      // Every step's output but the last dies inside the chain, so they may reuse pool blocks of other sizes; the
      // last one is returned to the caller and gets a block of its own size (util_tensor_pool.h).
      std::optional<cpu::TransientAllocationScope> transient;
      if (i + 1 < steps.size()) transient.emplace();
      y = run_step(steps[i], program, tensors, y);
    } catch (c10::Error& e) {
      // The step's own message (e.g. a shape mismatch) keeps its Python exception type; this says where it was.
      e.add_context(std::string(kOp) + ": in step " + std::to_string(i) + " (" +
                    std::string(kChainSteps[steps[i].op].name) + ")");
      throw;
    }
  }
  return y;
}

at::Tensor chain_cpu(const at::Tensor& x, const c10::List<OptTensor>& tensor_list, c10::IntArrayRef program) {
  const std::vector<OptTensor> tensors = tensor_list.vec();
  const std::vector<Step> steps = decode(program, tensors);
  const int64_t N = x.dim() > 0 ? x.size(0) : 0, slices = cpu::image_slices(N, kOp);
  if (slices == 1) return run_program(steps, program, tensors, x);
  // One slice per thread, each running the whole network (util_image_split.h).
  std::vector<at::Tensor> outs(slices);
  cpu::for_each_image_slice(N, slices, [&](int64_t t, int64_t n0, int64_t n) {
    outs[t] = run_program(steps, program, tensors, x.narrow(0, n0, n));
  });
  // The slices' outputs as one tensor of the whole batch (GhostNet's logits: a few kilobytes).
  return at::cat(outs, 0);
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) { m.impl("chain", &chain_cpu); }

}  // namespace ghostkernels
