// ghostkernels::chain on the CPU: a chain of this library's inference ops (a whole GhostNet) in one op call.
//
// Why: at batch 1 a fused GhostNet is ~20 op calls of 20-250 us each, and between them Python runs a module call
// per block (hooks, the fold cache, the argument list) plus the dispatcher's work per op. Each of those steps reads
// Python objects and tensor metadata that the kernels' traffic has pushed out of the caches since the last
// forward, so inside a forward they cost several times what they cost in a loop: ~0.6 ms of a ~4 ms forward
// (bench/NOTES.md, entry 23). Here the network is one call: the steps run back to back in C++, calling the ops'
// CPU functions directly (entry_points.h), each with the same validation and the same numerics as the op itself;
// only the global average pool (a plain loop here, ATen's pooling in the network's own forward) may round
// differently. ghostkernels.freeze() builds the program from a fused network (ghostkernels/frozen.py); the schema
// and the program's encoding are in csrc/ghost_module.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "entry_points.h"
#include "util_tensor_pool.h"

namespace ghostkernels {
namespace {

constexpr const char* kOp = "ghostkernels::chain (CPU)";

using OptTensor = std::optional<at::Tensor>;

// Opcodes and activation codes: the ABI with ghostkernels/_registration.py (_CHAIN_STEPS) and reference.py (ACTS).
enum Opcode : int64_t { kConv2dAct = 0, kBottleneck = 1, kMeanHW = 2, kLinearAct = 3 };
constexpr const char* kOpNames[] = {"conv2d_act", "ghost_bottleneck", "mean_hw", "linear_act"};
constexpr int64_t kIntArgs[] = {2, 4, 0, 1};       // integers after the opcode
constexpr int64_t kTensorArgs[] = {2, 18, 0, 2};   // tensors taken from `tensors`
constexpr const char* kActNames[] = {"identity", "relu", "relu6", "silu", "hardswish"};
constexpr int64_t kNumActs = 5;

// ghost_bottleneck's 18 tensors in schema order; these positions may be None (the rest may not).
constexpr bool kBottleneckOptional[18] = {false, false, false, false,  // ghost1
                                          true,  true,                 // conv_dw
                                          true,  true,  true,  true,   // squeeze-excite
                                          false, false, false, false,  // ghost2
                                          true,  true,  true,  true};  // shortcut

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
    TORCH_CHECK_VALUE(op >= 0 && op <= kLinearAct, kOp, ": step ", i, " (program[", pc, "]) has opcode ", op,
                      "; expected 0 (conv2d_act), 1 (ghost_bottleneck), 2 (mean_hw) or 3 (linear_act)");
    TORCH_CHECK_VALUE(pc + 1 + kIntArgs[op] <= n, kOp, ": step ", i, " (", kOpNames[op], ") needs ", kIntArgs[op],
                      " integer(s) after its opcode; the program ends after ", n - pc - 1);
    TORCH_CHECK_VALUE(t + kTensorArgs[op] <= static_cast<int64_t>(tensors.size()), kOp, ": step ", i, " (",
                      kOpNames[op], ") needs ", kTensorArgs[op], " tensor(s); only ", tensors.size() - t, " of ",
                      tensors.size(), " are left");
    for (int64_t k = 0; k < kTensorArgs[op]; ++k) {
      const bool optional = op == kBottleneck && kBottleneckOptional[k];
      TORCH_CHECK_VALUE(optional || tensors[t + k].has_value(), kOp, ": step ", i, " (", kOpNames[op],
                        ") tensor ", k, " (tensors[", t + k, "]) is None where a tensor is required");
    }
    const int64_t* a = program.data() + pc + 1;
    const auto check_act = [&](int64_t code) {
      TORCH_CHECK_VALUE(code >= 0 && code < kNumActs, kOp, ": step ", i, " (", kOpNames[op], ") has activation code ",
                        code, "; expected 0 (identity), 1 (relu), 2 (relu6), 3 (silu) or 4 (hardswish)");
    };
    if (op == kConv2dAct) check_act(a[1]);
    if (op == kBottleneck) check_act(a[1]);
    if (op == kLinearAct) check_act(a[0]);
    steps.push_back({op, pc + 1, t});
    pc += 1 + kIntArgs[op];
    t += kTensorArgs[op];
  }
  TORCH_CHECK_VALUE(!steps.empty(), kOp, ": the program is empty");
  TORCH_CHECK_VALUE(t == static_cast<int64_t>(tensors.size()), kOp, ": the program's ", steps.size(),
                    " steps take ", t, " tensors, but ", tensors.size(), " were given");
  return steps;
}

at::Tensor run_step(const Step& s, c10::IntArrayRef program, const std::vector<OptTensor>& ts, const at::Tensor& x) {
  const int64_t* a = program.data() + s.ints;
  const auto T = [&](int64_t k) -> const at::Tensor& { return *ts[s.tensors + k]; };
  const auto O = [&](int64_t k) -> const OptTensor& { return ts[s.tensors + k]; };
  switch (s.op) {
    case kConv2dAct:
      return cpu::conv2d_act_cpu(x, T(0), T(1), a[0], kActNames[a[1]]);
    case kBottleneck:
      return cpu::ghost_bottleneck_cpu(x, T(0), T(1), T(2), T(3), /*mid=*/a[0], kActNames[a[1]], O(4), O(5),
                                       /*stride=*/a[2], O(6), O(7), O(8), O(9), T(10), T(11), T(12), T(13),
                                       /*out_channels=*/a[3], O(14), O(15), O(16), O(17));
    case kMeanHW:
      return cpu::mean_hw(x);
    case kLinearAct:
    default:
      return cpu::linear_act_cpu(x, T(0), T(1), kActNames[a[0]]);
  }
}

at::Tensor chain_cpu(const at::Tensor& x, const c10::List<OptTensor>& tensor_list, c10::IntArrayRef program) {
  const std::vector<OptTensor> tensors = tensor_list.vec();
  const std::vector<Step> steps = decode(program, tensors);
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
      e.add_context(std::string(kOp) + ": in step " + std::to_string(i) + " (" + kOpNames[steps[i].op] + ")");
      throw;
    }
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) { m.impl("chain", &chain_cpu); }

}  // namespace ghostkernels
