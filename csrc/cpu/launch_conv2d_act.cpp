// The CPU launcher of ghostkernels::conv2d_act (conv2d_act_forward in entry_points.h; the op, and why it exists, in
// op_conv2d_act.cpp).
//
// Kernels: float32 and bfloat16 NCHW with at most 4 input channels: 3x3 stride 2 (GhostNet's stem) on the stem
// kernel (kernel_stem_conv_avx512.h), the other k in {1, 3, 5, 7}, stride 1 or 2 on the small-channel AVX-512 kernel
// (kernel_depthwise_avx512.h); wider 1x1 stride-1 convolutions
// (GhostNet's last ConvBnAct, 160 -> 960 at 7x7) on launch_pointwise_conv.cpp's AVX-512 GEMMs (float32 and bfloat16);
// everything else (float64, CPUs without AVX-512) on ATen's convolution followed by the activation.
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/conv2d.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../activations.h"
#include "entry_points.h"
#include "kernel_depthwise_avx512.h"
#include "kernel_stem_conv_avx512.h"
#include "util_aten_act.h"
#include "util_bf16_widen.h"
#include "util_float_weights.h"
#include "util_kernel_choice.h"
#include "util_mask_cache.h"
#include "util_tensor_pool.h"

namespace ghostkernels {
namespace {

at::Tensor stem_conv_avx512(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, Act act) {
  const int64_t N = x.size(0), Ci = x.size(1), H = x.size(2), W = x.size(3), Co = w.size(0);
  const int64_t Ho = cpu::depthwise_output_size(H, 3, 2), Wo = cpu::depthwise_output_size(W, 3, 2);
  at::Tensor out = cpu::pooled_empty({N, Co, Ho, Wo}, x.options());
  if (out.numel() == 0) return out;
  const cpu::FloatWeights wf(w), bf(b);
  cpu::StemConvAvx512Params p{};
  p.bf16 = x.scalar_type() == at::kBFloat16;
  p.x = x.const_data_ptr();
  p.w = wf.data();
  p.b = bf.data();
  p.out = out.mutable_data_ptr();
  p.N = N, p.Ci = Ci, p.Co = Co, p.H = H, p.W = W, p.Ho = Ho, p.Wo = Wo;
  p.act = static_cast<int>(act);
  const int64_t scratch_floats = cpu::avx512_stem_conv_scratch_floats(p);
  // Items are output rows, image-major, and at::parallel_for gives each thread one contiguous run of them (half the
  // image at batch 1 on two threads, four images each at batch 8), so consecutive rows share their odd input row's
  // split. Grains of ~32K multiply-adds (a stem row is 48K).
  const int64_t per_row = Wo * Co * Ci * 9;
  const int64_t grain = std::max<int64_t>(1, (32 * 1024) / std::max<int64_t>(1, per_row));
  at::parallel_for(0, N * Ho, grain, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scratch;
    if (static_cast<int64_t>(scratch.size()) < scratch_floats) scratch.resize(scratch_floats);
    cpu::avx512_stem_conv_rows(p, begin, end, scratch.data());
  });
  return out;
}

at::Tensor conv2d_act_avx512(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                             Act act) {
  const int64_t N = x.size(0), Ci = x.size(1), H = x.size(2), W = x.size(3), Co = w.size(0), K = w.size(2);
  const int64_t Ho = cpu::depthwise_output_size(H, K, stride), Wo = cpu::depthwise_output_size(W, K, stride);
  at::Tensor out = cpu::pooled_empty({N, Co, Ho, Wo}, x.options());
  if (out.numel() == 0) return out;
  const cpu::FloatWeights wf(w), bf(b);
  cpu::SmallConvAvx512Params p{};
  p.bf16 = x.scalar_type() == at::kBFloat16;
  p.x = x.const_data_ptr();
  p.w = wf.data();
  p.b = bf.data();
  p.out = out.mutable_data_ptr();
  p.N = N, p.Ci = Ci, p.Co = Co, p.H = H, p.W = W, p.K = K, p.stride = stride, p.Ho = Ho, p.Wo = Wo;
  p.act = static_cast<int>(act);
  p.colmask = cpu::cached_masks(true, K, stride, Ho, Wo);
  const int64_t scratch_floats = cpu::avx512_small_conv_scratch_floats(p);
  // Items (blocks of 4 output channels of one image) are image-major, so a thread's contiguous range splits each
  // of its images once. Grains of ~64K multiply-adds: a 3-channel image of a few thousand outputs still gives both
  // threads work.
  const int64_t per_item = 4 * Ho * Wo * Ci * K * K;
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(1, per_item));
  at::parallel_for(0, cpu::avx512_small_conv_item_count(p), grain, [&](int64_t begin, int64_t end) {
    // Kept per thread across calls; zero-filled when it grows (see kernel_depthwise_avx512.h).
    thread_local std::vector<float> scratch;
    if (static_cast<int64_t>(scratch.size()) < scratch_floats) scratch.assign(scratch_floats, 0.f);
    cpu::avx512_small_conv_items(p, begin, end, scratch.data());
  });
  return out;
}

}  // namespace

namespace cpu {

at::Tensor conv2d_act_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                              Act act) {
  const int64_t K = w.size(2);
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if ((bf16 || x.scalar_type() == at::kFloat) &&
      cpu::use_avx512_kernel(cpu::cpu_kernel_knob(), cpu::avx512_small_conv_available(bf16, x.size(1), K, stride),
                             [&] {
                               return std::string("this CPU lacks AVX-512 F/BW/VL/DQ") +
                                      ", or the convolution (" + std::to_string(x.size(1)) + " input channels, k=" +
                                      std::to_string(K) + ", stride " + std::to_string(stride) +
                                      ") is not one it has (at most " +
                                      std::to_string(cpu::kSmallConvMaxInputChannels) +
                                      " input channels; k in 1, 3, 5, 7; stride 1 or 2)";
                             })) {
    if (cpu::avx512_stem_conv_available(bf16, x.size(1), K, stride)) {
      return stem_conv_avx512(x, w, b, act);
    }
    return conv2d_act_avx512(x, w, b, stride, act);
  }
  if (K == 1 && stride == 1) return cpu::pointwise_conv(x, w, b, act);
  at::Tensor y = cpu::conv2d_maybe_widened(x, w, b, {stride, stride}, {K / 2, K / 2});
  cpu::apply_act_(y, act);
  return y;
}

}  // namespace cpu
}  // namespace ghostkernels
