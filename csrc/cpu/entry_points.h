// The C++ functions that one file of csrc/cpu defines and another calls, declared once.
//
// Two kinds. The CPU functions of the inference ops: what the op registrations (TORCH_LIBRARY_IMPL in op_*.cpp)
// bind, callable from C++ without the dispatcher; each validates its arguments exactly as the op does, so that
// ghostkernels::chain (op_chain.cpp), which runs a whole network as one op call, can call them directly. And the
// launchers (launch_*.cpp): they take checked CPU tensors, pick a kernel (util_kernel_choice.h) and run it; their
// op's binding calls them once the arguments are checked, and so do the ops made of other ops' pieces (the
// bottleneck runs Ghost modules, depthwise and 1x1 convolutions). Each declaration says where it is defined and who
// calls it; the schemas are in csrc/ghost_module.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

#include "../activations.h"
#include "../ghost_module_check.h"

namespace ghostkernels {
namespace cpu {

// ---- The inference ops' CPU functions ------------------------------------------------------------------------

// ghostkernels::ghost_bottleneck (op_ghost_bottleneck.cpp). Called by op_chain.cpp (a chain's ghost_bottleneck step).
at::Tensor ghost_bottleneck_cpu(const at::Tensor& x, const at::Tensor& g1w1, const at::Tensor& g1b1,
                                const at::Tensor& g1w2, const at::Tensor& g1b2, int64_t mid, c10::string_view act,
                                const std::optional<at::Tensor>& dw_w, const std::optional<at::Tensor>& dw_b,
                                int64_t stride, const std::optional<at::Tensor>& se_rw,
                                const std::optional<at::Tensor>& se_rb, const std::optional<at::Tensor>& se_ew,
                                const std::optional<at::Tensor>& se_eb, const at::Tensor& g2w1,
                                const at::Tensor& g2b1, const at::Tensor& g2w2, const at::Tensor& g2b2,
                                int64_t out_channels, const std::optional<at::Tensor>& sc_dw_w,
                                const std::optional<at::Tensor>& sc_dw_b, const std::optional<at::Tensor>& sc_pw_w,
                                const std::optional<at::Tensor>& sc_pw_b);

// ghostkernels::ghost_bottleneck_gated (op_ghost_bottleneck.cpp): ghost_bottleneck with ghost1 gated by dfc_gate(x,
// gate_*). Called by op_chain.cpp (a chain's ghost_bottleneck_gated step).
at::Tensor ghost_bottleneck_gated_cpu(const at::Tensor& x, const at::Tensor& g1w1, const at::Tensor& g1b1,
                                      const at::Tensor& g1w2, const at::Tensor& g1b2, int64_t mid,
                                      c10::string_view act, const at::Tensor& gate_w_reduce,
                                      const at::Tensor& gate_b_reduce, const at::Tensor& gate_w_h,
                                      const at::Tensor& gate_b_h, const at::Tensor& gate_w_v,
                                      const at::Tensor& gate_b_v, const std::optional<at::Tensor>& dw_w,
                                      const std::optional<at::Tensor>& dw_b, int64_t stride,
                                      const std::optional<at::Tensor>& se_rw, const std::optional<at::Tensor>& se_rb,
                                      const std::optional<at::Tensor>& se_ew, const std::optional<at::Tensor>& se_eb,
                                      const at::Tensor& g2w1, const at::Tensor& g2b1, const at::Tensor& g2w2,
                                      const at::Tensor& g2b2, int64_t out_channels,
                                      const std::optional<at::Tensor>& sc_dw_w,
                                      const std::optional<at::Tensor>& sc_dw_b,
                                      const std::optional<at::Tensor>& sc_pw_w,
                                      const std::optional<at::Tensor>& sc_pw_b);

// ghostkernels::conv2d_act (op_conv2d_act.cpp). Called by op_chain.cpp (a chain's conv2d_act step).
at::Tensor conv2d_act_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                          c10::string_view act);

// ghostkernels::linear_act (op_linear_act.cpp). Called by op_chain.cpp (a chain's linear_act step).
at::Tensor linear_act_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, c10::string_view act);

// ---- Launchers ---------------------------------------------------------------------------------------------------

