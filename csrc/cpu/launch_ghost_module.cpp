// Fused Ghost-module forward and backward on the CPU: the binding, and the generic kernels.
//
// On CPUs with AVX-512 the float32/bfloat16 NCHW forward runs on kernel_ghost_forward_avx512.cpp instead, and so do the
// float32 NCHW backward's GEMMs and depthwise half (bfloat16 NCHW backward: in float32 on those kernels); the
// GHOSTKERNELS_CPU_KERNEL knob below picks. What follows describes the generic kernels, which handle everything.
//
// Forward, per work item (images x primary-channel block x row band, see util_work_plan.h):
//   1. z1 = W1 . x for the item's channels over its rows plus a halo of k//2 rows: one GEMM (at::mm, so MKL or
//      oneDNN) over all the item's pixels; a halo shared with a neighbouring band is recomputed, not exchanged;
//   2. x1 = act(z1 + b1) into compact, cache-resident planes with zero rows above and below (util_plane_ops.h),
//      never written out as a tensor;
//   3. the primary half of the output is x1 on the item's own rows; the cheap half is act(b2 + depthwise(x1)),
//      computed from the planes (rows outside the image are the planes' zero rows, columns outside it are
//      masked), straight into the output.
// Backward recomputes what it needs from x the same way, over a halo of 2*(k//2) rows (the gradient of x1 at a
// row needs the cheap half's gradient k//2 rows around it, which needs x1 k//2 rows further), so nothing from
// the forward pass is saved. Weight gradients are summed per thread and reduced at the end.
//
// Numerics: bfloat16 takes bfloat16 GEMMs in the forward pass (oneDNN uses the CPU's bf16 dot-product
// instructions, accumulating in float, rounding z1 to bfloat16 as eager's convolution does); everything after the
// GEMM, and the whole backward pass, is computed in float. float64 is computed in float64 throughout.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../activations.h"
#include "../ghost_module_check.h"
#include "entry_points.h"
#include "kernel_ghost_forward_avx512.h"
#include "util_float_weights.h"
#include "util_kernel_choice.h"
#include "util_plane_ops.h"
#include "util_tensor_pool.h"
#include "util_work_plan.h"

namespace ghostkernels {
namespace {

using cpu::ceil_div;

constexpr const char* kForwardOp = "ghostkernels::ghost_module (CPU)";
constexpr const char* kBackwardOp = "ghostkernels::ghost_module_backward (CPU)";

// The GEMM operand of g images from n0 on, rows [a0, a0 + na): a [C, g*na*W] matrix. A view where the memory
// allows it (one image; or whole channels_last images, whose pixels are contiguous); otherwise packed into `pack`.
at::Tensor input_matrix(const at::Tensor& x, int64_t n0, int64_t g, int64_t a0, int64_t na, bool channels_last,
                        const at::Tensor& pack) {
  const int64_t C = x.size(1), W = x.size(3), P = g * na * W;
  const at::Tensor xs = x.narrow(0, n0, g).narrow(2, a0, na);  // [g, C, na, W]
  if (channels_last && (g == 1 || na == x.size(2))) return xs.permute({0, 2, 3, 1}).reshape({P, C}).t();
  if (!channels_last && g == 1) return xs.reshape({C, P});
  at::Tensor packed = pack.narrow(0, 0, C * P).view({C, g, na, W});
  packed.copy_(xs.transpose(0, 1));
  return packed.view({C, P});
}

// Rows of a 4-D tensor; CL fixes the element stride along W at compile time where it is 1 (NCHW), so row loops
// vectorize.
template <typename T, bool CL>
struct RowAccess {
  T* data;
  int64_t sn, sc, sh, sw;
  explicit RowAccess(const at::Tensor& t)
      : data(static_cast<T*>(t.data_ptr())), sn(t.stride(0)), sc(t.stride(1)), sh(t.stride(2)), sw(t.stride(3)) {}
  T* row(int64_t n, int64_t c, int64_t h) const { return data + n * sn + c * sc + h * sh; }
  int64_t step() const { return CL ? sw : 1; }
};

// A band's compact planes (see util_plane_ops.h): image rows [top, top + rows), pitch W, p elements of slack on each
// side; channel planes are `stride` elements apart and plane data starts at offset p.
struct Planes {
  int64_t top, rows, W, p, stride;
};

// Fills the plane at `origin` (its first element, after the front slack): rows outside [a0, a1) and the slack are
// zero, and the in-image element of compact index q (counted from row a0) is f(q).
template <typename acc_t, typename F>
inline void fill_plane(acc_t* origin, const Planes& g, int64_t a0, int64_t a1, F&& f) {
  acc_t* first = origin + (a0 - g.top) * g.W;
  acc_t* last = origin + (a1 - g.top) * g.W;
  std::fill(origin - g.p, first, acc_t(0));
  const int64_t n = last - first;
  for (int64_t q = 0; q < n; ++q) first[q] = f(q);
  std::fill(last, origin + g.rows * g.W + g.p, acc_t(0));
}

template <typename scalar_t, Act A, bool CL>
void forward_kernel(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                    const at::Tensor& b2, const at::Tensor& out, const GhostDims& d) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const int64_t N = d.N, C = d.C, H = d.H, W = d.W, I = d.I, M = d.M, K = d.K, p = K / 2;
  const int64_t n_primary = d.primary_kept(), n_cheap = d.cheap_kept();

