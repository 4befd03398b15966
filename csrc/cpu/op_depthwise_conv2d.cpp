// The binding of the internal op ghostkernels::_depthwise_conv2d on the CPU, which lets the tests reach the CPU
// depthwise convolution (depthwise_conv, launch_depthwise_conv.cpp) directly: it checks the arguments and calls it.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include "../ghost_module_check.h"
#include "entry_points.h"

namespace ghostkernels {
namespace {

constexpr const char* kDepthwiseOp = "ghostkernels::_depthwise_conv2d (CPU)";

at::Tensor depthwise_conv2d_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                                c10::string_view act) {
  const Act a = parse_act(act);
  cpu::check_depthwise_inputs(kDepthwiseOp, "the convolution", x, w, b, stride);
  TORCH_CHECK_VALUE(x.device().is_cpu(), kDepthwiseOp, ": expected CPU tensors, got ", x.device());
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kDouble || t == at::kFloat || t == at::kBFloat16, kDepthwiseOp,
                   ": supported dtypes are float64, float32 and bfloat16, got ", t);
  return cpu::depthwise_conv(x.contiguous(), w, b, stride, a);
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) { m.impl("_depthwise_conv2d", &depthwise_conv2d_cpu); }

}  // namespace ghostkernels
