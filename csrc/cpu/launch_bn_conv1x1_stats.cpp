// The CPU kernel of ghostkernels::ghost_bn_conv1x1_stats (bn_conv1x1_stats in entry_points.h): z1 = conv1x1(x, W1)
// written out, and the mean and biased variance of each of its channels.
//
// Per work item (images x block of channels x band of rows, util_work_plan.h; no halo) one GEMM, z = W1[block] . x
// over the item's pixels (the AVX-512 microkernel for float32 NCHW, util_ghost_launch.h's matmul_into; bfloat16 x is
// converted to float first), then, while z is in cache, its rounding to x's dtype, its copy into z1 and the two-pass
// moments of each channel's values (util_channel_stats.h) as stored, so that the statistics are exactly those of
// the z1 the later passes normalize.
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <tuple>

#include "entry_points.h"
#include "util_channel_stats.h"
#include "util_ghost_launch.h"
#include "util_kernel_choice.h"
#include "util_tensor_pool.h"
#include "util_work_plan.h"

namespace ghostkernels {
namespace cpu {
namespace {

template <typename scalar_t, bool CL>
void conv1x1_stats_kernel(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& z1, ThreadMoments& moments,
                          const GhostDims& d, bool avx512) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const int64_t N = d.N, C = d.C, H = d.H, W = d.W, I = d.I;
  const at::Tensor wa = w1.to(acc_type).reshape({I, C}).contiguous();
  const int64_t es = x.element_size(), as = sizeof(acc_t);
  const WorkPlan plan = plan_work(N, H, W, I, /*halo=*/0, /*split_channels=*/true, [&](int64_t G, int64_t Ib, int64_t B) {
    return G * C * B * W * (es + (G > 1 ? es : 0)) + Ib * G * B * W * as;
  });
  // x's rows of an item and z1's as plain loops on raw pointers (ATen's narrow + copy_ per item cost more).
  const RowCopy<acc_t> x_rows(x), z1_rows(z1);
  const at::ThreadLocalState tls;
  at::parallel_for(0, plan.items(), 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard tls_guard(tls);  // at::mm on the pool's threads, see launch_ghost_forward.cpp
    Moments* mom = moments.of_thread(at::get_thread_num());
    const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
    // The item's x as a [C, g * own * W] matrix in the accumulation type, where x's memory is not already one.
    const bool x_view = std::is_same<acc_t, scalar_t>::value && !CL && plan.G == 1;
    at::Tensor xbuf = pooled_empty({x_view ? 0 : C * plan.G * plan.B * W}, opts.dtype(acc_type));
    at::Tensor zbuf = pooled_empty({plan.Ib * plan.G * plan.B * W}, opts.dtype(acc_type));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n0 = plan.group_of(item) * plan.G, g = std::min(plan.G, N - n0);
      const int64_t c0 = plan.block_of(item) * plan.Ib, cb = std::min(plan.Ib, I - c0);
      const int64_t r0 = plan.band_of(item) * plan.B, own = std::min(H, r0 + plan.B) - r0, P = g * own * W;
      at::Tensor xa;
      if (x_view) {
        xa = input_matrix(x, n0, g, r0, own, CL, at::Tensor());
      } else {
        x_rows.to_buffer(n0, g, 0, C, r0, own, xbuf.mutable_data_ptr<acc_t>());
        xa = xbuf.narrow(0, 0, C * P).view({C, P});
      }
      at::Tensor z = zbuf.narrow(0, 0, cb * P).view({cb, P});
      matmul_into(z, wa.narrow(0, c0, cb), xa, avx512);
      acc_t* zp = z.data_ptr<acc_t>();
      if (!std::is_same<acc_t, scalar_t>::value) {
        for (int64_t q = 0; q < cb * P; ++q) zp[q] = static_cast<acc_t>(static_cast<scalar_t>(zp[q]));
      }
      z1_rows.from_buffer(n0, g, c0, cb, r0, own, zp);
      for (int64_t c = 0; c < cb; ++c) add_block_moments(mom[c0 + c], zp + c * P, P);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_conv1x1_stats(const at::Tensor& x, const at::Tensor& w_primary,
                                                                 const GhostDims& d) {
  const at::MemoryFormat fmt = output_memory_format(x);
  at::Tensor z1 = pooled_empty({d.N, d.I, d.H, d.W}, x.options(), fmt);
  ThreadMoments moments(d.I);
  const at::ScalarType stats = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (z1.numel() > 0) {
    const at::Tensor xc = x.contiguous(fmt);
    const bool cl = fmt == at::MemoryFormat::ChannelsLast;
    const bool avx512 = x.scalar_type() != at::kDouble && !cl && use_avx512(cpu_kernel_knob(), false, 1);
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "ghost_bn_conv1x1_stats_cpu", [&] {
      if (cl) {
        conv1x1_stats_kernel<scalar_t, true>(xc, w_primary, z1, moments, d, avx512);
      } else {
        conv1x1_stats_kernel<scalar_t, false>(xc, w_primary, z1, moments, d, avx512);
      }
    });
  }
  auto [mean, var] = moments.finish(stats);
  return {z1, mean, var};
}

}  // namespace cpu
}  // namespace ghostkernels