  const at::Tensor w1m = w1.reshape({I, C});
  const at::Tensor b1a = b1.to(acc_type).contiguous();
  const at::Tensor w2a = w2.to(acc_type).contiguous();
  const at::Tensor b2a = b2.to(acc_type).contiguous();
  const acc_t* b1p = b1a.data_ptr<acc_t>();
  const acc_t* w2p = w2a.data_ptr<acc_t>();
  const acc_t* b2p = b2a.data_ptr<acc_t>();
  const RowAccess<scalar_t, CL> o(out);

  // The planes of the g images of an item lie back to back, `plane_stride` apart: a whole number of rows (so the
  // column masks stay aligned) with at least 2p zeros between one image's last row and the next one's first. A
  // stencil over all of them at once is then one long loop; the outputs between images are junk and never stored.
  // For 7x7 and 14x14 images that turns dozens of 49-element loops per channel into one.
  const int64_t gap_rows = p == 0 ? 0 : ceil_div(2 * p, W);
  auto plane_stride_for = [&](int64_t B) { return (std::min(H, B) + 2 * p + gap_rows) * W; };
  const int64_t ss = sizeof(scalar_t), as = sizeof(acc_t);
  const cpu::WorkPlan plan = cpu::plan_work(N, H, W, I, p, /*split_channels=*/true, [&](int64_t G, int64_t Ib, int64_t B) {
    const int64_t rows = std::min(H, B + 2 * p);
    return G * Ib * rows * W * ss + 2 * Ib * G * plane_stride_for(B) * as + (G > 1 ? G * C * rows * W * ss : 0);
  });
  const int64_t max_rows = std::min(H, plan.B + 2 * p);
  const int64_t plane_stride = plane_stride_for(plan.B), group_stride = plan.G * plane_stride;
  const cpu::ColumnMasks<acc_t> masks(K, W, group_stride + (K - 1) * W + cpu::kVec);

