// ghostkernels::conv2d_act on the CPU: act(conv2d(x, w, b, stride, padding k//2)), inference only.
//
// Why an op for one convolution: GhostNet's stem (3 -> 16 channels, 3x3, stride 2, BatchNorm, ReLU) is the only
// layer before the first bottleneck, and in eager PyTorch it is three calls: an NCHW oneDNN convolution that is slow
// at batch 8, and two 800 KB-per-image outputs from glibc, which in some processes hands those pages back to the
// system after every forward so that they fault in again on the next; its last stage (a 1x1 ConvBnAct at 7x7) ran on
// ATen's slow_conv2d at batch 1 (bench/NOTES.md, entries 17 and 18). Here the BatchNorm is folded into w and b by
// the caller (FusedStemConv, FusedConvBnAct), the activation is applied in the output pass, and the output comes
// from the CPU block pool.
//
// Kernels: float32 and bfloat16 NCHW with at most kSmallConvMaxInputChannels input channels, k in {1, 3, 5, 7},
// stride 1 or 2 run on the small-channel AVX-512 kernel (kernel_depthwise_avx512.h); wider 1x1 stride-1 convolutions
// (GhostNet's last ConvBnAct, 160 -> 960 at 7x7) on launch_pointwise_conv.cpp's AVX-512 GEMMs (float32 and bfloat16);
// everything else (float64, CPUs without AVX-512) on ATen's convolution followed by the activation.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "../activations.h"
#include "../ghost_module_check.h"
#include "entry_points.h"
#include "kernel_depthwise_avx512.h"
#include "util_aten_act.h"
#include "util_float_weights.h"
#include "util_kernel_choice.h"
#include "util_tensor_pool.h"

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
  const std::vector<uint16_t> masks = cpu::avx512_depthwise_column_masks(K, stride, Ho, Wo);
  p.colmask = masks.data();
  const int64_t scratch_floats = cpu::avx512_small_conv_scratch_floats(p);
  // Items (blocks of 4 output channels of one image) are image-major, so a thread's contiguous range splits each
  // of its images once. Grains of ~64K multiply-adds: the stem at batch 1 (4 items of 4 x 12544 outputs x 27 taps)
  // still gives both threads work.
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

at::Tensor conv2d_act_cpu(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                          c10::string_view act_name) {
  const Act act = parse_act(act_name);
  check_inputs(x_in, w, b, stride);
  const at::Tensor x = x_in.contiguous();
  const int64_t K = w.size(2);
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if ((bf16 || x.scalar_type() == at::kFloat) &&
      cpu::use_avx512_kernel(cpu::cpu_kernel_knob(), cpu::avx512_small_conv_available(bf16, x.size(1), K, stride),
                             [&] {
                               return std::string("this CPU lacks AVX-512 F/BW/VL/DQ") + (bf16 ? " or BF16" : "") +
                                      ", or the convolution (" + std::to_string(x.size(1)) + " input channels, k=" +
                                      std::to_string(K) + ", stride " + std::to_string(stride) +
                                      ") is not one it has (at most " +
                                      std::to_string(cpu::kSmallConvMaxInputChannels) +
                                      " input channels; k in 1, 3, 5, 7; stride 1 or 2)";
                             })) {
    return conv2d_act_avx512(x, w, b, stride, act);
  }
  if (K == 1 && stride == 1) return cpu::pointwise_conv(x, w, b, act);
  at::Tensor y = at::conv2d(x, w, b, {stride, stride}, {K / 2, K / 2});
  cpu::apply_act_(y, act);
  return y;
}

}  // namespace cpu

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) { m.impl("conv2d_act", &cpu::conv2d_act_cpu); }

}  // namespace ghostkernels
