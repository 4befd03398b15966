// The CPU backward of ghostkernels::ghost_module (ghost_backward in entry_points.h): the launcher, and the generic
// kernel.
//
// On CPUs with AVX-512 the float32 NCHW backward's GEMMs (but grad W1 of wide inputs, on the BLAS) and depthwise
// half run on AVX-512 kernels (kernel_backward_gemm_avx512.h, kernel_ghost_backward_avx512.h), and the bfloat16 NCHW backward runs in float32 on
// them; the GHOSTKERNELS_CPU_KERNEL knob (util_kernel_choice.h) picks. The generic kernel handles everything.
//
// The backward recomputes what it needs from x the way the forward computes it (launch_ghost_forward.cpp), over a
// halo of 2*(k//2) rows (the gradient of x1 at a row needs the cheap half's gradient k//2 rows around it, which needs
// x1 k//2 rows further), so nothing from the forward pass is saved. Weight gradients are summed per thread and
// reduced at the end.
//
// The same kernels run the train-mode BatchNorm backward of ghostkernels::ghost_bn_backward (BnBackwardArgs): z1 is
// then read from the given tensor instead of recomputed, each stage's pre-activation is weight * xhat + bias with
// xhat = (z - mean) * invstd, and the gradient that flows on from a stage's pre-activation is the BN backward's
// dz = invstd * weight * (g - mean_dy - xhat * mean_dy_xhat) instead of g itself. The eval-mode op is the special
// case mean = -bias of the conv, invstd = weight = 1, bias = mean_dy = mean_dy_xhat = 0 (Coefficients below), and its
// arithmetic is unchanged by it (x - (-b) is x + b, and 1 * t + 0 is t).
//
// Numerics: the whole backward pass is computed in float (bfloat16 included); float64 in float64.
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "../activations.h"
#include "../ghost_module_check.h"
#include "entry_points.h"
#include "kernel_backward_gemm_avx512.h"
#include "kernel_ghost_backward_avx512.h"
#include "kernel_ghost_forward_avx512.h"  // avx512_forward_available, avx512_column_masks
#include "util_bf16_bits.h"
#include "util_ghost_launch.h"
#include "util_kernel_choice.h"
#include "util_plane_ops.h"
#include "util_tensor_pool.h"
#include "util_work_plan.h"

namespace ghostkernels {
namespace cpu {
namespace {

// Per-channel coefficients of one stage, in the accumulation type: pre-activation y = weight * xhat + bias with
// xhat = (s - mean) * invstd, where s is the conv output plus `conv_bias` (the eval-mode op's bias; zero with BN),
// and dz = dz_scale * (g - mean_dy - xhat * mean_dy_xhat) for g = dL/dy. The given per-channel tensors are kept
// (contiguous, in the accumulation type); the constant and derived vectors are plain arrays, since an ATen op on an
// 80-element vector costs more (3-15 us with its dispatch) than the loop.
template <typename acc_t>
struct Coefficients {
  at::Tensor conv_bias_t, mean_t, invstd_t, weight_t, bias_t, mean_dy_t, mean_dy_xhat_t;
  std::vector<acc_t> zeros, ones, scale;  // the constants 0 and 1; dz_scale where it is invstd * weight