  const at::ThreadLocalState tls;
  at::parallel_for(0, plan.items(), 1, [&](int64_t begin, int64_t end) {
    // The generic kernels call ATen ops (at::mm) on the pool's threads, which do not inherit the calling thread's
    // dispatcher state: without this, autograd (excluded below the op's autograd kernel on the calling thread)
    // would see weights that require grad and refuse the out= GEMM.
    const at::ThreadLocalStateGuard tls_guard(tls);
    const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
    at::Tensor zbuf = at::empty({plan.Ib * plan.G * max_rows * W}, opts);
    at::Tensor pack = at::empty({plan.G > 1 ? C * plan.G * max_rows * W : 0}, opts);
    // Zero-initialized once: the gap rows between images are never written and must stay zero.
    std::vector<acc_t> x1(plan.Ib * group_stride + 2 * p + cpu::kVec);
    std::vector<acc_t> acc(group_stride + cpu::kVec);
    std::vector<acc_t> scratch(cpu::kChunk + (K - 1) * W);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n0 = plan.group_of(item) * plan.G, g = std::min(plan.G, N - n0);
      const int64_t c0 = plan.block_of(item) * plan.Ib, cb = std::min(plan.Ib, I - c0), c1 = c0 + cb;
      if (c0 >= n_primary && c0 * M >= n_cheap) continue;  // every channel of this block is sliced away
      const int64_t r0 = plan.band_of(item) * plan.B, r1 = std::min(H, r0 + plan.B), own = r1 - r0;
      const Planes pl{r0 - p, own + 2 * p, W, p, plane_stride};
      const int64_t a0 = std::max<int64_t>(0, pl.top), a1 = std::min(H, r1 + p), PA = (a1 - a0) * W;
      // Outputs of all g images in one stencil: image i's own rows start at i * plane_stride.
      const int64_t n_all = (g - 1) * plane_stride + own * W;
      auto plane = [&](int64_t c, int64_t i) { return x1.data() + p + (c - c0) * group_stride + i * plane_stride; };

      // z1 = W1[c0:c1] . x on the in-image rows of the band, all g images in one GEMM.
      at::Tensor z = zbuf.narrow(0, 0, cb * g * PA).view({cb, g * PA});
      at::mm_out(z, w1m.narrow(0, c0, cb), input_matrix(x, n0, g, a0, a1 - a0, CL, pack));
      const scalar_t* zp = z.const_data_ptr<scalar_t>();

      // x1 = act(z1 + b1) into the planes; primary half = x1 on the band's own rows (contiguous in the planes and,
      // up to the channels_last element stride, in the output).
      for (int64_t c = c0; c < c1; ++c) {
        const acc_t bc = b1p[c];
        for (int64_t i = 0; i < g; ++i) {
          const scalar_t* zc = zp + (c - c0) * g * PA + i * PA;
          fill_plane(plane(c, i), pl, a0, a1, [&](int64_t q) { return act_forward(A, static_cast<acc_t>(zc[q]) + bc); });
          if (c < n_primary) {
            const acc_t* src = plane(c, i) + p * W;
            scalar_t* dst = o.row(n0 + i, c, r0);
            for (int64_t q = 0; q < own * W; ++q) dst[q * o.step()] = static_cast<scalar_t>(src[q]);
          }
        }
      }
      // Cheap half: act(b2 + depthwise(x1)) straight into the output; acc[i * plane_stride + (r - r0)*W + w].
      for (int64_t j = c0 * M; j < std::min(c1 * M, n_cheap); ++j) {
        cpu::stencil(acc.data(), plane(j / M, 0), w2p + j * K * K, K, W, n_all, /*init=*/true, b2p[j], masks,
                     scratch.data());
        for (int64_t i = 0; i < g; ++i) {
          const acc_t* src = acc.data() + i * plane_stride;
          scalar_t* dst = o.row(n0 + i, I + j, r0);
          for (int64_t q = 0; q < own * W; ++q) dst[q * o.step()] = static_cast<scalar_t>(act_forward(A, src[q]));
        }
      }
    }
  });
}

