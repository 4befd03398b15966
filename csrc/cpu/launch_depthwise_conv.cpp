// The CPU depthwise convolution (depthwise_conv in entry_points.h): the AVX-512 kernel where it applies, ATen's
// convolution elsewhere; and the checks of its weight, bias and stride, which the ops that run it share.
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "entry_points.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernel_depthwise_avx512.h"
#include "kernel_depthwise_lanes_avx512.h"
#include "util_aten_act.h"
#include "util_bf16_widen.h"
#include "util_float_weights.h"
#include "util_kernel_choice.h"
#include "util_mask_cache.h"
#include "util_tensor_pool.h"

namespace ghostkernels {
namespace cpu {

void check_depthwise_inputs(const char* op, const char* what, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b, int64_t stride) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": the input of ", what, " must be 4-D [N, C, H, W], got shape ", x.sizes());
  const int64_t C = x.size(1);
  TORCH_CHECK_VALUE(w.dim() == 4 && w.size(0) == C && w.size(1) == 1 && w.size(2) == w.size(3), op, ": ", what,
                    " weight must be depthwise [", C, ", 1, k, k] for its ", C, "-channel input, got shape ",
                    w.sizes());
  TORCH_CHECK_VALUE(w.size(2) % 2 == 1, op, ": ", what, " kernel size must be odd (padding k//2), got k=",
                    w.size(2));
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == C, op, ": ", what, " bias must be [", C, "], got shape ",
                    b.sizes());
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, op, ": ", what, " stride must be 1 or 2, got ", stride);
  for (const at::Tensor* t : {&w, &b}) {
    TORCH_CHECK_TYPE(t->scalar_type() == x.scalar_type(), op, ": dtype mismatch: the input of ", what, " is ",
                     x.scalar_type(), " but its ", t == &w ? "weight" : "bias", " is ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == x.device(), op, ": device mismatch: the input of ", what, " is on ",
                      x.device(), " but its ", t == &w ? "weight" : "bias", " is on ", t->device());
  }
}

namespace {

// GHOSTKERNELS_CPU_DEPTHWISE_LANES (read at every call): "0" runs small maps on the plane kernel too, as before the
// lanes kernel existed (the tests compare the two bit for bit; a benchmark can alternate them in one process).
bool lanes_enabled() {
  const char* v = std::getenv("GHOSTKERNELS_CPU_DEPTHWISE_LANES");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

at::Tensor depthwise_avx512(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride, Act act,
                            at::Tensor* plane_sums) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = w.size(2);
  const int64_t Ho = depthwise_output_size(H, K, stride), Wo = depthwise_output_size(W, K, stride);
  at::Tensor out = pooled_empty({N, C, Ho, Wo}, x.options());
  const FloatWeights wf(w), bf(b);
  at::Tensor sums;
  if (plane_sums != nullptr) sums = at::empty({N, C}, x.options().dtype(at::kFloat));
  if (out.numel() == 0) {
    if (plane_sums != nullptr) *plane_sums = sums.zero_();
    return out;
  }
  DepthwiseAvx512Params p{};
  p.bf16 = x.scalar_type() == at::kBFloat16;
  p.x = x.const_data_ptr();
  p.w = wf.data();
  p.b = bf.data();
  p.out = out.mutable_data_ptr();
  p.plane_sums = plane_sums != nullptr ? sums.mutable_data_ptr<float>() : nullptr;
  p.C = C, p.H = H, p.W = W, p.K = K, p.stride = stride, p.Ho = Ho, p.Wo = Wo;
  p.act = static_cast<int>(act);
  if (lanes_enabled() && avx512_depthwise_lanes_applies(p)) {
    // Small maps: 16 channels in the lanes (kernel_depthwise_lanes_avx512.h), items of 16 planes.
    const int64_t scratch_floats = avx512_depthwise_lanes_scratch_floats(p);
    const int64_t grain = std::max<int64_t>(1, (32 * 1024) / (16 * H * W * x.element_size()));
    at::parallel_for(0, avx512_depthwise_lanes_items(p, N), grain, [&](int64_t begin, int64_t end) {
      thread_local std::vector<float> scratch;
      if (static_cast<int64_t>(scratch.size()) < scratch_floats) scratch.resize(scratch_floats);
      avx512_depthwise_lanes(p, N, begin, end, scratch.data());
    });
    if (plane_sums != nullptr) *plane_sums = sums;
    return out;
  }
  p.colmask = cached_masks(true, K, stride, Ho, Wo);
  const int64_t scratch_floats = avx512_depthwise_scratch_floats(p);
  // A plane is a few microseconds of work for 7x7 and 14x14 images; grains of ~32 KB of input keep the
  // scheduling overhead small without starving a thread.
  const int64_t grain = std::max<int64_t>(1, (32 * 1024) / std::max<int64_t>(1, H * W * x.element_size()));
  at::parallel_for(0, N * C, grain, [&](int64_t begin, int64_t end) {
    // Kept per thread across calls (as in the Ghost-module kernel); zero-filled when it grows, see the header.
    thread_local std::vector<float> scratch;
    if (static_cast<int64_t>(scratch.size()) < scratch_floats) scratch.assign(scratch_floats, 0.f);
    avx512_depthwise_planes(p, begin, end, scratch.data());
  });
  if (plane_sums != nullptr) *plane_sums = sums;
  return out;
}

}  // namespace

at::Tensor depthwise_conv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride, Act act,
                          at::Tensor* plane_sums) {
  const int64_t K = w.size(2);
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const bool eligible = (bf16 || x.scalar_type() == at::kFloat) && x.is_contiguous();
  if (eligible && use_avx512_kernel(cpu_kernel_knob(), avx512_depthwise_available(bf16, K, stride), [&] {
        return std::string("this CPU lacks AVX-512 F/BW/VL/DQ") +
               ", or the depthwise kernel (k=" + std::to_string(K) + ", stride " + std::to_string(stride) +
               ") is not one it has (k in 1, 3, 5, 7; stride 1 or 2)";
      })) {
    return depthwise_avx512(x, w, b, stride, act, plane_sums);
  }
  at::Tensor y = conv2d_maybe_widened(x, w, b, {stride, stride}, {K / 2, K / 2}, {1, 1}, x.size(1));
  apply_act_(y, act);
  if (plane_sums != nullptr) {
    *plane_sums = y.sum({2, 3}, /*keepdim=*/false, y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  }
  return y;
}

}  // namespace cpu
}  // namespace ghostkernels
