// The CPU launcher of ghostkernels::linear_act (linear_act_forward in entry_points.h; the op, and why it exists, in
// op_linear_act.cpp): float32 and bfloat16 run on the AVX-512 kernel of kernel_gemv_avx512.h, the output rows split
// over the threads; float64 and CPUs without AVX-512 on ATen's addmm followed by the activation.
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <string>

#include "../activations.h"
#include "entry_points.h"
#include "kernel_gemv_avx512.h"
#include "util_aten_act.h"
#include "util_bf16_widen.h"
#include "util_kernel_choice.h"

namespace ghostkernels {
namespace {

at::Tensor linear_act_avx512(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& b_in, Act act) {
  // The kernel reads rows of x with unit stride; w and b are read as one block each.
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const at::Tensor w = w_in.contiguous(), b = b_in.contiguous();
  const int64_t N = x.size(0), K = x.size(1), O = w.size(0);
  at::Tensor y = at::empty({N, O}, x.options());
  if (y.numel() == 0) return y;
  cpu::GemvAvx512Params p{};
  p.bf16 = x.scalar_type() == at::kBFloat16;
  p.bf16_dot = p.bf16 && cpu::avx512_gemv_bf16_dot();
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

at::Tensor linear_act_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, Act act) {
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if ((bf16 || x.scalar_type() == at::kFloat) &&
      cpu::use_avx512_kernel(cpu::cpu_kernel_knob(), cpu::avx512_gemv_available(bf16), [&] {
        return std::string("this CPU lacks AVX-512 F/BW/VL/DQ");
      })) {
    return linear_act_avx512(x, w, b, act);
  }
  at::Tensor y = cpu::widen_bf16(x) ? at::addmm(cpu::as_float(b), cpu::as_float(x), cpu::as_float(w).t()).to(at::kBFloat16)
                                    : at::addmm(b, x, w.t());
  cpu::apply_act_(y, act);
  return y;
}

}  // namespace cpu
}  // namespace ghostkernels