template <typename scalar_t, Act A, bool CL>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                     const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& grad_x, at::Tensor& gw1,
                     at::Tensor& gb1, at::Tensor& gw2, at::Tensor& gb2, const GhostDims& d, bool avx512_gemms) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const bool same_type = std::is_same<acc_t, scalar_t>::value;
  const int64_t N = d.N, C = d.C, H = d.H, W = d.W, I = d.I, M = d.M, K = d.K, p = K / 2, KK = K * K;
  const int64_t n_cheap = d.cheap_kept(), OC = d.oc;

  const at::Tensor w1a = w1.to(acc_type).reshape({I, C}).contiguous();
  // float32 NCHW on an AVX-512 CPU: the three GEMMs on our microkernels (kernel_ghost_forward_avx512.h), which run the
  // small per-item products at about twice the rate of the BLAS on the CPUs measured (bench/NOTES.md).
  constexpr bool kFloatRows = std::is_same<scalar_t, float>::value && !CL;
  const bool fast = kFloatRows && avx512_gemms;
  const at::Tensor w1t = fast ? w1a.t().contiguous() : at::Tensor();
  // ... and, where the depthwise kernel size has an AVX-512 kernel, the depthwise half of the backward as well.
  const bool fast_dw = fast && cpu::avx512_forward_available(false, K);
  const at::Tensor b1a = b1.to(acc_type).contiguous();
  const at::Tensor w2a = w2.to(acc_type).contiguous();
  const at::Tensor w2flip = w2a.flip({2, 3}).contiguous();  // taps of the transposed depthwise conv
  const at::Tensor b2a = b2.to(acc_type).contiguous();
  const acc_t* b1p = b1a.data_ptr<acc_t>();
  const acc_t* w2p = w2a.data_ptr<acc_t>();
  const acc_t* w2fp = w2flip.data_ptr<acc_t>();
  const acc_t* b2p = b2a.data_ptr<acc_t>();
  const RowAccess<const scalar_t, CL> go(grad_out);

  // Per-thread partial sums of the weight gradients.
  const int64_t T = at::get_num_threads();
  const auto acc_opts = x.options().dtype(acc_type).memory_format(at::MemoryFormat::Contiguous);
  at::Tensor part_w1 = at::zeros({T, I, C}, acc_opts);
  at::Tensor part_b1 = at::zeros({T, I}, acc_opts);
  at::Tensor part_w2 = at::zeros({T, I * M, KK}, acc_opts);
  at::Tensor part_b2 = at::zeros({T, I * M}, acc_opts);

  const int64_t as = sizeof(acc_t);
  const cpu::WorkPlan plan = cpu::plan_work(N, H, W, I, 2 * p, /*split_channels=*/false, [&](int64_t G, int64_t, int64_t B) {
    const int64_t rows = std::min(H, B + 4 * p);
    return G * (I + C) * rows * W * as + G * I * B * W * as + (I + n_cheap + 2) * (B + 4 * p) * W * as;
  });
  const int64_t max_rows = std::min(H, plan.B + 4 * p);
  const int64_t x1_stride = (plan.B + 4 * p) * W + 2 * p, g2_stride = (plan.B + 2 * p) * W + 2 * p;
  const cpu::ColumnMasks<acc_t> masks(K, W, (plan.B + 4 * p) * W + cpu::kVec);
  const std::vector<uint16_t> vec_masks = fast_dw ? cpu::avx512_column_masks(K, W, plan.B + 2 * p) : std::vector<uint16_t>();

  const at::ThreadLocalState tls;
  at::parallel_for(0, plan.items(), 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard tls_guard(tls);  // as in forward_kernel
    const int64_t tid = at::get_thread_num();
    at::Tensor pw1 = part_w1.select(0, tid);
    acc_t* pb1 = part_b1.select(0, tid).data_ptr<acc_t>();
    acc_t* pw2 = part_w2.select(0, tid).data_ptr<acc_t>();
    acc_t* pb2 = part_b2.select(0, tid).data_ptr<acc_t>();
    const auto x_opts = x.options().memory_format(at::MemoryFormat::Contiguous);
    at::Tensor pack = at::empty({plan.G > 1 ? C * plan.G * max_rows * W : 0}, x_opts);
    at::Tensor zbuf = at::empty({I * plan.G * max_rows * W}, acc_opts);
    at::Tensor g1buf = at::empty({I * plan.G * plan.B * W}, acc_opts);
    std::vector<acc_t> x1(I * x1_stride + cpu::kVec);
    std::vector<acc_t> g2(n_cheap * g2_stride + cpu::kVec);
    std::vector<acc_t> tmp((plan.B + 2 * p) * W + cpu::kVec);
    std::vector<acc_t> scratch(std::max(masks.length(), cpu::kChunk + (K - 1) * W));

    for (int64_t item = begin; item < end; ++item) {
      const int64_t n0 = plan.group_of(item) * plan.G, g = std::min(plan.G, N - n0);
      const int64_t r0 = plan.band_of(item) * plan.B, r1 = std::min(H, r0 + plan.B), own = r1 - r0;
      const Planes px1{r0 - 2 * p, own + 4 * p, W, p, x1_stride};  // x1 planes
      const Planes pg2{r0 - p, own + 2 * p, W, p, g2_stride};      // g2 planes
      const int64_t a0 = std::max<int64_t>(0, px1.top), a1 = std::min(H, r1 + 2 * p), PA = (a1 - a0) * W;
      const int64_t b0 = std::max<int64_t>(0, pg2.top), b1r = std::min(H, r1 + p);
      const int64_t PO = own * W;

      // Recompute z1 = W1 . x (bias not yet added) on rows [r0 - 2p, r1 + 2p) of all g images.
      at::Tensor xa = input_matrix(x, n0, g, a0, a1 - a0, CL, pack);
      if (!same_type) xa = xa.to(acc_type);
      at::Tensor z = zbuf.narrow(0, 0, I * g * PA).view({I, g * PA});
      if constexpr (kFloatRows) {
        if (fast && xa.stride(1) == 1) {
          cpu::avx512_sgemm_nn(I, g * PA, C, w1a.const_data_ptr<float>(), C, xa.const_data_ptr<float>(), xa.stride(0),
                               z.mutable_data_ptr<float>(), g * PA, /*accumulate=*/false);
        } else {
          at::mm_out(z, w1a, xa);
        }
      } else {
        at::mm_out(z, w1a, xa);
      }
      const acc_t* zp = z.const_data_ptr<acc_t>();
      acc_t* g1 = g1buf.data_ptr<acc_t>();  // [I, g, own*W]

      for (int64_t i = 0; i < g; ++i) {
        const int64_t n = n0 + i;
        for (int64_t c = 0; c < I; ++c) {
          const acc_t bc = b1p[c];
          const acc_t* zc = zp + c * g * PA + i * PA;
          fill_plane(x1.data() + c * x1_stride + p, px1, a0, a1, [&](int64_t q) { return act_forward(A, zc[q] + bc); });
        }

        if constexpr (kFloatRows) {
          if (fast_dw) {
            cpu::DepthwiseBackwardImage db{};
            db.x1 = x1.data() + p;
            db.x1_stride = x1_stride;
            db.g2 = g2.data() + p;
            db.g2_stride = g2_stride;
            db.go = go.row(n, 0, 0);
            db.z1 = zp + i * PA;
            db.z1_cstride = g * PA;
            db.z1_row0 = a0;
            db.g1 = g1 + i * PO;
            db.g1_cstride = g * PO;
            db.b1 = b1p, db.w2 = w2p, db.w2_flip = w2fp, db.b2 = b2p;
            db.pw2 = pw2, db.pb2 = pb2, db.pb1 = pb1;
            db.H = H, db.W = W, db.I = I, db.M = M, db.K = K, db.OC = OC, db.n_cheap = n_cheap, db.r0 = r0;
            db.own = own;
            db.colmask = vec_masks.data();
            db.act = static_cast<int>(A);
            cpu::avx512_depthwise_backward_image(db);
            continue;
          }
        }
        // g2 = dL/d(cheap pre-activation) on rows [r0 - p, r1 + p). Its weight gradients are summed over the
        // band's own rows only (the neighbouring bands account for theirs).
        for (int64_t j = 0; j < n_cheap; ++j) {
          const acc_t* x1c = x1.data() + (j / M) * x1_stride + p;
          acc_t* g2j = g2.data() + j * g2_stride + p;
          if (A != Act::Identity) {
            // z2 on rows [r0 - p, r1 + p): tmp[q], q = (rr - (r0 - p))*W + w.
            cpu::stencil(tmp.data(), x1c, w2p + j * KK, K, W, pg2.rows * W, /*init=*/true, b2p[j], masks,
                         scratch.data());
          }
          const scalar_t* gor = go.row(n, I + j, b0);
          const acc_t* z2 = tmp.data() + (b0 - pg2.top) * W;
          fill_plane(g2j, pg2, b0, b1r, [&](int64_t q) {
            const acc_t gv = static_cast<acc_t>(gor[q * go.step()]);
            return A == Act::Identity ? gv : gv * act_derivative(A, z2[q]);
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

        // g1 = (dL/dx1 from the output slice + transposed depthwise conv of g2) * act'(z1) on the own rows. The
        // transposed conv is the same stencil over the g2 planes with the taps flipped: w2[K-1-dy][K-1-dx].
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
          const acc_t bc = b1p[c];
          acc_t* g1c = g1 + (c * g + i) * PO;
          const acc_t* zc = zp + c * g * PA + i * PA + (r0 - a0) * W;
          for (int64_t q = 0; q < PO; ++q) g1c[q] = tmp[q] * act_derivative(A, zc[q] + bc);
          pb1[c] += cpu::sum(g1c, PO);
        }
      }

      // The two 1x1 GEMMs over all g images: grad W1 += g1 . x^T and grad x = W1^T . g1 on the own rows.
      const at::Tensor g1m = g1buf.narrow(0, 0, I * g * PO).view({I, g, PO});
      const at::Tensor xo = xa.view({C, g, a1 - a0, W}).narrow(2, r0 - a0, own).reshape({C, g * PO});
      if constexpr (kFloatRows) {
        if (fast && xo.stride(1) == 1) {
          // grad W1 += g1 . x^T as an NN product on x transposed ([P][C]): vectors along C, the forward's 6 x 64
          // register tile. (A dot-product kernel on x as it is needs a horizontal sum per output and half the FMAs
          // per load; it made the backward 1.2-1.6x slower, bench/NOTES.md entry 14.)
          const int64_t P = g * PO;
          thread_local std::vector<float> xt;
          if (static_cast<int64_t>(xt.size()) < P * C) xt.resize(P * C);
          cpu::avx512_transpose(C, P, xo.const_data_ptr<float>(), xo.stride(0), xt.data(), C);
          cpu::avx512_sgemm_nn(I, C, P, g1, P, xt.data(), C, pw1.mutable_data_ptr<float>(), C, /*accumulate=*/true);
          float* gx = grad_x.mutable_data_ptr<float>() + n0 * C * H * W + r0 * W;
          for (int64_t i = 0; i < g; ++i) {
            cpu::avx512_sgemm_nn(C, PO, I, w1t.const_data_ptr<float>(), I, g1 + i * PO, g * PO, gx + i * C * H * W,
                                 H * W, /*accumulate=*/false);
          }
          continue;
        }
      }
      pw1.addmm_(g1m.view({I, g * PO}), xo.t());
      const at::Tensor gx = at::mm(w1a.t(), g1m.view({I, g * PO})).view({C, g, own, W});
      grad_x.narrow(0, n0, g).narrow(2, r0, own).copy_(gx.transpose(0, 1));
    }
  });

  gw1.copy_(part_w1.sum(0).view_as(gw1));
  gb1.copy_(part_b1.sum(0));
  gw2.copy_(part_w2.sum(0).view_as(gw2));
  gb2.copy_(part_b2.sum(0));
}