  // The eval-mode op: s = conv + b, y = s, dz = g.
  static Coefficients eval(const at::Tensor& b) {
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    Coefficients k;
    k.conv_bias_t = b.to(acc).contiguous();
    k.zeros.assign(b.numel(), acc_t(0));
    k.ones.assign(b.numel(), acc_t(1));
    return k;
  }
  // Train-mode BN (the stage's tensors are already in the accumulation type, see check_bn_stage).
  static Coefficients train(const BnStage& s, const at::Tensor& mean_dy, const at::Tensor& mean_dy_xhat) {
    Coefficients k;
    k.mean_t = s.mean, k.invstd_t = s.invstd, k.weight_t = s.weight, k.bias_t = s.bias;
    k.mean_dy_t = mean_dy.contiguous(), k.mean_dy_xhat_t = mean_dy_xhat.contiguous();
    const int64_t n = s.mean.numel();
    k.zeros.assign(n, acc_t(0));
    k.scale.resize(n);
    const acc_t *invstd = s.invstd.const_data_ptr<acc_t>(), *weight = s.weight.const_data_ptr<acc_t>();
    for (int64_t c = 0; c < n; ++c) k.scale[c] = invstd[c] * weight[c];
    return k;
  }
  // Raw pointers, for the kernels' inner loops.
  struct View {
    const acc_t *conv_bias, *mean, *invstd, *weight, *bias, *mean_dy, *mean_dy_xhat, *dz_scale;
    acc_t xhat(int64_t c, acc_t s) const { return (s - mean[c]) * invstd[c]; }
    acc_t pre(int64_t c, acc_t xh) const { return weight[c] * xh + bias[c]; }
    acc_t dz(int64_t c, acc_t g, acc_t xh) const { return dz_scale[c] * (g - mean_dy[c] - xh * mean_dy_xhat[c]); }
  };
  View view() const {
    if (conv_bias_t.defined()) {  // eval
      return {conv_bias_t.const_data_ptr<acc_t>(), zeros.data(), ones.data(), ones.data(),
              zeros.data(),                        zeros.data(), zeros.data(), ones.data()};
    }
    return {zeros.data(),
            mean_t.const_data_ptr<acc_t>(),
            invstd_t.const_data_ptr<acc_t>(),
            weight_t.const_data_ptr<acc_t>(),
            bias_t.const_data_ptr<acc_t>(),
            mean_dy_t.const_data_ptr<acc_t>(),
            mean_dy_xhat_t.const_data_ptr<acc_t>(),
            scale.data()};
  }
};

// From this many input channels on, grad W1's per-item product runs on the BLAS (see its use).
constexpr int64_t kBlasGradW1MinC = 256;

template <typename scalar_t, Act A, bool CL>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
                     const Coefficients<at::opmath_type<scalar_t>>& k1,
                     const Coefficients<at::opmath_type<scalar_t>>& k2, const at::Tensor& z1_given,
                     const at::Tensor& grad_x, at::Tensor& gw1, at::Tensor& gb1, at::Tensor& gw2, at::Tensor& gb2,
                     const GhostDims& d, bool avx512_gemms) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const bool same_type = std::is_same<acc_t, scalar_t>::value;
  const int64_t N = d.N, C = d.C, H = d.H, W = d.W, I = d.I, M = d.M, K = d.K, p = K / 2, KK = K * K;
  const int64_t n_cheap = d.cheap_kept(), OC = d.oc;
  // Train-mode BN: the stages' xhat matter (and, with an identity activation, the cheap half's pre-activation).
  const bool bn = z1_given.defined();