// The CPU forward of ghostkernels::ghost_module (launch_ghost_forward.cpp). Called by its binding
// (op_ghost_module.cpp), by the bottleneck (launch_ghost_bottleneck.cpp: both of its Ghost modules; the second one
// adds the shortcut as `residual` and writes into the bottleneck's output as `into`) and by pointwise_conv
// (launch_pointwise_conv.cpp: bfloat16 1x1 convolutions, as a Ghost module with no cheap half).
// out = ghost_module(x, ...) for inputs already checked by check_ghost_inputs (d is what it returned) and on the
// CPU, plus `residual` when it is defined (a tensor of the output's shape and dtype, added after the activation).
// The output is written into `into` when that is defined (a tensor of the output's shape and dtype, e.g. a slice of
// a larger batch), else into a new tensor in the contract's memory format from the CPU block pool
// (util_tensor_pool.h). With `gate` defined (a map [N, oc, Hg, Wg], any floating dtype) the output is
// ghost_module_gated's: both halves multiplied by the nearest-upsampled map (before `residual` is added); called so by
// the gated op's binding (op_ghost_module.cpp) and the gated bottleneck. A float32 contiguous map is read in place,
// and the AVX-512 kernel may read up to 31 floats past a plane, within the map's storage (dfc_gate_map leaves slack
// there).
at::Tensor ghost_forward(const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
                         const at::Tensor& w_cheap, const at::Tensor& b_cheap, const GhostDims& d,
                         const at::Tensor& residual, const at::Tensor& into, const at::Tensor& gate = at::Tensor());

// The CPU map of ghostkernels::dfc_gate (launch_dfc_gate.cpp). Called by its binding (op_dfc_gate.cpp) and by the
// gated bottleneck (launch_ghost_bottleneck.cpp: ghost1's map, handed to ghost_forward). For inputs checked by
// check_dfc_gate_inputs (d is what it returned), on the CPU. float_map: the map as float32 [N, O, Hg, Wg], contiguous,
// with slack after its last plane for ghost_forward's window loads; else the op's output (x's dtype, the contract's
// memory format). float32 and bfloat16 NCHW run on the AVX-512 kernel (kernel_dfc_gate_avx512.h), the rest on ATen.
at::Tensor dfc_gate_map(const at::Tensor& x, const at::Tensor& w_reduce, const at::Tensor& b_reduce,
                        const at::Tensor& w_h, const at::Tensor& b_h, const at::Tensor& w_v, const at::Tensor& b_v,
                        const GateDims& d, bool float_map);

// One train-mode BatchNorm stage as the train-BN ops take it (csrc/ghost_module.cpp): xhat = (z - mean) * invstd,
// y = weight * xhat + bias, each [channels], contiguous, in the stats dtype (float64 for float64 inputs, else
// float32).
struct BnStage {
  at::Tensor mean, invstd, weight, bias;
};

// What ghostkernels::ghost_bn_backward adds to ghost_module_backward's arguments: z1 (conv1x1(x, w_primary), not
// recomputed), both stages' BN and the BN backward's batch means (mean_dy, mean_dy_xhat) of each stage.
struct BnBackwardArgs {
  at::Tensor z1;
  BnStage primary, cheap;
  at::Tensor mean_dy_primary, mean_dy_xhat_primary, mean_dy_cheap, mean_dy_xhat_cheap;
};

// The CPU backward of ghostkernels::ghost_module (launch_ghost_backward.cpp). Called by the binding of
// ghostkernels::ghost_module_backward (op_ghost_module.cpp), which the op's autograd formula calls, and with `bn` by
// the binding of ghostkernels::ghost_bn_backward (op_ghost_bn.cpp).
// The gradients of (x, w_primary, b_primary, w_cheap, b_cheap) for grad_out [N, oc, H, W] of x's dtype and device
// and inputs already checked by check_ghost_inputs (d is what it returned) on the CPU; grad_x in the contract's
// memory format. With `bn`, the train-mode BN backward of ghost_bn_backward: the weights are the raw convolutions'
// (b_primary and b_cheap unused, and the returned bias gradients meaningless), z1 is taken from bn->z1, and the
// weight gradients are in the stats dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ghost_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
    const at::Tensor& w_cheap, const at::Tensor& b_cheap, const GhostDims& d, const BnBackwardArgs* bn = nullptr);