void check_cpu(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": expected CPU tensors, got ", x.device());
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kDouble || t == at::kFloat || t == at::kBFloat16, op,
                   ": supported dtypes are float64, float32 and bfloat16, got ", t);
}

using cpu::CpuKernel;
using cpu::cpu_kernel_knob;

bool use_avx512(CpuKernel knob, bool bf16, int64_t K) {
  return cpu::use_avx512_kernel(knob, cpu::avx512_forward_available(bf16, K), [&] {
    return std::string("this CPU lacks AVX-512 F/BW/VL/DQ") + (bf16 ? " or BF16" : "") +
           ", or the depthwise kernel size " + std::to_string(K) + " is not one of 1, 3, 5, 7";
  });
}

bool use_avx512_forward(const at::Tensor& x, at::MemoryFormat fmt, const GhostDims& d) {
  const CpuKernel knob = cpu_kernel_knob();
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if (!(bf16 || x.scalar_type() == at::kFloat) || fmt != at::MemoryFormat::Contiguous) return false;
  return use_avx512(knob, bf16, d.K);
}

// Float32 or bfloat16 NCHW forward on the AVX-512 kernel (kernel_ghost_forward_avx512.h); x and out are contiguous.
void forward_avx512(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                    const at::Tensor& b2, const at::Tensor& out, const at::Tensor& residual, const GhostDims& d) {
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  // bfloat16 weights as pairs of neighbouring input channels (one 32-bit word each), an odd C padded with a zero.
  at::Tensor w1k = w1.reshape({d.I, d.C});
  if (bf16 && d.C % 2 == 1) w1k = at::constant_pad_nd(w1k, {0, 1});
  w1k = w1k.contiguous();
  const cpu::FloatWeights b1f(b1), w2f(w2), b2f(b2);

  cpu::ForwardAvx512Params prm{};
  prm.bf16 = bf16;
  prm.x = x.const_data_ptr();
  prm.w1 = w1k.const_data_ptr();
  prm.b1 = b1f.data();
  prm.w2 = w2f.data();
  prm.b2 = b2f.data();
  prm.out = out.mutable_data_ptr();
  prm.residual = residual.defined() ? residual.const_data_ptr() : nullptr;
  prm.N = d.N, prm.C = d.C, prm.H = d.H, prm.W = d.W, prm.I = d.I, prm.M = d.M, prm.K = d.K, prm.OC = d.oc;
  prm.n_primary = d.primary_kept();
  prm.n_cheap = d.cheap_kept();
  prm.act = static_cast<int>(d.act);
  const int64_t p = d.K / 2, es = x.element_size();
  // Working set of an item: x's rows of the item (packed or not, re-read once per tile of primaries, so it should
  // stay in L2) and the float planes of one tile of primaries.
  const cpu::WorkPlan plan = cpu::plan_work(d.N, d.H, d.W, d.I, p, /*split_channels=*/true, [&](int64_t G, int64_t, int64_t B) {
    const int64_t rows = std::min(d.H, B + 2 * p);
    return G * d.C * rows * d.W * es + cpu::kForwardTileChannels * G * (B + 2 * p) * d.W * int64_t(sizeof(float));
  });
  prm.G = plan.G, prm.Ib = plan.Ib, prm.B = plan.B;
  prm.groups = plan.groups, prm.blocks = plan.blocks, prm.bands = plan.bands;
  const std::vector<uint16_t> masks = cpu::avx512_column_masks(d.K, d.W, plan.B);
  prm.colmask = masks.data();
  const int64_t scratch_words = cpu::avx512_forward_scratch_words(prm);
  at::parallel_for(0, plan.items(), 1, [&](int64_t begin, int64_t end) {
    // Kept per thread across calls: a fresh multi-megabyte buffer per call would cost its page faults every time.
    // Zero-filled when it grows so that the junk lanes the kernel reads past a band are never denormals.
    thread_local std::vector<uint32_t> scratch;
    if (static_cast<int64_t>(scratch.size()) < scratch_words) scratch.assign(scratch_words, 0u);
    cpu::avx512_forward_items(prm, begin, end, scratch.data());
  });
}

}  // namespace

