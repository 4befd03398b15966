// The CPU 1x1 convolution of the inference ops (pointwise_conv in entry_points.h says what it computes).
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "entry_points.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/conv2d.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <string>

#include "kernel_backward_gemm_avx512.h"
#include "kernel_ghost_forward_avx512.h"
#include "util_aten_act.h"
#include "util_bf16_widen.h"
#include "util_kernel_choice.h"
#include "util_tensor_pool.h"

namespace ghostkernels {
namespace cpu {

namespace {

// bfloat16: the Ghost-module kernel with no cheap half (out_channels = its primary channels), which runs the 1x1
// convolution on the CPU's bf16 dot product with float accumulation, bias and activation in its epilogue. ATen's
// bfloat16 1x1 convolution took 2.6x the float32 time of GhostNet's 160 -> 960 ConvBnAct at batch 1 (bench/NOTES.md,
// entry 25). The cheap half's weights are never read (every cheap channel is sliced away); b stands in for them.
at::Tensor pointwise_bf16(const at::Tensor& s, const at::Tensor& w, const at::Tensor& b, Act act) {
  GhostDims d{};
  d.N = s.size(0), d.C = s.size(1), d.H = s.size(2), d.W = s.size(3);
  d.I = w.size(0), d.M = 1, d.K = 1, d.oc = w.size(0);
  d.act = act;
  return ghost_forward(s, w, b, b.view({d.I, 1, 1, 1}), b, d, at::Tensor(), at::Tensor());
}

}  // namespace

at::Tensor pointwise_conv(const at::Tensor& s, const at::Tensor& w, const at::Tensor& b, Act act) {
  const int64_t N = s.size(0), C = s.size(1), HW = s.size(2) * s.size(3), O = w.size(0);
  if (s.scalar_type() == at::kBFloat16 && s.is_contiguous() && w.size(2) == 1 && w.size(3) == 1 &&
      use_avx512_kernel(cpu_kernel_knob(), avx512_forward_available(true, 1),
                        [] { return std::string("this CPU lacks AVX-512 F/BW/VL/DQ"); })) {
    return pointwise_bf16(s, w, b, act);
  }
  const bool eligible = s.scalar_type() == at::kFloat && s.is_contiguous();
  if (!(eligible && use_avx512_kernel(cpu_kernel_knob(), avx512_forward_available(false, 1),
                                      [] { return std::string("this CPU lacks AVX-512 F/BW/VL/DQ"); }))) {
    at::Tensor y = conv2d_maybe_widened(s, w, b);
    apply_act_(y, act);
    return y;
  }
  at::Tensor out = pooled_empty({N, O, s.size(2), s.size(3)}, s.options());
  if (out.numel() == 0) return out;
  const at::Tensor wm = w.reshape({O, C}).contiguous(), bc = b.contiguous();
  const float* wp = wm.const_data_ptr<float>();
  const float* bp = bc.const_data_ptr<float>();
  const float* sp = s.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  // Items: (image, chunk of 256 pixels, block of output channels). Channel blocks (multiples of the GEMM's 6-row
  // tile, at least 96 rows) only where images x chunks alone would leave a thread idle: at batch 1 a 7x7 image is
  // one chunk, and GhostNet's 160 -> 960 ConvBnAct would run on one thread.
  constexpr int64_t kChunk = 256, kMinRows = 96;
  const int64_t chunks = (HW + kChunk - 1) / kChunk;
  const int64_t want = 2 * at::get_num_threads();
  const int64_t oblocks = N * chunks >= want ? 1 : std::max<int64_t>(1, std::min((O + kMinRows - 1) / kMinRows,
                                                                                 (want + N * chunks - 1) / (N * chunks)));
  const int64_t rows = ((O + oblocks - 1) / oblocks + 5) / 6 * 6;
  at::parallel_for(0, N * chunks * oblocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t ob = item % oblocks, rest = item / oblocks;
      const int64_t n = rest / chunks, q0 = (rest % chunks) * kChunk, len = std::min(kChunk, HW - q0);
      const int64_t o0 = ob * rows, o1 = std::min(O, o0 + rows);
      if (o0 >= o1) continue;
      float* dst = op + n * O * HW + o0 * HW + q0;
      for (int64_t o = o0; o < o1; ++o) std::fill(dst + (o - o0) * HW, dst + (o - o0) * HW + len, bp[o]);
      avx512_sgemm_nn(o1 - o0, len, C, wp + o0 * C, C, sp + n * C * HW + q0, HW, dst, HW, /*accumulate=*/true);
      if (act != Act::Identity) {
        dispatch_act(act, [&](auto a) {
          for (int64_t o = o0; o < o1; ++o) {
            float* row = dst + (o - o0) * HW;
#pragma omp simd
            for (int64_t q = 0; q < len; ++q) row[q] = act_forward(decltype(a)::value, row[q]);
          }
        });
      }
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace ghostkernels