// ---- The train-mode BatchNorm passes (csrc/ghost_module.cpp has their math; bindings in op_ghost_bn.cpp) -------

// ghostkernels::ghost_bn_conv1x1_stats (launch_bn_conv1x1_stats.cpp): (z1, mean, var) for checked CPU inputs.
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_conv1x1_stats(const at::Tensor& x, const at::Tensor& w_primary,
                                                                 const GhostDims& d);

// The passes that start from z1 (launch_bn_z1_passes.cpp); d.C is unused, d.oc is the slice (the whole width for
// the statistics pass).
// ghostkernels::ghost_bn_cheap_stats: (mean, var) of z2.
std::tuple<at::Tensor, at::Tensor> bn_cheap_stats(const at::Tensor& z1, const BnStage& primary,
                                                  const at::Tensor& w_cheap, const GhostDims& d);
// ghostkernels::ghost_bn_forward_out: the module's output.
at::Tensor bn_forward_out(const at::Tensor& z1, const BnStage& primary, const at::Tensor& w_cheap,
                          const BnStage& cheap, const GhostDims& d);
// ghostkernels::ghost_bn_backward_reduce: (sums_primary [2, I], sums_cheap [8, I*M]).
std::tuple<at::Tensor, at::Tensor> bn_backward_reduce(const at::Tensor& grad_out, const at::Tensor& z1,
                                                      const BnStage& primary, const at::Tensor& w_cheap,
                                                      const BnStage& cheap, const GhostDims& d);

// The CPU depthwise convolution (launch_depthwise_conv.cpp). Called by the bottleneck (launch_ghost_bottleneck.cpp:
// conv_dw and the shortcut's depthwise conv) and by the binding of the internal op ghostkernels::_depthwise_conv2d
// (op_depthwise_conv2d.cpp), through which the tests reach it.
// act(conv2d(x, w, b, stride, padding = K // 2, groups = C)) for x [N, C, H, W], w [C, 1, K, K] (odd K), b [C], on
// checked CPU inputs of one floating dtype. The AVX-512 kernel (kernel_depthwise_avx512.h) runs float32 and bfloat16
// NCHW with K in {1, 3, 5, 7} and stride 1 or 2 (output from the CPU block pool); anything else runs on ATen's
// convolution. When plane_sums is not null it receives a [N, C] tensor, float32 (float64 for float64 x): the sum of
// each output plane (what a squeeze-excite that follows needs).
at::Tensor depthwise_conv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride, Act act,
                          at::Tensor* plane_sums = nullptr);

// The fused front of a stride-2 bottleneck (launch_ghost_dw_front.cpp). Called by the bottleneck
// (launch_ghost_bottleneck.cpp) for its ghost1 and conv_dw where ghost_dw_front_applies (float32, or bfloat16
// on CPUs with AVX-512 BF16 for ghost1 planes of 56x56 and more, contiguous NCHW, the AVX-512 kernels for ghost1's and conv_dw's kernel sizes, GHOSTKERNELS_CPU_FUSED_FRONT not "0", a non-empty
// output): depthwise_conv(ghost_forward(x, ...), dw_w, dw_b, stride, identity) with ghost1's output never in memory,
// for inputs the bottleneck's checks passed (d1: ghost1's sizes; gate: ghost1's DFC map as ghost_forward takes it,
// or undefined). Returns conv_dw's output [N, oc, Ho, Wo] from the CPU block pool, and *plane_sums (when not null)
// its planes' sums [N, oc] in float32, as depthwise_conv's.
bool ghost_dw_front_applies(const at::Tensor& x, const GhostDims& d1, int64_t K_dw, int64_t stride);
at::Tensor ghost_dw_front(const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
                          const at::Tensor& w_cheap, const at::Tensor& b_cheap, const GhostDims& d1,
                          const at::Tensor& gate, const at::Tensor& dw_w, const at::Tensor& dw_b, int64_t stride,
                          at::Tensor* plane_sums);

// Checks the weight w, bias b and stride of a depthwise convolution over `x` (its channel count, dtype and device
// are what matter, so a meta tensor will do), naming `op` and `what` (e.g. "conv_dw") in the messages
// (launch_depthwise_conv.cpp). Called by the bottleneck's argument checks (op_ghost_bottleneck.cpp: conv_dw, the
// shortcut's depthwise conv) and by the _depthwise_conv2d binding (op_depthwise_conv2d.cpp).
void check_depthwise_inputs(const char* op, const char* what, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b, int64_t stride);