namespace cpu {

at::Tensor ghost_forward(const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
                         const at::Tensor& w_cheap, const at::Tensor& b_cheap, const GhostDims& d,
                         const at::Tensor& residual, const at::Tensor& into) {
  const at::MemoryFormat fmt = output_memory_format(x);
  if (into.defined() && !into.is_contiguous(fmt)) {  // a destination of another layout: through a temporary
    into.copy_(ghost_forward(x, w_primary, b_primary, w_cheap, b_cheap, d, residual, at::Tensor()));
    return into;
  }
  at::Tensor out = into.defined() ? into : pooled_empty({d.N, d.oc, d.H, d.W}, x.options(), fmt);
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor w1 = w_primary.contiguous(), b1 = b_primary.contiguous();
  const at::Tensor w2 = w_cheap.contiguous(), b2 = b_cheap.contiguous();
  if (use_avx512_forward(xc, fmt, d)) {
    forward_avx512(xc, w1, b1, w2, b2, out, residual.defined() ? residual.contiguous(fmt) : residual, d);
    return out;
  }
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "ghost_module_cpu", [&] {
    dispatch_act(d.act, [&](auto a) {
      if (cl) {
        forward_kernel<scalar_t, decltype(a)::value, true>(xc, w1, b1, w2, b2, out, d);
      } else {
        forward_kernel<scalar_t, decltype(a)::value, false>(xc, w1, b1, w2, b2, out, d);
      }
    });
  });
  if (residual.defined()) out.add_(residual);
  return out;
}

}  // namespace cpu

