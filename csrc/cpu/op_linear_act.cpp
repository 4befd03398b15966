// ghostkernels::linear_act on the CPU: act(x @ w^T + b) for x [N, K], inference only. The binding: it checks the
// arguments and calls the launcher, linear_act_forward (launch_linear_act.cpp).
//
// Why an op for a linear layer: GhostNet's head is two of them at batch size N (conv_head, a 1x1 convolution on the
// pooled 1x1 image, and the classifier), 10 MB of weights that the BLAS streamed on one thread (see
// kernel_gemv_avx512.h and bench/NOTES.md, entry 19).
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include "../activations.h"
#include "../ghost_module_check.h"
#include "entry_points.h"

namespace ghostkernels {
namespace {

constexpr const char* kOp = "ghostkernels::linear_act (CPU)";

void check_inputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  TORCH_CHECK_VALUE(x.dim() == 2, kOp, ": x must be 2-D [N, K], got shape ", x.sizes());
  TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == x.size(1), kOp, ": w must be [out, ", x.size(1), "] for a ",
                    x.size(1), "-feature x, got shape ", w.sizes());
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == w.size(0), kOp, ": b must be [", w.size(0), "], got shape ",
                    b.sizes());
  check_like_x(kOp, x, w, "w");
  check_like_x(kOp, x, b, "b");
  TORCH_CHECK_VALUE(x.device().is_cpu(), kOp, ": expected CPU tensors, got ", x.device(),
                    " (the op has a CPU kernel only; FusedConvHead and FusedClassifier run their layers elsewhere)");
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kDouble || t == at::kFloat || t == at::kBFloat16, kOp,
                   ": supported dtypes are float64, float32 and bfloat16, got ", t);
}

}  // namespace

namespace cpu {

at::Tensor linear_act_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, c10::string_view act_name) {
  const Act act = parse_act(act_name);
  check_inputs(x, w, b);
  return linear_act_forward(x, w, b, act);
}

}  // namespace cpu

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) { m.impl("linear_act", &cpu::linear_act_cpu); }

}  // namespace ghostkernels
