// The C++ side's named ABI tables, defined once: the activation codes and their names, and the layout of each step
// of a ghostkernels::chain program.
//
// Why a table: the same facts were spelled out in several places (the act-name parsing, the chain decoder's opcode
// names, argument counts and optional positions), and a change to one of them would have gone unnoticed by the
// others. Now the kernels' act parsing (ghost_module_check.cpp) and the chain decoder (cpu/op_chain.cpp) read these
// tables, and ghostkernels::_layouts (ghost_module.cpp) returns them as JSON so that the Python side can compare its
// own tables (and the registered op schemas) with them.
//
// Torch-free and constexpr (C++17), so that any file, kernels included, can use it.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <string_view>

#include "activations.h"

namespace ghostkernels {
namespace layouts {

// ---- Activations: the code of an activation is its index here and its value in the Act enum (activations.h). ----

inline constexpr std::string_view kActNames[] = {"identity", "relu", "relu6", "silu", "hardswish"};
inline constexpr int64_t kNumActs = static_cast<int64_t>(std::size(kActNames));

static_assert(kNumActs == 5 && kActNames[static_cast<int>(Act::Identity)] == "identity" &&
                  kActNames[static_cast<int>(Act::ReLU)] == "relu" &&
                  kActNames[static_cast<int>(Act::ReLU6)] == "relu6" &&
                  kActNames[static_cast<int>(Act::SiLU)] == "silu" &&
                  kActNames[static_cast<int>(Act::HardSwish)] == "hardswish",
              "kActNames must list the Act enum's activations in the order of their values");

// ---- ghostkernels::chain steps --------------------------------------------------------------------------------
//
// A program is a list of steps, each its opcode followed by its integers; each step takes its tensors from the
// op's `tensors` list in order, and its input from the step before. A step computes what the op it is named after
// computes (mean_hw, which has no op, pools [N, C, H, W] to [N, C]); its integers and its tensors are exactly that
// op's non-tensor and tensor arguments after x, each in the order of the op's schema (csrc/ghost_module.cpp). An
// integer named "act" is an activation code.

// A tensor a step takes; `optional` where the op's schema has Tensor? (None may stand in for it).
struct TensorArg {
  std::string_view name;
  bool optional;
};

struct ChainStep {
  int64_t opcode;
  std::string_view name;
  const std::string_view* ints;  // names of the integers after the opcode, in order
  int64_t n_ints;
  const TensorArg* tensors;      // the tensors taken from `tensors`, in order
  int64_t n_tensors;
};

inline constexpr int64_t kChainConv2dAct = 0;
inline constexpr int64_t kChainGhostBottleneck = 1;
inline constexpr int64_t kChainMeanHW = 2;
inline constexpr int64_t kChainLinearAct = 3;
inline constexpr int64_t kChainGhostBottleneckGated = 4;

inline constexpr std::string_view kConv2dActInts[] = {"stride", "act"};
inline constexpr TensorArg kConv2dActTensors[] = {{"w", false}, {"b", false}};

inline constexpr std::string_view kGhostBottleneckInts[] = {"mid_channels", "act", "stride", "out_channels"};
inline constexpr TensorArg kGhostBottleneckTensors[] = {
    {"ghost1_w_primary", false}, {"ghost1_b_primary", false}, {"ghost1_w_cheap", false}, {"ghost1_b_cheap", false},
    {"dw_w", true},              {"dw_b", true},
    {"se_reduce_w", true},       {"se_reduce_b", true},       {"se_expand_w", true},    {"se_expand_b", true},
    {"ghost2_w_primary", false}, {"ghost2_b_primary", false}, {"ghost2_w_cheap", false}, {"ghost2_b_cheap", false},
    {"shortcut_dw_w", true},     {"shortcut_dw_b", true},     {"shortcut_pw_w", true},  {"shortcut_pw_b", true}};

// ghost_bottleneck's, with ghost1's DFC gate (dfc_gate's weights) after ghost1's weights, as in its schema.
inline constexpr TensorArg kGhostBottleneckGatedTensors[] = {
    {"ghost1_w_primary", false}, {"ghost1_b_primary", false}, {"ghost1_w_cheap", false}, {"ghost1_b_cheap", false},
    {"gate_w_reduce", false},    {"gate_b_reduce", false},    {"gate_w_h", false},      {"gate_b_h", false},
    {"gate_w_v", false},         {"gate_b_v", false},
    {"dw_w", true},              {"dw_b", true},
    {"se_reduce_w", true},       {"se_reduce_b", true},       {"se_expand_w", true},    {"se_expand_b", true},
    {"ghost2_w_primary", false}, {"ghost2_b_primary", false}, {"ghost2_w_cheap", false}, {"ghost2_b_cheap", false},
    {"shortcut_dw_w", true},     {"shortcut_dw_b", true},     {"shortcut_pw_w", true},  {"shortcut_pw_b", true}};

inline constexpr std::string_view kLinearActInts[] = {"act"};
inline constexpr TensorArg kLinearActTensors[] = {{"w", false}, {"b", false}};

// Indexed by opcode.
inline constexpr ChainStep kChainSteps[] = {
    {kChainConv2dAct, "conv2d_act", kConv2dActInts, std::size(kConv2dActInts), kConv2dActTensors,
     std::size(kConv2dActTensors)},
    {kChainGhostBottleneck, "ghost_bottleneck", kGhostBottleneckInts, std::size(kGhostBottleneckInts),
     kGhostBottleneckTensors, std::size(kGhostBottleneckTensors)},
    {kChainMeanHW, "mean_hw", nullptr, 0, nullptr, 0},
    {kChainLinearAct, "linear_act", kLinearActInts, std::size(kLinearActInts), kLinearActTensors,
     std::size(kLinearActTensors)},
    {kChainGhostBottleneckGated, "ghost_bottleneck_gated", kGhostBottleneckInts, std::size(kGhostBottleneckInts),
     kGhostBottleneckGatedTensors, std::size(kGhostBottleneckGatedTensors)},
};
inline constexpr int64_t kNumChainSteps = static_cast<int64_t>(std::size(kChainSteps));

// Whether step `op`'s integers (ints = true) or tensors are named `names`, in order: for the code that passes them on
// by position (cpu/op_chain.cpp) to pin down the positions it uses.
constexpr bool step_args_are(int64_t op, bool ints, std::initializer_list<std::string_view> names) {
  const ChainStep& s = kChainSteps[op];
  if ((ints ? s.n_ints : s.n_tensors) != static_cast<int64_t>(names.size())) return false;
  int64_t i = 0;
  for (const std::string_view n : names) {
    if ((ints ? s.ints[i] : s.tensors[i].name) != n) return false;
    ++i;
  }
  return true;
}

static_assert([] {
  for (int64_t op = 0; op < kNumChainSteps; ++op) {
    if (kChainSteps[op].opcode != op) return false;
  }
  return true;
}(), "kChainSteps must be indexed by opcode");

}  // namespace layouts
}  // namespace ghostkernels