  const at::Tensor w1a = w1.to(acc_type).reshape({I, C}).contiguous();
  // float32 NCHW on an AVX-512 CPU: the three GEMMs on our microkernels (kernel_backward_gemm_avx512.h), which
  // ran the small per-item products at about twice the rate of the BLAS on the CPUs measured (bench/NOTES.md
  // entry 8); grad W1 of wide inputs is the exception (the BLAS, kBlasGradW1MinC, entry 46).
  // bfloat16 NCHW (train-mode BN only, see ghost_backward) runs the same float kernels on float copies of each
  // item's rows: grad_out's rows per image (kBf16Rows below), x's own rows, and grad x through a float buffer.
  constexpr bool kBf16Rows = std::is_same<scalar_t, c10::BFloat16>::value && !CL;
  constexpr bool kFloatRows = (std::is_same<scalar_t, float>::value || kBf16Rows) && !CL;
  const bool fast = kFloatRows && avx512_gemms;
  // W1^T for grad x = W1^T . dz1, transposed in registers into pool memory (ATen's strided copy took 75-120 us of
  // a 1 ms backward at 672 x 80, bench/NOTES.md entry 46).
  at::Tensor w1t;
  if (fast) {
    w1t = pooled_empty({C, I}, w1a.options());
    cpu::avx512_transpose(I, C, w1a.const_data_ptr<float>(), C, w1t.mutable_data_ptr<float>(), I);
  }
  // ... and, where the depthwise kernel size has an AVX-512 kernel, the depthwise half of the backward as well.
  const bool fast_dw = fast && cpu::avx512_forward_available(false, K);
  const at::Tensor w2a = w2.to(acc_type).contiguous();
  const acc_t* w2p = w2a.const_data_ptr<acc_t>();
  std::vector<acc_t> w2flip(n_cheap * KK);  // taps of the transposed depthwise conv: w2[K-1-dy][K-1-dx]
  for (int64_t j = 0; j < n_cheap; ++j) {
    for (int64_t t = 0; t < KK; ++t) w2flip[j * KK + t] = w2p[j * KK + KK - 1 - t];
  }
  const acc_t* w2fp = w2flip.data();
  const typename Coefficients<acc_t>::View c1v = k1.view(), c2v = k2.view();
  const RowAccess<const scalar_t, CL> go(grad_out);
  const std::optional<RowCopy<acc_t>> z1_rows = bn ? std::optional<RowCopy<acc_t>>(z1_given) : std::nullopt;
  const std::optional<RowCopy<acc_t>> x_rows = bn ? std::optional<RowCopy<acc_t>>(x) : std::nullopt;

  // Per-thread partial sums of the weight gradients: thread t sums into its own slab [w1 | b1 | w2 | b2] (pool
  // memory, zeroed by the thread at its first item), thread 0 straight into the outputs where they are contiguous in
  // the accumulation type; the other slabs are added to them in thread order at the end. (ATen's zeros + sum(0) +
  // copy_ of [T, I, C] partials took ~0.25 ms of a 1 ms backward at 672 x 80, bench/NOTES.md entry 46.)
  const int64_t T = at::get_num_threads();
  const auto acc_opts = x.options().dtype(acc_type).memory_format(at::MemoryFormat::Contiguous);
  const int64_t n_w1 = I * C, n_b1 = I, n_w2 = I * M * KK, n_b2 = I * M, n_all = n_w1 + n_b1 + n_w2 + n_b2;
  const auto direct_ok = [&](const at::Tensor& t) { return t.scalar_type() == acc_type && t.is_contiguous(); };
  const bool direct = direct_ok(gw1) && direct_ok(gb1) && direct_ok(gw2) && direct_ok(gb2);
  const int64_t n_slabs = direct ? T - 1 : T;
  const at::Tensor slabs = pooled_empty({n_slabs * n_all}, acc_opts);
  std::vector<char> used(T, 0);
  // Thread t's partial sums (grad W1 as an [I, C] tensor, for the generic kernel's addmm_).
  struct Partial {
    at::Tensor w1;
    acc_t *b1, *w2, *b2;
  };
  const auto partial = [&](int64_t t) -> Partial {
    if (direct && t == 0) {
      return {gw1.view({I, C}), gb1.mutable_data_ptr<acc_t>(), gw2.mutable_data_ptr<acc_t>(),
              gb2.mutable_data_ptr<acc_t>()};
    }
    const at::Tensor slab = slabs.narrow(0, (direct ? t - 1 : t) * n_all, n_all);
    acc_t* base = slab.mutable_data_ptr<acc_t>();
    return {slab.narrow(0, 0, n_w1).view({I, C}), base + n_w1, base + n_w1 + n_b1, base + n_w1 + n_b1 + n_w2};
  };

