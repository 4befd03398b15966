// The squeeze-excite of ghostkernels::ghost_bottleneck on the CPU (squeeze_excite_ in entry_points.h):
// y *= hardsigmoid(W_e . relu(W_r . mean_hw(y) + b_r) + b_e), per image and channel, in place. `sums` holds each
// plane's sum where the depthwise kernel produced it (else it is computed here). The two matrix-vector products are
// plain loops: at GhostNet's sizes (up to 960 x 240) ATen's addmm spent ~50 us per call in dispatch and threading,
// several times the arithmetic, and GhostNet 1.0x runs 14 of them per image. They are split over the threads by
// output (rows of W_r, then channels of W_e), with the images innermost so that each weight row is read once per
// call: the squeeze-excite weights are 6 MB of GhostNet 1.0x's 21, and at batch 1 streaming them on one thread
// while the other waited cost ~0.1 ms per forward (bench/NOTES.md, entry 16). Each thread scales the planes of the
// channels whose gates it computed, so the gate and the scaling share one parallel region.
// The weights are read in their own dtype and widened in the loops, bfloat16 as raw words (util_bf16_bits.h) so that
// the loops vectorize: converting the weights to float tensors on every call (1.8 MB of float for a 960 x 240 pair)
// and c10::BFloat16's own conversions made GhostNet's squeeze-excite blocks 1.5-2x slower in bfloat16 than in
// float32 at batch 1 (bench/NOTES.md, entry 25).
// Float32 on AVX-512 CPUs runs both products on linear_act's matrix-vector kernel (kernel_gemv_avx512.h: blocks of
// four weight rows against up to four images, sixteen accumulators), split the same way. The plain loops' one
// reduction chain per dot product ran at ~2 multiply-adds per cycle: GhostNet's 960-channel squeeze-excite took
// 0.67 ms at batch 8 on one thread, more than its Ghost modules (bench/NOTES.md, entry 49).
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "entry_points.h"
#include "kernel_gemv_avx512.h"
#include "kernel_plane_sums_avx512.h"
#include "util_bf16_bits.h"
#include "util_kernel_choice.h"

namespace ghostkernels {
namespace cpu {
namespace {

// Each plane's mean, from the depthwise kernel's sums where it produced them, else summed here.
template <typename raw_t, typename acc_t>
void plane_means(const raw_t* yp, const at::Tensor& sums, int64_t NC, int64_t HW, acc_t* mean) {
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  if (sums.defined()) {
    const at::Tensor sa = sums.to(acc_type).contiguous();
    const acc_t* sp = sa.const_data_ptr<acc_t>();
    for (int64_t i = 0; i < NC; ++i) mean[i] = sp[i] / static_cast<acc_t>(HW);
    return;
  }
  at::parallel_for(0, NC, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, HW)), [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      const raw_t* plane = yp + i * HW;
      acc_t s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t q = 0; q < HW; ++q) s += cpu::widen<acc_t>(plane[q]);
      mean[i] = s / static_cast<acc_t>(HW);
    }
  });
}

template <typename scalar_t, typename acc_t>
void squeeze_excite_kernel(at::Tensor& y, const at::Tensor& sums, const at::Tensor& rw, const at::Tensor& rb,
                           const at::Tensor& ew, const at::Tensor& eb) {
  using raw_t = cpu::raw_type<scalar_t>;
  const int64_t N = y.size(0), C = y.size(1), R = rw.size(0), HW = y.size(2) * y.size(3);
  const at::Tensor rwc = rw.contiguous(), rbc = rb.contiguous(), ewc = ew.contiguous(), ebc = eb.contiguous();
  const auto raw = [](const at::Tensor& t) { return reinterpret_cast<const raw_t*>(t.const_data_ptr<scalar_t>()); };
  const raw_t *wr = raw(rwc), *br = raw(rbc), *we = raw(ewc), *be = raw(ebc);
  raw_t* yp = reinterpret_cast<raw_t*>(y.mutable_data_ptr<scalar_t>());
  std::vector<acc_t> mean(N * C), hidden(N * R);
  plane_means<raw_t, acc_t>(yp, sums, N * C, HW, mean.data());
  // Grains of ~16K multiply-adds: GhostNet's smallest squeeze-excites (72 x 20) stay on one thread.
  const int64_t mv_grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, N * C));
  at::parallel_for(0, R, mv_grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const raw_t* w = wr + r * C;
      for (int64_t n = 0; n < N; ++n) {
        const acc_t* m = mean.data() + n * C;
        acc_t s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < C; ++c) s += cpu::widen<acc_t>(w[c]) * m[c];
        hidden[n * R + r] = std::max<acc_t>(s + cpu::widen<acc_t>(br[r]), 0);
      }
    }
  });
  const int64_t gate_grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, N * (R + HW)));
  at::parallel_for(0, C, gate_grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const raw_t* w = we + c * R;
      for (int64_t n = 0; n < N; ++n) {
        const acc_t* h = hidden.data() + n * R;
        acc_t s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t r = 0; r < R; ++r) s += cpu::widen<acc_t>(w[r]) * h[r];
        // hardsigmoid(v) = relu6(v + 3) / 6
        const acc_t g = std::min<acc_t>(std::max<acc_t>(s + cpu::widen<acc_t>(be[c]) + 3, 0), 6) / 6;
        raw_t* plane = yp + (n * C + c) * HW;
#pragma omp simd
        for (int64_t q = 0; q < HW; ++q) plane[q] = cpu::narrow<raw_t>(cpu::widen<acc_t>(plane[q]) * g);
      }
    }
  });
}

