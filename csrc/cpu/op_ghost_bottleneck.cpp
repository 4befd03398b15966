// ghostkernels::ghost_bottleneck on the CPU: GhostNet's whole bottleneck in one op call (inference only).
//
// Why one op: after the Ghost modules are fused, what is left of a bottleneck (the stride-2 depthwise conv, the
// squeeze-excite, the shortcut, the residual add, the BatchNorms) is a dozen small eager ops per block, each with
// its dispatcher and Python overhead, an output allocation and a pass over memory; end to end they cost more than
// the fused Ghost modules (bench/NOTES.md, entry 12). Here the block is one call: both Ghost modules on the fused
// kernel, the depthwise convs on launch_depthwise_conv.cpp's kernel, the squeeze-excite's mean taken from that kernel's
// output pass where a depthwise conv precedes it and applied in place, and the shortcut added in ghost2's output
// store (no separate add pass). The batch is processed in chunks whose ghost1 output fits in cache, and the
// kernels' intermediates come from, and go back to, the CPU block pool (util_tensor_pool.h).
//
// Numerics: each piece computes in float32 (bfloat16 inputs: float accumulation, bfloat16 intermediates, as
// eager does in bfloat16); float64 runs ATen's float64 ops around the generic Ghost-module kernel.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "../ghost_module_check.h"
#include "entry_points.h"
#include "kernel_depthwise_avx512.h"
#include "kernel_ghost_forward_avx512.h"
#include "util_bf16_bits.h"
#include "util_kernel_choice.h"
#include "util_tensor_pool.h"