  const int64_t as = sizeof(acc_t);
  const cpu::WorkPlan plan = cpu::plan_work(N, H, W, I, 2 * p, /*split_channels=*/false, [&](int64_t G, int64_t, int64_t B) {
    const int64_t rows = std::min(H, B + 4 * p);
    return G * (I + C) * rows * W * as + G * I * B * W * as + (I + n_cheap + 2) * (B + 4 * p) * W * as;
  });
  const int64_t max_rows = std::min(H, plan.B + 4 * p);
  const int64_t x1_stride = (plan.B + 4 * p) * W + 2 * p, g2_stride = (plan.B + 2 * p) * W + 2 * p;
  // The generic depthwise part's masks (empty where the AVX-512 one runs: a division per element to build).
  const cpu::ColumnMasks<acc_t> masks(K, W, fast_dw ? 0 : (plan.B + 4 * p) * W + cpu::kVec);
  const std::vector<uint16_t> vec_masks = fast_dw ? cpu::avx512_column_masks(K, W, plan.B + 2 * p) : std::vector<uint16_t>();

  const at::ThreadLocalState tls;
  at::parallel_for(0, plan.items(), 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard tls_guard(tls);  // as in forward_kernel (launch_ghost_forward.cpp)
    const int64_t tid = at::get_thread_num();
    const Partial part = partial(tid);
    at::Tensor pw1 = part.w1;
    acc_t *pb1 = part.b1, *pw2 = part.w2, *pb2 = part.b2;
    if (!used[tid]) {
      used[tid] = 1;
      std::fill_n(pw1.mutable_data_ptr<acc_t>(), n_w1, acc_t(0));
      std::fill_n(pb1, n_b1, acc_t(0));
      std::fill_n(pw2, n_w2, acc_t(0));
      std::fill_n(pb2, n_b2, acc_t(0));
    }
    const auto x_opts = x.options().memory_format(at::MemoryFormat::Contiguous);
    // Pool memory: fresh allocations of a few hundred kilobytes page-fault on every call.
    at::Tensor pack = pooled_empty({plan.G > 1 && !bn ? C * plan.G * max_rows * W : 0}, x_opts);
    at::Tensor zbuf = pooled_empty({I * plan.G * max_rows * W}, acc_opts);
    at::Tensor g1buf = pooled_empty({I * plan.G * plan.B * W}, acc_opts);
    // Train-mode BN: the item's own rows of x as a [C, g * own * W] matrix in the accumulation type, where x's
    // memory is not already that (several images, bfloat16 or channels_last).
    at::Tensor xbuf = pooled_empty({bn ? C * plan.G * plan.B * W : 0}, acc_opts);
    std::vector<acc_t> x1(I * x1_stride + cpu::kVec);
    std::vector<acc_t> g2(n_cheap * g2_stride + cpu::kVec);
    std::vector<acc_t> tmp((plan.B + 2 * p) * W + cpu::kVec);
    std::vector<acc_t> scratch(std::max(masks.length(), cpu::kChunk + (K - 1) * W));
    // bfloat16: one image's grad_out in float (only the rows an item reads are filled) and an item's grad x.
    std::vector<float> go_float(kBf16Rows && fast ? OC * H * W : 0);
    std::vector<float> gx_float(kBf16Rows && fast ? C * plan.G * plan.B * W : 0);

    for (int64_t item = begin; item < end; ++item) {
      const int64_t n0 = plan.group_of(item) * plan.G, g = std::min(plan.G, N - n0);
      const int64_t r0 = plan.band_of(item) * plan.B, r1 = std::min(H, r0 + plan.B), own = r1 - r0;
      const Planes px1{r0 - 2 * p, own + 4 * p, W, p, x1_stride};  // x1 planes
      const Planes pg2{r0 - p, own + 2 * p, W, p, g2_stride};      // g2 planes
      const int64_t a0 = std::max<int64_t>(0, px1.top), a1 = std::min(H, r1 + 2 * p), PA = (a1 - a0) * W;
      const int64_t b0 = std::max<int64_t>(0, pg2.top), b1r = std::min(H, r1 + p);
      const int64_t PO = own * W;

      // z1 = W1 . x (bias not yet added) on rows [r0 - 2p, r1 + 2p) of all g images: recomputed, or (train-mode
      // BN) copied from the given z1; x itself is then needed on the own rows only, for the two GEMMs at the end.
      at::Tensor z = zbuf.narrow(0, 0, I * g * PA).view({I, g * PA});
      at::Tensor xo;
      if (bn) {
        z1_rows->to_buffer(n0, g, 0, I, a0, a1 - a0, z.mutable_data_ptr<acc_t>());
        if (same_type && !CL && g == 1) {
          xo = input_matrix(x, n0, g, r0, own, CL, pack);
        } else {
          x_rows->to_buffer(n0, g, 0, C, r0, own, xbuf.mutable_data_ptr<acc_t>());
          xo = xbuf.narrow(0, 0, C * g * PO).view({C, g * PO});
        }
      } else {
        at::Tensor xa = input_matrix(x, n0, g, a0, a1 - a0, CL, pack);
        if (!same_type) xa = xa.to(acc_type);
        cpu::matmul_into(z, w1a, xa, fast);
        xo = xa.view({C, g, a1 - a0, W}).narrow(2, r0 - a0, own).reshape({C, g * PO});
      }
      const acc_t* zp = z.const_data_ptr<acc_t>();
      acc_t* g1 = g1buf.data_ptr<acc_t>();  // [I, g, own*W]

      for (int64_t i = 0; i < g; ++i) {
        const int64_t n = n0 + i;
        for (int64_t c = 0; c < I; ++c) {
          const acc_t* zc = zp + c * g * PA + i * PA;
          fill_plane(x1.data() + c * x1_stride + p, px1, a0, a1, [&](int64_t q) {
            return act_forward(A, c1v.pre(c, c1v.xhat(c, zc[q] + c1v.conv_bias[c])));
          });
        }

        if constexpr (kFloatRows) {
          if (fast_dw) {
            cpu::DepthwiseBackwardImage db{};
            db.x1 = x1.data() + p;
            db.x1_stride = x1_stride;
            db.g2 = g2.data() + p;
            db.g2_stride = g2_stride;
            if constexpr (kBf16Rows) {
              // The rows the kernel reads: the own rows and k//2 around them (the cheap half's g2 planes).
              const int64_t lo = std::max<int64_t>(0, r0 - p), hi = std::min(H, r1 + p);
              const auto* src = reinterpret_cast<const uint16_t*>(grad_out.const_data_ptr<scalar_t>()) + n * OC * H * W;
              for (int64_t c = 0; c < OC; ++c) {
                const uint16_t* s = src + c * H * W + lo * W;
                float* t = go_float.data() + c * H * W + lo * W;
                for (int64_t q = 0; q < (hi - lo) * W; ++q) t[q] = cpu::widen<float>(s[q]);
              }
              db.go = go_float.data();
            } else {
              db.go = go.row(n, 0, 0);
            }
            db.z1 = zp + i * PA;
            db.z1_cstride = g * PA;
            db.z1_row0 = a0;
            db.g1 = g1 + i * PO;
            db.g1_cstride = g * PO;
            db.b1 = c1v.conv_bias, db.w2 = w2p, db.w2_flip = w2fp, db.b2 = c2v.conv_bias;
            if (bn) {
              db.bn1 = {c1v.mean, c1v.invstd, c1v.weight, c1v.bias, c1v.mean_dy, c1v.mean_dy_xhat, c1v.dz_scale};
              db.bn2 = {c2v.mean, c2v.invstd, c2v.weight, c2v.bias, c2v.mean_dy, c2v.mean_dy_xhat, c2v.dz_scale};
            }
            db.pw2 = pw2, db.pb2 = pb2, db.pb1 = pb1;
            db.H = H, db.W = W, db.I = I, db.M = M, db.K = K, db.OC = OC, db.n_cheap = n_cheap, db.r0 = r0;
            db.own = own;
            db.colmask = vec_masks.data();
            db.act = static_cast<int>(A);
            db.bn = bn;
            cpu::avx512_depthwise_backward_image(db);
            continue;
          }
        }
        // g2 = dL/d(cheap pre-activation), then the gradient that flows on into the depthwise conv (dz2; g2 itself
        // without BN), on rows [r0 - p, r1 + p). Its weight gradients are summed over the band's own rows only (the
        // neighbouring bands account for theirs).
        for (int64_t j = 0; j < n_cheap; ++j) {
          const acc_t* x1c = x1.data() + (j / M) * x1_stride + p;
          acc_t* g2j = g2.data() + j * g2_stride + p;
          const bool need_z2 = A != Act::Identity || bn;
          if (need_z2) {
            // z2 on rows [r0 - p, r1 + p): tmp[q], q = (rr - (r0 - p))*W + w.
            cpu::stencil(tmp.data(), x1c, w2p + j * KK, K, W, pg2.rows * W, /*init=*/true, c2v.conv_bias[j], masks,
                         scratch.data());
          }
          const scalar_t* gor = go.row(n, I + j, b0);
          const acc_t* z2 = tmp.data() + (b0 - pg2.top) * W;
          fill_plane(g2j, pg2, b0, b1r, [&](int64_t q) {
            const acc_t gv = static_cast<acc_t>(gor[q * go.step()]);
            if (!need_z2) return gv;
            const acc_t xh = c2v.xhat(j, z2[q]);
            return c2v.dz(j, gv * act_derivative(A, c2v.pre(j, xh)), xh);
          });
          const acc_t* g2own = g2j + p * W;  // the band's own rows: g2own[q], q = (r - r0)*W + w
          pb2[j] += cpu::sum(g2own, own * W);
          // dL/dw2[dy][dx] = sum_q g2own[q] * mask_dx[q] * x1(r + dy - p, w + dx - p); x1(r + dy - p, .) is row
          // (r - r0) + p + dy of the x1 plane.
          for (int64_t dx = 0; dx < K; ++dx) {
            cpu::masked_shift(scratch.data(), x1c, masks(dx), dx - p, px1.rows * W);
            for (int64_t dy = 0; dy < K; ++dy) {
              pw2[j * KK + dy * K + dx] += cpu::dot(g2own, scratch.data() + (p + dy) * W, own * W);
            }
          }
        }

        // g1 = (dL/dx1 from the output slice + transposed depthwise conv of g2) * act'(y1) on the own rows, then
        // dz1 as above. The transposed conv is the same stencil over the g2 planes with the taps flipped:
        // w2[K-1-dy][K-1-dx].
        for (int64_t c = 0; c < I; ++c) {
          if (c < OC) {
            const scalar_t* gor = go.row(n, c, r0);
            for (int64_t q = 0; q < own * W; ++q) tmp[q] = static_cast<acc_t>(gor[q * go.step()]);
          } else {
            std::fill(tmp.begin(), tmp.begin() + own * W, acc_t(0));
          }
          for (int64_t j = c * M; j < std::min((c + 1) * M, n_cheap); ++j) {
            cpu::stencil(tmp.data(), g2.data() + j * g2_stride + p, w2fp + j * KK, K, W, own * W, /*init=*/false,
                         acc_t(0), masks, scratch.data());
          }
          acc_t* g1c = g1 + (c * g + i) * PO;
          const acc_t* zc = zp + c * g * PA + i * PA + (r0 - a0) * W;
          for (int64_t q = 0; q < PO; ++q) {
            const acc_t xh = c1v.xhat(c, zc[q] + c1v.conv_bias[c]);
            g1c[q] = c1v.dz(c, tmp[q] * act_derivative(A, c1v.pre(c, xh)), xh);
          }
          pb1[c] += cpu::sum(g1c, PO);
        }
      }

      // The two 1x1 GEMMs over all g images: grad W1 += g1 . x^T and grad x = W1^T . g1 on the own rows.
      const at::Tensor g1m = g1buf.narrow(0, 0, I * g * PO).view({I, g, PO});
      if constexpr (kFloatRows) {
        if (fast && xo.stride(1) == 1) {
          // grad W1 += g1 . x^T. Wide x (C >= kBlasGradW1MinC): the BLAS's NT product on x as it is. Otherwise as
          // an NN product on x transposed ([P][C]): vectors along C, the forward's 6 x 64 register tile. (A
          // dot-product kernel on x as it is needs a horizontal sum per output and half the FMAs per load; it made
          // the backward 1.2-1.6x slower, bench/NOTES.md entry 14. Past ~256 columns our tile's K x 64 strip of x^T
          // outgrows L1 at 196 pixels and MKL's product runs 1.3-2.1x faster than transpose + ours; below ~160 ours
          // is 1.1-1.4x faster; entry 46.)
          const int64_t P = g * PO;
          if (C >= kBlasGradW1MinC) {
            pw1.addmm_(g1m.view({I, P}), xo.t());
          } else {
            thread_local std::vector<float> xt;
            if (static_cast<int64_t>(xt.size()) < P * C) xt.resize(P * C);
            cpu::avx512_transpose(C, P, xo.const_data_ptr<float>(), xo.stride(0), xt.data(), C);
            cpu::avx512_sgemm_nn(I, C, P, g1, P, xt.data(), C, pw1.mutable_data_ptr<float>(), C,
                                 /*accumulate=*/true);
          }
          for (int64_t i = 0; i < g; ++i) {
            if constexpr (kBf16Rows) {
              cpu::avx512_sgemm_nn(C, PO, I, w1t.const_data_ptr<float>(), I, g1 + i * PO, g * PO, gx_float.data(), PO,
                                   /*accumulate=*/false);
              auto* gx = reinterpret_cast<uint16_t*>(grad_x.mutable_data_ptr<scalar_t>()) + (n0 + i) * C * H * W + r0 * W;
              for (int64_t c = 0; c < C; ++c) {
                for (int64_t q = 0; q < PO; ++q) gx[c * H * W + q] = cpu::narrow<uint16_t>(gx_float[c * PO + q]);
              }
            } else {
              float* gx = grad_x.mutable_data_ptr<float>() + (n0 + i) * C * H * W + r0 * W;
              cpu::avx512_sgemm_nn(C, PO, I, w1t.const_data_ptr<float>(), I, g1 + i * PO, g * PO, gx, H * W,
                                   /*accumulate=*/false);
            }
          }
          continue;
        }
      }
      pw1.addmm_(g1m.view({I, g * PO}), xo.t());
      const at::Tensor gx = at::mm(w1a.t(), g1m.view({I, g * PO})).view({C, g, own, W});
      grad_x.narrow(0, n0, g).narrow(2, r0, own).copy_(gx.transpose(0, 1));
    }
  });

