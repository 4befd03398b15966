// The CPU depthwise convolution used by the bottleneck op (and exposed, for tests, as ghostkernels::_depthwise_conv2d).
#pragma once

#include <ATen/core/Tensor.h>

#include "../activations.h"
#include "kernel_depthwise_avx512.h"  // depthwise_output_size

namespace ghostkernels {
namespace cpu {

// act(conv2d(x, w, b, stride, padding = K // 2, groups = C)) for x [N, C, H, W], w [C, 1, K, K] (odd K), b [C], on
// checked CPU inputs of one floating dtype. The AVX-512 kernel (kernel_depthwise_avx512.h) runs float32 and bfloat16
// NCHW with K in {1, 3, 5, 7} and stride 1 or 2 (output from the CPU block pool); anything else runs on ATen's
// convolution. When plane_sums is not null it receives a [N, C] tensor, float32 (float64 for float64 x): the sum of
// each output plane (what a squeeze-excite that follows needs).
at::Tensor depthwise_conv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride, Act act,
                          at::Tensor* plane_sums = nullptr);

// y = act(y) in place with ATen's ops (the kernels' fallback paths).
void apply_act_(at::Tensor& y, Act act);

// Checks the weight w, bias b and stride of a depthwise convolution over `x` (its channel count, dtype and device
// are what matter, so a meta tensor will do), naming `op` and `what` (e.g. "conv_dw") in the messages.
void check_depthwise_inputs(const char* op, const char* what, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b, int64_t stride);

}  // namespace cpu
}  // namespace ghostkernels
