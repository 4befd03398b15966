// Input validation and shape bookkeeping shared by the CPU and CUDA bindings.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <initializer_list>
#include <utility>

#include "activations.h"

namespace ghostkernels {

// Sizes of one ghost_module call. I = init channels (primary), M = channel multiplier of the depthwise conv
// (ratio - 1), K = depthwise kernel size, oc = out_channels kept after the slice.
struct GhostDims {
  int64_t N, C, H, W;
  int64_t I, M, K, oc;
  Act act;
  // Channels actually produced by each half after the slice.
  int64_t primary_kept() const { return oc < I ? oc : I; }
  int64_t cheap_kept() const { return oc > I ? oc - I : 0; }
};

Act parse_act(c10::string_view act);

// Raises TypeError unless t has x's dtype, ValueError unless it is on x's device; `name` names t in the message.
void check_like_x(const char* op, const at::Tensor& x, const at::Tensor& t, const char* name);

// Checks ranks, shapes, dtypes and devices of a ghost_module call and returns its sizes. `op` names the op in
// messages. Raises ValueError / TypeError (via TORCH_CHECK_VALUE / TORCH_CHECK_TYPE) naming the problem.
GhostDims check_ghost_inputs(const char* op, const at::Tensor& x, const at::Tensor& w_primary,
                             const at::Tensor& b_primary, const at::Tensor& w_cheap, const at::Tensor& b_cheap,
                             int64_t out_channels, c10::string_view act);

// ---- The train-mode BatchNorm passes (ghost_bn_* in csrc/ghost_module.cpp) ----

// Their stats dtype (of statistics, sums, per-channel vectors and conv weights) for inputs of dtype t: float64 for
// float64, float32 for everything else.
at::ScalarType bn_stats_dtype(at::ScalarType t);

// Raises unless t is a floating tensor of the stats dtype of `like` (TypeError) on like's device (ValueError) with
// the shape `sizes` (ValueError); `name` names it in the messages.
void check_bn_tensor(const char* op, const at::Tensor& like, const at::Tensor& t, at::IntArrayRef sizes,
                     const char* name);

// The 1x1 conv of ghost_bn_conv1x1_stats and ghost_bn_backward: x [N, C, H, W] (floating), w_primary [I, C, 1, 1]
// in the stats dtype. Returns the sizes (I = init, M = K = 1, oc = I, act identity).
GhostDims check_bn_conv1x1_inputs(const char* op, const at::Tensor& x, const at::Tensor& w_primary);

// The passes over z1: z1 [N, I, H, W] (floating), w_cheap [I*M, 1, k, k] (odd k) in the stats dtype, the slice
// (out_channels in [1, I*(M+1)]; -1: the whole width, for the statistics pass), the activation; and the named
// per-channel vectors of each stage ([I] for `primary`, [I*M] for `cheap`). Returns the sizes (C = I).
GhostDims check_bn_z1_inputs(const char* op, const at::Tensor& z1, const at::Tensor& w_cheap, int64_t out_channels,
                             c10::string_view act, std::initializer_list<std::pair<const at::Tensor*, const char*>> primary,
                             std::initializer_list<std::pair<const at::Tensor*, const char*>> cheap);

// grad_out of a backward pass: [N, oc, H, W] with z1's dtype and device.
void check_bn_grad_out(const char* op, const at::Tensor& grad_out, const at::Tensor& z1, const GhostDims& d);

// ghost_bn_forward_out's and ghost_bn_backward_reduce's vectors: check_bn_z1_inputs with both stages' mean, invstd,
// weight and bias (the arguments in schema order).
GhostDims check_bn_two_stage_inputs(const char* op, const at::Tensor& z1, const at::Tensor& mean1,
                                    const at::Tensor& invstd1, const at::Tensor& weight1, const at::Tensor& bias1,
                                    const at::Tensor& w_cheap, const at::Tensor& mean2, const at::Tensor& invstd2,
                                    const at::Tensor& weight2, const at::Tensor& bias2, int64_t out_channels,
                                    c10::string_view act);

// Every check of ghost_bn_backward (arguments in schema order): x and z1 of one dtype, check_bn_z1_inputs with both
// stages' six vectors, check_bn_conv1x1_inputs, z1 the shape of conv1x1(x, w_primary), grad_out. Returns the sizes
// with C = x's channels.
GhostDims check_bn_backward_inputs(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                   const at::Tensor& z1, const at::Tensor& w_primary, const at::Tensor& mean1,
                                   const at::Tensor& invstd1, const at::Tensor& weight1, const at::Tensor& bias1,
                                   const at::Tensor& mean_dy1, const at::Tensor& mean_dy_xhat1,
                                   const at::Tensor& w_cheap, const at::Tensor& mean2, const at::Tensor& invstd2,
                                   const at::Tensor& weight2, const at::Tensor& bias2, const at::Tensor& mean_dy2,
                                   const at::Tensor& mean_dy_xhat2, int64_t out_channels, c10::string_view act);

// Sizes of one dfc_gate call: x [N, C, H, W] -> the map [N, O, Hg, Wg] = [N, O, H / 2, W / 2] (floored), through
// a 1x1 conv to O channels, a depthwise (1, KH) and a depthwise (KV, 1) conv.
struct GateDims {
  int64_t N, C, H, W, O, Hg, Wg, KH, KV;
};

// Checks a dfc_gate call (mirrored by check_dfc_gate_inputs in ghostkernels/ops/validation.py) and returns its sizes.
GateDims check_dfc_gate_inputs(const char* op, const at::Tensor& x, const at::Tensor& w_reduce,
                               const at::Tensor& b_reduce, const at::Tensor& w_h, const at::Tensor& b_h,
                               const at::Tensor& w_v, const at::Tensor& b_v);

// Checks a ghost_module_gated call: ghost_module's checks, and the gate [N, out_channels, Hg, Wg] (Hg, Wg >= 1) of
// x's dtype and device (check_gated_inputs in validation.py).
GhostDims check_gated_inputs(const char* op, const at::Tensor& x, const at::Tensor& w_primary,
                             const at::Tensor& b_primary, const at::Tensor& w_cheap, const at::Tensor& b_cheap,
                             int64_t out_channels, c10::string_view act, const at::Tensor& gate);

// The output (and grad_x) memory format rule, mirrored by the fake kernels in ghostkernels/ops/registration.py:
// channels_last when x is channels_last-contiguous and not contiguous, else contiguous.
at::MemoryFormat output_memory_format(const at::Tensor& x);

}  // namespace ghostkernels