// On the AVX-512 matrix-vector kernel: hidden = relu(W_r . mean + b_r) by blocks of four rows of W_r, then by
// blocks of four channels the gate's pre-activation W_e . hidden + b_e, its hardsigmoid and the scaling of those
// channels' planes, in one parallel region per product as in the loops above. raw_t: float, or uint16_t for a
// bfloat16 network, whose weights the kernel widens as it loads them (bf16_weights) while the means, the hidden
// vector and the gates stay float32, as in the loops above; only the scaled planes are rounded. Before this the
// bfloat16 squeeze-excites ran on those loops: on a CPU with native bfloat16 (an AMD EPYC, bench/NOTES.md entry 59)
// the 7x7 blocks with a 960-channel squeeze-excite were no faster in bfloat16 than in float32.
template <typename raw_t>
void squeeze_excite_avx512(at::Tensor& y, const at::Tensor& sums, const at::Tensor& rw, const at::Tensor& rb,
                           const at::Tensor& ew, const at::Tensor& eb) {
  constexpr bool kBf16 = std::is_same_v<raw_t, uint16_t>;
  const int64_t N = y.size(0), C = y.size(1), R = rw.size(0), HW = y.size(2) * y.size(3);
  const at::Tensor rwc = rw.contiguous(), rbc = rb.contiguous(), ewc = ew.contiguous(), ebc = eb.contiguous();
  raw_t* yp = static_cast<raw_t*>(y.data_ptr());
  std::vector<float> mean(N * C), hidden(N * R), pre(N * C);
  if (sums.defined()) {
    plane_means<raw_t, float>(yp, sums, N * C, HW, mean.data());
  } else {
    // kernel_plane_sums_avx512.h: the loop of plane_means spent most of a 7x7 plane's time outside its adds.
    at::parallel_for(0, N * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, HW)), [&](int64_t b0, int64_t b1) {
      cpu::avx512_plane_sums(kBf16, yp, HW, b0, b1, mean.data());
    });
    for (float& m : mean) m /= static_cast<float>(HW);
  }

  cpu::GemvAvx512Params reduce{};
  reduce.bf16 = false;
  reduce.bf16_weights = kBf16;
  reduce.x = mean.data(), reduce.w = rwc.const_data_ptr(), reduce.b = rbc.const_data_ptr();
  reduce.y = hidden.data();
  reduce.N = N, reduce.K = C, reduce.O = R, reduce.ldx = C, reduce.ldy = R;
  reduce.act = static_cast<int>(Act::ReLU);
  constexpr int64_t kRows = cpu::kGemvRowBlock;
  // Grains of ~16K multiply-adds, as the loops'.
  const int64_t reduce_grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, kRows * N * C));
  at::parallel_for(0, (R + kRows - 1) / kRows, reduce_grain,
                   [&](int64_t b0, int64_t b1) { cpu::avx512_gemv_blocks(reduce, b0, b1); });

  cpu::GemvAvx512Params expand = reduce;
  expand.x = hidden.data(), expand.w = ewc.const_data_ptr(), expand.b = ebc.const_data_ptr();
  expand.y = pre.data();
  expand.K = R, expand.O = C, expand.ldx = R, expand.ldy = C;
  expand.act = static_cast<int>(Act::Identity);
  const int64_t gate_grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, kRows * N * (R + HW)));
  at::parallel_for(0, (C + kRows - 1) / kRows, gate_grain, [&](int64_t b0, int64_t b1) {
    cpu::avx512_gemv_blocks(expand, b0, b1);
    for (int64_t c = b0 * kRows; c < std::min(C, b1 * kRows); ++c) {
      for (int64_t n = 0; n < N; ++n) {
        // hardsigmoid(v) = relu6(v + 3) / 6
        const float g = std::min(std::max(pre[n * C + c] + 3.f, 0.f), 6.f) / 6.f;
        raw_t* plane = yp + (n * C + c) * HW;
#pragma omp simd
        for (int64_t q = 0; q < HW; ++q) plane[q] = cpu::narrow<raw_t>(cpu::widen<float>(plane[q]) * g);
      }
    }
  });
}

}  // namespace

void squeeze_excite_(at::Tensor& y, const at::Tensor& sums, const at::Tensor& rw, const at::Tensor& rb,
                     const at::Tensor& ew, const at::Tensor& eb) {
  TORCH_CHECK(y.is_contiguous(), "squeeze_excite_: y must be contiguous");
  const auto t = y.scalar_type();
  const bool same_type = rw.scalar_type() == t && rb.scalar_type() == t && ew.scalar_type() == t &&
                         eb.scalar_type() == t;
  if ((t == at::kFloat || t == at::kBFloat16) && same_type &&
      use_avx512_kernel(cpu_kernel_knob(), avx512_gemv_available(t == at::kBFloat16) && avx512_plane_sums_available(),
                        [] { return std::string("this CPU lacks AVX-512 F/BW/VL/DQ"); })) {
    if (t == at::kFloat) {
      squeeze_excite_avx512<float>(y, sums, rw, rb, ew, eb);
    } else {
      squeeze_excite_avx512<uint16_t>(y, sums, rw, rb, ew, eb);
    }
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "ghost_bottleneck_se", [&] {
    squeeze_excite_kernel<scalar_t, at::opmath_type<scalar_t>>(y, sums, rw, rb, ew, eb);
  });
}

}  // namespace cpu
}  // namespace ghostkernels