namespace ghostkernels {
namespace {

constexpr const char* kOp = "ghostkernels::ghost_bottleneck (CPU)";

using OptTensor = std::optional<at::Tensor>;

// The op's arguments, by role.
struct Args {
  const at::Tensor &x, &g1w1, &g1b1, &g1w2, &g1b2;
  int64_t mid;
  c10::string_view act;
  const OptTensor &dw_w, &dw_b;
  int64_t stride;
  const OptTensor &se_rw, &se_rb, &se_ew, &se_eb;
  const at::Tensor &g2w1, &g2b1, &g2w2, &g2b2;
  int64_t out_channels;
  const OptTensor &sc_dw_w, &sc_dw_b, &sc_pw_w, &sc_pw_b;
};

// The shapes and options of one call, validated.
struct BottleneckDims {
  GhostDims ghost1, ghost2;
  int64_t stride, Ho, Wo;
  bool has_dw, has_se, has_shortcut;
};

// All of an optional group given, or none; returns which.
bool all_or_none(const char* group, std::initializer_list<const OptTensor*> ts) {
  int given = 0;
  for (const OptTensor* t : ts) given += t->has_value() ? 1 : 0;
  TORCH_CHECK_VALUE(given == 0 || given == static_cast<int>(ts.size()), kOp, ": give all of ", group,
                    " or none of them (", given, " of ", ts.size(), " given)");
  return given > 0;
}

void check_conv1x1(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t in, const char* what) {
  TORCH_CHECK_VALUE(w.dim() == 4 && w.size(1) == in && w.size(2) == 1 && w.size(3) == 1, kOp, ": ", what,
                    " weight must be [out, ", in, ", 1, 1], got shape ", w.sizes());
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == w.size(0), kOp, ": ", what, " bias must be [", w.size(0),
                    "], got shape ", b.sizes());
  check_like_x(kOp, x, w, what);
  check_like_x(kOp, x, b, what);
}

BottleneckDims check_inputs(const Args& a) {
  const at::Tensor& x = a.x;
  const int64_t mid = a.mid, stride = a.stride, out_channels = a.out_channels;
  const OptTensor &dw_w = a.dw_w, &dw_b = a.dw_b, &se_rw = a.se_rw, &se_rb = a.se_rb, &se_ew = a.se_ew,
                  &se_eb = a.se_eb, &sc_dw_w = a.sc_dw_w, &sc_dw_b = a.sc_dw_b, &sc_pw_w = a.sc_pw_w,
                  &sc_pw_b = a.sc_pw_b;
  BottleneckDims d{};
  d.ghost1 = check_ghost_inputs("ghostkernels::ghost_bottleneck (ghost1)", x, a.g1w1, a.g1b1, a.g1w2, a.g1b2, mid,
                                a.act);
  TORCH_CHECK_VALUE(x.device().is_cpu(), kOp, ": expected CPU tensors, got ", x.device(),
                    " (the op has a CPU kernel only; FusedGhostBottleneck runs the block's own layers elsewhere)");
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kDouble || t == at::kFloat || t == at::kBFloat16, kOp,
                   ": supported dtypes are float64, float32 and bfloat16, got ", t);
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, kOp, ": stride must be 1 or 2, got ", stride);
  d.stride = stride;
  // Stand-ins of the intermediate tensors for the shape checks: one element of x's dtype and device, expanded.
  const at::Tensor one = at::empty({}, x.options());
  const at::Tensor y1 = one.expand({d.ghost1.N, mid, d.ghost1.H, d.ghost1.W});
  d.has_dw = all_or_none("dw_w, dw_b", {&dw_w, &dw_b});
  TORCH_CHECK_VALUE(d.has_dw == (stride == 2), kOp, ": dw_w/dw_b (conv_dw) must be given exactly when stride is 2 ",
                    "(stride=", stride, ", ", d.has_dw ? "given" : "not given", ")");
  if (d.has_dw) cpu::check_depthwise_inputs(kOp, "conv_dw", y1, *dw_w, *dw_b, stride);
  const int64_t K_dw = d.has_dw ? dw_w->size(2) : 1;
  d.Ho = d.has_dw ? cpu::depthwise_output_size(d.ghost1.H, K_dw, stride) : d.ghost1.H;
  d.Wo = d.has_dw ? cpu::depthwise_output_size(d.ghost1.W, K_dw, stride) : d.ghost1.W;
  d.has_se = all_or_none("se_reduce_w, se_reduce_b, se_expand_w, se_expand_b", {&se_rw, &se_rb, &se_ew, &se_eb});
  if (d.has_se) {
    check_conv1x1(x, *se_rw, *se_rb, mid, "se_reduce");
    check_conv1x1(x, *se_ew, *se_eb, se_rw->size(0), "se_expand");
    TORCH_CHECK_VALUE(se_ew->size(0) == mid, kOp, ": se_expand must give back the block's ", mid,
                      " channels, got weight shape ", se_ew->sizes());
  }
  const at::Tensor y2 = one.expand({d.ghost1.N, mid, d.Ho, d.Wo});
  d.ghost2 = check_ghost_inputs("ghostkernels::ghost_bottleneck (ghost2)", y2, a.g2w1, a.g2b1, a.g2w2, a.g2b2,
                                out_channels, "identity");
  d.has_shortcut = all_or_none("shortcut_dw_w, shortcut_dw_b, shortcut_pw_w, shortcut_pw_b",
                               {&sc_dw_w, &sc_dw_b, &sc_pw_w, &sc_pw_b});
  if (d.has_shortcut) {
    cpu::check_depthwise_inputs(kOp, "the shortcut's depthwise conv", x, *sc_dw_w, *sc_dw_b, stride);
    TORCH_CHECK_VALUE(sc_dw_w->size(2) == K_dw || !d.has_dw, kOp, ": the shortcut's depthwise kernel (k=",
                      sc_dw_w->size(2), ") must match conv_dw's (k=", K_dw, ") so both halve the image alike");
    TORCH_CHECK_VALUE(cpu::depthwise_output_size(d.ghost1.H, sc_dw_w->size(2), stride) == d.Ho &&
                          cpu::depthwise_output_size(d.ghost1.W, sc_dw_w->size(2), stride) == d.Wo,
                      kOp, ": the shortcut's output size differs from the main branch's");
    check_conv1x1(x, *sc_pw_w, *sc_pw_b, d.ghost1.C, "shortcut_pw");
    TORCH_CHECK_VALUE(sc_pw_w->size(0) == out_channels, kOp, ": shortcut_pw must make out_channels=",
                      out_channels, " channels, got weight shape ", sc_pw_w->sizes());
  } else {
    TORCH_CHECK_VALUE(d.ghost1.C == out_channels && stride == 1, kOp, ": without shortcut weights the shortcut is ",
                      "the identity, which needs in_channels == out_channels and stride 1 (got ", d.ghost1.C, " -> ",
                      out_channels, ", stride ", stride, ")");
  }
  return d;
}

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
template <typename scalar_t, typename acc_t>
void squeeze_excite_kernel(at::Tensor& y, const at::Tensor& sums, const at::Tensor& rw, const at::Tensor& rb,
                           const at::Tensor& ew, const at::Tensor& eb) {
  using raw_t = cpu::raw_type<scalar_t>;
  const int64_t N = y.size(0), C = y.size(1), R = rw.size(0), HW = y.size(2) * y.size(3);
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const at::Tensor rwc = rw.contiguous(), rbc = rb.contiguous(), ewc = ew.contiguous(), ebc = eb.contiguous();
  const auto raw = [](const at::Tensor& t) { return reinterpret_cast<const raw_t*>(t.const_data_ptr<scalar_t>()); };
  const raw_t *wr = raw(rwc), *br = raw(rbc), *we = raw(ewc), *be = raw(ebc);
  raw_t* yp = reinterpret_cast<raw_t*>(y.mutable_data_ptr<scalar_t>());
  std::vector<acc_t> mean(N * C), hidden(N * R);
  if (sums.defined()) {
    const at::Tensor sa = sums.to(acc_type).contiguous();
    const acc_t* sp = sa.const_data_ptr<acc_t>();
    for (int64_t i = 0; i < N * C; ++i) mean[i] = sp[i] / static_cast<acc_t>(HW);
  } else {
    at::parallel_for(0, N * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, HW)), [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) {
        const raw_t* plane = yp + i * HW;
        acc_t s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t q = 0; q < HW; ++q) s += cpu::widen<acc_t>(plane[q]);
        mean[i] = s / static_cast<acc_t>(HW);
      }
    });
  }
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