  // The outputs: thread 0's sums (or zeros) plus every other used slab, in thread order.
  at::Tensor ow1 = gw1, ob1 = gb1, ow2 = gw2, ob2 = gb2;
  if (!direct) {  // sum into slab 0, then copy (and convert) into the outputs
    ow1 = slabs.narrow(0, 0, n_w1), ob1 = slabs.narrow(0, n_w1, n_b1);
    ow2 = slabs.narrow(0, n_w1 + n_b1, n_w2), ob2 = slabs.narrow(0, n_w1 + n_b1 + n_w2, n_b2);
  }
  if (!used[0]) {
    for (at::Tensor* o : {&ow1, &ob1, &ow2, &ob2}) std::fill_n(o->mutable_data_ptr<acc_t>(), o->numel(), acc_t(0));
  }
  const auto add_into = [](const at::Tensor& out, const acc_t* src) {
    acc_t* o = out.mutable_data_ptr<acc_t>();
    for (int64_t q = 0, n = out.numel(); q < n; ++q) o[q] += src[q];
  };
  for (int64_t t = 1; t < T; ++t) {
    if (!used[t]) continue;
    const Partial part = partial(t);
    add_into(ow1, part.w1.template const_data_ptr<acc_t>());
    add_into(ob1, part.b1);
    add_into(ow2, part.w2);
    add_into(ob2, part.b2);
  }
  if (!direct) {
    gw1.copy_(ow1.view_as(gw1));
    gb1.copy_(ob1.view_as(gb1));
    gw2.copy_(ow2.view_as(gw2));
    gb2.copy_(ob2.view_as(gb2));
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ghost_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
    const at::Tensor& w_cheap, const at::Tensor& b_cheap, const GhostDims& d, const BnBackwardArgs* bn) {
  const at::MemoryFormat fmt = output_memory_format(x);
  at::Tensor grad_x = pooled_empty(x.sizes(), x.options(), fmt);
  // Written whole by backward_kernel.
  const auto contiguous_empty = [](const at::Tensor& like) {
    return pooled_empty(like.sizes(), like.options(), at::MemoryFormat::Contiguous);
  };
  at::Tensor gw1 = contiguous_empty(w_primary), gb1 = contiguous_empty(b_primary);
  at::Tensor gw2 = contiguous_empty(w_cheap), gb2 = contiguous_empty(b_cheap);
  if (x.numel() == 0) {
    for (at::Tensor* t : {&grad_x, &gw1, &gb1, &gw2, &gb2}) t->zero_();
    return {grad_x, gw1, gb1, gw2, gb2};
  }
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const bool avx512 = !cl && use_avx512(cpu_kernel_knob(), false, 1);
  if (x.scalar_type() == at::kBFloat16 && avx512 && bn == nullptr) {
    // bfloat16 NCHW: the backward computes in float in any case (see the top of this file), so it runs on the float32
    // AVX-512 kernels and only the gradients are rounded back; the inputs' float copies are the price. (With BN the
    // kernel converts each item's rows itself, kBf16Rows: the whole-tensor copies cost the train-mode backward a
    // third of its time at batch 8, bench/NOTES.md entry 43.)
    const auto f = [](const at::Tensor& t) { return t.to(at::kFloat); };
    const auto g = ghost_backward(f(grad_out), f(x), f(w_primary), f(b_primary), f(w_cheap), f(b_cheap), d, bn);
    const auto b = [](const at::Tensor& t) { return t.to(at::kBFloat16); };
    return {b(std::get<0>(g)), b(std::get<1>(g)), b(std::get<2>(g)), b(std::get<3>(g)), b(std::get<4>(g))};
  }
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor goc = grad_out.contiguous(fmt);
  const at::Tensor w1 = w_primary.contiguous(), w2 = w_cheap.contiguous();
  const bool avx512_gemms = avx512 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "ghost_module_backward_cpu", [&] {
    using K = Coefficients<at::opmath_type<scalar_t>>;
    const K k1 = bn ? K::train(bn->primary, bn->mean_dy_primary, bn->mean_dy_xhat_primary) : K::eval(b_primary);
    const K k2 = bn ? K::train(bn->cheap, bn->mean_dy_cheap, bn->mean_dy_xhat_cheap) : K::eval(b_cheap);
    const at::Tensor z1 = bn ? bn->z1.contiguous(output_memory_format(bn->z1)) : at::Tensor();
    dispatch_act(d.act, [&](auto a) {
      if (cl) {
        backward_kernel<scalar_t, decltype(a)::value, true>(goc, xc, w1, w2, k1, k2, z1, grad_x, gw1, gb1, gw2, gb2,
                                                            d, avx512_gemms);
      } else {
        backward_kernel<scalar_t, decltype(a)::value, false>(goc, xc, w1, w2, k1, k2, z1, grad_x, gw1, gb1, gw2, gb2,
                                                             d, avx512_gemms);
      }
    });
  });
  return {grad_x, gw1, gb1, gw2, gb2};
}

}  // namespace cpu
}  // namespace ghostkernels
