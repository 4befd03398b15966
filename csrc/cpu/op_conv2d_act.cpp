// ghostkernels::conv2d_act on the CPU: act(conv2d(x, w, b, stride, padding k//2)), inference only. The binding: it
// checks the arguments and calls the launcher, conv2d_act_forward (launch_conv2d_act.cpp).
//
// Why an op for one convolution: GhostNet's stem (3 -> 16 channels, 3x3, stride 2, BatchNorm, ReLU) is the only
// layer before the first bottleneck, and in eager PyTorch it is three calls: an NCHW oneDNN convolution that is slow
// at batch 8, and two 800 KB-per-image outputs from glibc, which in some processes hands those pages back to the
// system after every forward so that they fault in again on the next; its last stage (a 1x1 ConvBnAct at 7x7) ran on
// ATen's slow_conv2d at batch 1 (bench/NOTES.md, entries 17 and 18). Here the BatchNorm is folded into w and b by
// the caller (FusedStemConv, FusedConvBnAct), the activation is applied in the output pass, and the output comes
// from the CPU block pool.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include "../activations.h"
#include "../ghost_module_check.h"
#include "entry_points.h"
#include "kernel_depthwise_avx512.h"  // depthwise_output_size: the output size of every convolution here

namespace ghostkernels {
namespace {

constexpr const char* kOp = "ghostkernels::conv2d_act (CPU)";

void check_inputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride) {
  TORCH_CHECK_VALUE(x.dim() == 4, kOp, ": x must be 4-D [N, C, H, W], got shape ", x.sizes());
  const int64_t C = x.size(1);
  TORCH_CHECK_VALUE(w.dim() == 4 && w.size(1) == C && w.size(2) == w.size(3), kOp, ": w must be [out, ", C,
                    ", k, k] for a ", C, "-channel x (groups 1, square kernel), got shape ", w.sizes());
  TORCH_CHECK_VALUE(w.size(0) > 0, kOp, ": w must have at least one output channel, got shape ", w.sizes());
  TORCH_CHECK_VALUE(w.size(2) % 2 == 1, kOp, ": the kernel size must be odd (padding k//2), got k=", w.size(2));
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == w.size(0), kOp, ": b must be [", w.size(0), "], got shape ",
                    b.sizes());
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, kOp, ": stride must be 1 or 2, got ", stride);
  check_like_x(kOp, x, w, "w");
  check_like_x(kOp, x, b, "b");
  TORCH_CHECK_VALUE(x.device().is_cpu(), kOp, ": expected CPU tensors, got ", x.device(),
                    " (the op has a CPU kernel only; FusedConvBnAct runs its layers elsewhere)");
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kDouble || t == at::kFloat || t == at::kBFloat16, kOp,
                   ": supported dtypes are float64, float32 and bfloat16, got ", t);
  const int64_t K = w.size(2), Ho = cpu::depthwise_output_size(x.size(2), K, stride),
                Wo = cpu::depthwise_output_size(x.size(3), K, stride);
  TORCH_CHECK_VALUE(Ho > 0 && Wo > 0, kOp, ": x's ", x.size(2), "x", x.size(3), " image is too small for a ", K,
                    "x", K, " kernel with padding ", K / 2);
}

}  // namespace

namespace cpu {

at::Tensor conv2d_act_cpu(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                          c10::string_view act_name) {
  const Act act = parse_act(act_name);
  check_inputs(x_in, w, b, stride);
  const at::Tensor x = x_in.contiguous();
  return conv2d_act_forward(x, w, b, stride, act);
}

}  // namespace cpu

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) { m.impl("conv2d_act", &cpu::conv2d_act_cpu); }

}  // namespace ghostkernels