void squeeze_excite_(at::Tensor& y, const at::Tensor& sums, const at::Tensor& rw, const at::Tensor& rb,
                     const at::Tensor& ew, const at::Tensor& eb) {
  TORCH_CHECK(y.is_contiguous(), "squeeze_excite_: y must be contiguous");
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "ghost_bottleneck_se", [&] {
    squeeze_excite_kernel<scalar_t, at::opmath_type<scalar_t>>(y, sums, rw, rb, ew, eb);
  });
}

// The block for a chunk of gn images of x, written into `out` (that chunk of the op's output).
void block_forward(const Args& a, const BottleneckDims& d, int64_t gn, const at::Tensor& x, const at::Tensor& out) {
  const at::MemoryFormat fmt = output_memory_format(x);
  GhostDims d1 = d.ghost1, d2 = d.ghost2;
  d1.N = d2.N = gn;
  // The shortcut first, while x is still in cache from the block before; ghost2 adds it in its output store.
  at::Tensor residual = x;
  if (d.has_shortcut) {
    const at::Tensor s = cpu::depthwise_conv(x.contiguous(fmt), *a.sc_dw_w, *a.sc_dw_b, a.stride, Act::Identity);
    residual = cpu::pointwise_conv(s, *a.sc_pw_w, *a.sc_pw_b, Act::Identity);
  }
  at::Tensor y = cpu::ghost_forward(x, a.g1w1, a.g1b1, a.g1w2, a.g1b2, d1, at::Tensor(), at::Tensor());
  at::Tensor sums;
  if (d.has_dw) y = cpu::depthwise_conv(y, *a.dw_w, *a.dw_b, a.stride, Act::Identity, d.has_se ? &sums : nullptr);
  if (d.has_se) {
    if (!y.is_contiguous()) y = y.contiguous();  // channels_last inputs: the SE works on NCHW planes
    squeeze_excite_(y, sums, *a.se_rw, *a.se_rb, *a.se_ew, *a.se_eb);
  }
  cpu::ghost_forward(y, a.g2w1, a.g2b1, a.g2w2, a.g2b2, d2, residual.contiguous(output_memory_format(y)), out);
}

// Images per chunk: the block runs on chunks of the batch whose largest intermediate (ghost1's output) fits in
// kChunkBytes, so that the depthwise conv and ghost2 read it from cache rather than from memory. At batch 8, the
// 112x112 block's ghost1 output is 19 MB for the batch and 2.4 MB per image; run whole, reading it back from memory
// took longer than computing it (bench/NOTES.md, entry 12).
int64_t images_per_chunk(const BottleneckDims& d, int64_t element_size) {
  constexpr int64_t kChunkBytes = 2 << 20;
  const int64_t per_image = d.ghost1.oc * d.ghost1.H * d.ghost1.W * element_size;
  return std::max<int64_t>(1, std::min<int64_t>(d.ghost1.N, kChunkBytes / std::max<int64_t>(1, per_image)));
}

}  // namespace

namespace cpu {

at::Tensor ghost_bottleneck_cpu(const at::Tensor& x, const at::Tensor& g1w1, const at::Tensor& g1b1,
                                const at::Tensor& g1w2, const at::Tensor& g1b2, int64_t mid, c10::string_view act,
                                const OptTensor& dw_w, const OptTensor& dw_b, int64_t stride, const OptTensor& se_rw,
                                const OptTensor& se_rb, const OptTensor& se_ew, const OptTensor& se_eb,
                                const at::Tensor& g2w1, const at::Tensor& g2b1, const at::Tensor& g2w2,
                                const at::Tensor& g2b2, int64_t out_channels, const OptTensor& sc_dw_w,
                                const OptTensor& sc_dw_b, const OptTensor& sc_pw_w, const OptTensor& sc_pw_b) {
  const Args args{x, g1w1, g1b1, g1w2, g1b2, mid, act, dw_w, dw_b, stride, se_rw, se_rb, se_ew, se_eb,
                  g2w1, g2b1, g2w2, g2b2, out_channels, sc_dw_w, sc_dw_b, sc_pw_w, sc_pw_b};
  const BottleneckDims d = check_inputs(args);
  const at::MemoryFormat fmt = output_memory_format(x);
  const int64_t N = d.ghost1.N, g = images_per_chunk(d, x.element_size());
  at::Tensor out = cpu::pooled_empty({N, out_channels, d.Ho, d.Wo}, x.options(), fmt);
  // Every other tensor allocated below dies inside this call, so it may take a larger idle pool block: fewer
  // distinct blocks per forward of a network (util_tensor_pool.h; bench/NOTES.md, entry 28).
  const cpu::TransientAllocationScope transient;
  for (int64_t n0 = 0; n0 < N; n0 += g) {
    const int64_t gn = std::min(g, N - n0);
    block_forward(args, d, gn, x.narrow(0, n0, gn), out.narrow(0, n0, gn));
  }
  return out;
}

}  // namespace cpu

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) { m.impl("ghost_bottleneck", &cpu::ghost_bottleneck_cpu); }

}  // namespace ghostkernels