namespace {

at::Tensor ghost_module_cpu(const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
                            const at::Tensor& w_cheap, const at::Tensor& b_cheap, int64_t out_channels,
                            c10::string_view act) {
  const GhostDims d = check_ghost_inputs(kForwardOp, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act);
  check_cpu(kForwardOp, x);
  return cpu::ghost_forward(x, w_primary, b_primary, w_cheap, b_cheap, d, at::Tensor(), at::Tensor());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ghost_module_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
    const at::Tensor& w_cheap, const at::Tensor& b_cheap, int64_t out_channels, c10::string_view act) {
  const GhostDims d =
      check_ghost_inputs(kBackwardOp, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act);
  check_cpu(kBackwardOp, x);
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == d.N && grad_out.size(1) == d.oc &&
                        grad_out.size(2) == d.H && grad_out.size(3) == d.W,
                    kBackwardOp, ": grad_out must be [", d.N, ", ", d.oc, ", ", d.H, ", ", d.W, "], got ",
                    grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), kBackwardOp, ": grad_out dtype ",
                   grad_out.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == x.device(), kBackwardOp, ": grad_out is on ", grad_out.device(),
                    " but x is on ", x.device());
  const at::MemoryFormat fmt = output_memory_format(x);
  at::Tensor grad_x = cpu::pooled_empty(x.sizes(), x.options(), fmt);
  at::Tensor gw1 = at::zeros(w_primary.sizes(), w_primary.options());
  at::Tensor gb1 = at::zeros(b_primary.sizes(), b_primary.options());
  at::Tensor gw2 = at::zeros(w_cheap.sizes(), w_cheap.options());
  at::Tensor gb2 = at::zeros(b_cheap.sizes(), b_cheap.options());
  if (x.numel() == 0) {
    grad_x.zero_();
    return {grad_x, gw1, gb1, gw2, gb2};
  }
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  if (x.scalar_type() == at::kBFloat16 && !cl && use_avx512(cpu_kernel_knob(), false, 1)) {
    // bfloat16 NCHW: the backward computes in float in any case (see the file comment), so it runs on the float32
    // AVX-512 kernels and only the gradients are rounded back; the inputs' float copies are the price.
    const auto f = [](const at::Tensor& t) { return t.to(at::kFloat); };
    const auto g = ghost_module_backward_cpu(f(grad_out), f(x), f(w_primary), f(b_primary), f(w_cheap), f(b_cheap),
                                             out_channels, act);
    const auto b = [](const at::Tensor& t) { return t.to(at::kBFloat16); };
    return {b(std::get<0>(g)), b(std::get<1>(g)), b(std::get<2>(g)), b(std::get<3>(g)), b(std::get<4>(g))};
  }
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor goc = grad_out.contiguous(fmt);
  const at::Tensor w1 = w_primary.contiguous(), b1 = b_primary.contiguous();
  const at::Tensor w2 = w_cheap.contiguous(), b2 = b_cheap.contiguous();
  const bool avx512_gemms = x.scalar_type() == at::kFloat && !cl && use_avx512(cpu_kernel_knob(), false, 1);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "ghost_module_backward_cpu", [&] {
    dispatch_act(d.act, [&](auto a) {
      if (cl) {
        backward_kernel<scalar_t, decltype(a)::value, true>(goc, xc, w1, b1, w2, b2, grad_x, gw1, gb1, gw2, gb2, d, avx512_gemms);
      } else {
        backward_kernel<scalar_t, decltype(a)::value, false>(goc, xc, w1, b1, w2, b2, grad_x, gw1, gb1, gw2, gb2, d, avx512_gemms);
      }
    });
  });
  return {grad_x, gw1, gb1, gw2, gb2};
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CPU, m) {
  m.impl("ghost_module", &ghost_module_cpu);
  m.impl("ghost_module_backward", &ghost_module_backward_cpu);
}

}  // namespace ghostkernels
