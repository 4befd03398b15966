// The CPU 1x1 convolution with bias and activation used by the inference ops: the bottleneck's shortcut
// (op_ghost_bottleneck.cpp) and conv2d_act with k = 1 (GhostNet's last ConvBnAct, op_conv2d_act.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include "../activations.h"

namespace ghostkernels {
namespace cpu {

// act(conv1x1(s, w) + b) for s [N, C, H, W], w [O, C, 1, 1], b [O] (checked, one dtype). float32 NCHW runs on the
// Ghost-module kernel's AVX-512 GEMM (output from the CPU block pool; no layout reorder, no BLAS call per image),
// work items (image, 256-pixel chunk, block of output channels) so that a 7x7 image still feeds every thread;
// bfloat16 NCHW on the Ghost-module kernel itself with no cheap half (its bf16 dot-product GEMM); anything else on
// ATen's convolution.
at::Tensor pointwise_conv(const at::Tensor& s, const at::Tensor& w, const at::Tensor& b, Act act);

}  // namespace cpu
}  // namespace ghostkernels