// The CPU 1x1 convolution with bias and activation (launch_pointwise_conv.cpp). Called by the bottleneck
// (launch_ghost_bottleneck.cpp: its shortcut) and by conv2d_act_forward with k = 1 (launch_conv2d_act.cpp:
// GhostNet's last ConvBnAct).
// act(conv1x1(s, w) + b) for s [N, C, H, W], w [O, C, 1, 1], b [O] (checked, one dtype). float32 NCHW runs on the
// Ghost-module kernel's AVX-512 GEMM (output from the CPU block pool; no layout reorder, no BLAS call per image),
// work items (image, 256-pixel chunk, block of output channels) so that a 7x7 image still feeds every thread;
// bfloat16 NCHW on the Ghost-module kernel itself with no cheap half (its bf16 dot-product GEMM); anything else on
// ATen's convolution.
at::Tensor pointwise_conv(const at::Tensor& s, const at::Tensor& w, const at::Tensor& b, Act act);

// The launcher of ghostkernels::conv2d_act (launch_conv2d_act.cpp). Called by its binding (op_conv2d_act.cpp) once
// the arguments are checked: act(conv2d(x, w, b, stride, padding k//2)) for contiguous x [N, C, H, W] on the CPU.
at::Tensor conv2d_act_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                              Act act);

// The launcher of ghostkernels::linear_act (launch_linear_act.cpp). Called by its binding (op_linear_act.cpp) once
// the arguments are checked: act(x @ w^T + b) for x [N, K] on the CPU.
at::Tensor linear_act_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, Act act);

// ghostkernels::ghost_bottleneck's arguments, by role (the schema's order), as its binding received them; for
// ghost_bottleneck_gated also ghost1's gate (dfc_gate's six weights in its schema's order; all nullptr otherwise).
struct BottleneckArgs {
  const at::Tensor &x, &g1w1, &g1b1, &g1w2, &g1b2;
  int64_t mid;
  c10::string_view act;
  const std::optional<at::Tensor> &dw_w, &dw_b;
  int64_t stride;
  const std::optional<at::Tensor> &se_rw, &se_rb, &se_ew, &se_eb;
  const at::Tensor &g2w1, &g2b1, &g2w2, &g2b2;
  int64_t out_channels;
  const std::optional<at::Tensor> &sc_dw_w, &sc_dw_b, &sc_pw_w, &sc_pw_b;
  std::array<const at::Tensor*, 6> gate{};
};

// The shapes and options of one ghost_bottleneck(_gated) call, validated (op_ghost_bottleneck.cpp's checks).
struct BottleneckDims {
  GhostDims ghost1, ghost2;
  int64_t stride, Ho, Wo;
  bool has_dw, has_se, has_shortcut;
  bool gated;
  GateDims gate;  // when gated
};

// The launcher of ghostkernels::ghost_bottleneck (launch_ghost_bottleneck.cpp). Called by its binding
// (op_ghost_bottleneck.cpp) once the arguments are checked (d is what the checks returned): the block's output.
at::Tensor ghost_bottleneck_forward(const BottleneckArgs& a, const BottleneckDims& d);

// The bottleneck's squeeze-excite, in place (launch_squeeze_excite.cpp). Called by launch_ghost_bottleneck.cpp.
// y *= hardsigmoid(W_e . relu(W_r . mean_hw(y) + b_r) + b_e) per image and channel, for contiguous y [N, C, H, W];
// `sums` is [N, C], each plane's sum where the depthwise conv before it produced them (depthwise_conv's
// plane_sums), or undefined (then the means are computed here).
void squeeze_excite_(at::Tensor& y, const at::Tensor& sums, const at::Tensor& rw, const at::Tensor& rb,
                     const at::Tensor& ew, const at::Tensor& eb);

// Global average pooling and flatten, [N, C, H, W] -> [N, C] (launch_mean_hw.cpp). Called by op_chain.cpp (a
// chain's mean_hw step); it checks its input itself, as the step has no op of its own.
at::Tensor mean_hw(const at::Tensor& x);

}  // namespace cpu
}  // namespace ghostkernels
