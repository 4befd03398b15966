// ghostkernels::linear_act on the CPU: act(x @ w^T + b) for x [N, K], inference only.
//
// Why an op for a linear layer: GhostNet's head is two of them at batch size N (conv_head, a 1x1 convolution on the
// pooled 1x1 image, and the classifier), 10 MB of weights that the BLAS streamed on one thread (see
// kernel_gemv_avx512.h and bench/NOTES.md, entry 19). float32 and bfloat16 run on the AVX-512 kernel of
// kernel_gemv_avx512.h, the output rows split over the threads; float64 and CPUs without AVX-512 on ATen's addmm
// followed by the activation.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "../activations.h"
#include "../ghost_module_check.h"
#include "entry_points.h"
#include "kernel_gemv_avx512.h"
#include "util_aten_act.h"
#include "util_kernel_choice.h"

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

at::Tensor linear_act_avx512(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& b_in, Act act) {
  // The kernel reads rows of x with unit stride; w and b are read as one block each.
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const at::Tensor w = w_in.contiguous(), b = b_in.contiguous();
  const int64_t N = x.size(0), K = x.size(1), O = w.size(0);
  at::Tensor y = at::empty({N, O}, x.options());
  if (y.numel() == 0) return y;
  cpu::GemvAvx512Params p{};
  p.bf16 = x.scalar_type() == at::kBFloat16;
  p.x = x.const_data_ptr();
  p.w = w.const_data_ptr();
  p.b = b.const_data_ptr();
  p.y = y.mutable_data_ptr();
  p.N = N, p.K = K, p.O = O, p.ldx = x.stride(0), p.ldy = O;
  p.act = static_cast<int>(act);
  // Grains of ~32K multiply-adds: GhostNet's head at batch 1 (320 and 250 blocks of 4 x 960 or 4 x 1280) gives
  // both threads work, a 16-wide layer stays on one.
  const int64_t blocks = (O + cpu::kGemvRowBlock - 1) / cpu::kGemvRowBlock;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, cpu::kGemvRowBlock * K * N));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) { cpu::avx512_gemv_blocks(p, begin, end); });
  return y;
}

}  // namespace

namespace cpu {

at::Tensor linear_act_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, c10::string_view act_name) {
  const Act act = parse_act(act_name);
  check_inputs(x, w, b);
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if ((bf16 || x.scalar_type() == at::kFloat) &&
      cpu::use_avx512_kernel(cpu::cpu_kernel_knob(), cpu::avx512_gemv_available(bf16), [&] {
        return std::string("this CPU lacks AVX-512 F/BW/VL/DQ") + (bf16 ? " or BF16" : "");
      })) {
    return linear_act_avx512(x, w, b, act);
  }
  at::Tensor y = at::addmm(b, x, w.t());
  cpu::apply_act_(y, act);
  return y;
}

}  // namespace cpu

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) { m.impl("linear_act", &cpu::linear_act_cpu); }

}  // namespace ghostkernels
