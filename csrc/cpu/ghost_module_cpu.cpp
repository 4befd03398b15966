// Fused Ghost-module forward and backward on the CPU.
//
// Forward, per work item = (image n, band of output rows [r0, r1)):
//   1. z1 = W1 . x over the band plus a halo of k//2 rows (one GEMM on the band's pixels; the halo rows are
//      recomputed by the neighbouring band too, which is cheaper than sharing them between threads);
//   2. x1 = act(z1 + b1), kept in a cache-resident buffer, never written to memory as a full tensor;
//   3. the primary half of the output is x1 on the band's own rows; the cheap half is
//      act(b2 + depthwise_kxk(x1)), computed from the buffer, positions outside the image counting as zero.
// Backward recomputes everything it needs from x the same way (over a halo of 2*(k//2) rows, because the gradient
// of x1 at a row needs the depthwise-output gradient k//2 rows around it, which needs x1 k//2 rows further), so
// nothing from the forward pass is saved. Weight gradients are summed per thread and reduced at the end.
//
// Numerics: bfloat16 inputs take bfloat16 GEMMs (oneDNN uses the CPU's bf16 dot-product instructions) with float
// accumulation; everything after the GEMM (bias, activation, depthwise conv, gradients) is computed in float.
// float64 is computed in float64 throughout (that is what gradcheck needs).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../activations.h"
#include "../ghost_module_check.h"

namespace ghostkernels {
namespace {

constexpr const char* kForwardOp = "ghostkernels::ghost_module (CPU)";
constexpr const char* kBackwardOp = "ghostkernels::ghost_module_backward (CPU)";

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows per work item: the band's working set (bytes_per_row each) should stay within a core's L2, and there should
// be a few work items per thread so that at::parallel_for can balance them.
int64_t pick_band_rows(int64_t N, int64_t H, int64_t halo, int64_t bytes_per_row) {
  constexpr int64_t kBudget = 768 * 1024;
  int64_t rows = std::max<int64_t>(1, kBudget / std::max<int64_t>(1, bytes_per_row) - 2 * halo);
  rows = std::min(rows, H);
  const int64_t want_items = 4 * static_cast<int64_t>(at::get_num_threads());
  if (N * ceil_div(H, rows) < want_items) {
    const int64_t bands = ceil_div(want_items, std::max<int64_t>(N, 1));
    // Do not cut bands much thinner than the halo: the recomputed halo would dominate.
    rows = std::max(std::min(rows, ceil_div(H, bands)), std::min<int64_t>(H, std::max<int64_t>(2, 2 * halo)));
  }
  return std::max<int64_t>(rows, 1);
}

// x[n] restricted to rows [r0, r0 + nr) as a [C, nr*W] matrix view (strided for channels_last).
at::Tensor band_matrix(const at::Tensor& x, int64_t n, int64_t r0, int64_t nr, bool channels_last) {
  at::Tensor b = x.select(0, n).narrow(1, r0, nr);  // [C, nr, W]
  const int64_t C = b.size(0), P = nr * b.size(2);
  if (!channels_last) return b.reshape({C, P});
  return b.permute({1, 2, 0}).reshape({P, C}).t();
}

// Pointer-and-stride access to a 4-D tensor element (n, c, h, w).
template <typename T>
struct Strided4d {
  T* data;
  int64_t sn, sc, sh, sw;
  explicit Strided4d(const at::Tensor& t)
      : data(static_cast<T*>(t.data_ptr())), sn(t.stride(0)), sc(t.stride(1)), sh(t.stride(2)), sw(t.stride(3)) {}
  T* row(int64_t n, int64_t c, int64_t h) const { return data + n * sn + c * sc + h * sh; }
};

// out_row[w] += wv * src_row[w + off] for the w where w + off lies inside [0, W).
template <typename acc_t>
inline void shifted_axpy(acc_t* __restrict__ out_row, const acc_t* __restrict__ src_row, acc_t wv, int64_t off,
                         int64_t W) {
  const int64_t lo = std::max<int64_t>(0, -off), hi = std::min<int64_t>(W, W - off);
  for (int64_t w = lo; w < hi; ++w) out_row[w] += wv * src_row[w + off];
}

// sum_w a[w] * b[w + off] over the w where w + off lies inside [0, W).
template <typename acc_t>
inline acc_t shifted_dot(const acc_t* __restrict__ a, const acc_t* __restrict__ b, int64_t off, int64_t W) {
  const int64_t lo = std::max<int64_t>(0, -off), hi = std::min<int64_t>(W, W - off);
  acc_t s = 0;
  for (int64_t w = lo; w < hi; ++w) s += a[w] * b[w + off];
  return s;
}

// One row of the depthwise conv's pre-activation: row[w] = b + sum_{dy,dx} wk[dy,dx] * x1[src_c, r+dy-p, w+dx-p].
// x1 holds rows [a0, a0 + na) of channel planes of P = na*W elements each.
template <typename acc_t>
inline void depthwise_row(acc_t* __restrict__ row, const acc_t* x1_plane, const acc_t* wk, acc_t b, int64_t r,
                          int64_t a0, int64_t H, int64_t W, int64_t K) {
  const int64_t p = K / 2;
  std::fill(row, row + W, b);
  for (int64_t dy = 0; dy < K; ++dy) {
    const int64_t rr = r + dy - p;
    if (rr < 0 || rr >= H) continue;
    const acc_t* src = x1_plane + (rr - a0) * W;
    for (int64_t dx = 0; dx < K; ++dx) shifted_axpy(row, src, wk[dy * K + dx], dx - p, W);
  }
}

template <typename scalar_t, Act A>
void forward_kernel(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                    const at::Tensor& b2, const at::Tensor& out, const GhostDims& d, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const int64_t H = d.H, W = d.W, I = d.I, M = d.M, K = d.K, p = K / 2;
  const int64_t n_primary = d.primary_kept(), n_cheap = d.cheap_kept();

  const at::Tensor w1m = w1.reshape({I, d.C});
  const at::Tensor b1a = b1.to(acc_type).contiguous();
  const at::Tensor w2a = w2.to(acc_type).contiguous();
  const at::Tensor b2a = b2.to(acc_type).contiguous();
  const acc_t* b1p = b1a.data_ptr<acc_t>();
  const acc_t* w2p = w2a.data_ptr<acc_t>();
  const acc_t* b2p = b2a.data_ptr<acc_t>();
  const Strided4d<scalar_t> o(out);

  const int64_t band = pick_band_rows(d.N, H, p, I * W * int64_t(sizeof(acc_t) + sizeof(scalar_t)));
  const int64_t bands = ceil_div(H, band);
  const int64_t max_rows = std::min(H, band + 2 * p);

  at::parallel_for(0, d.N * bands, 1, [&](int64_t begin, int64_t end) {
    at::Tensor zbuf = at::empty({I * max_rows * W}, x.options().memory_format(at::MemoryFormat::Contiguous));
    std::vector<acc_t> x1(I * max_rows * W);
    std::vector<acc_t> row(W);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / bands;
      const int64_t r0 = (item % bands) * band, r1 = std::min(H, r0 + band);
      const int64_t a0 = std::max<int64_t>(0, r0 - p), a1 = std::min(H, r1 + p);
      const int64_t P = (a1 - a0) * W;

      // 1. z1 = W1 . x on rows [a0, a1)
      at::Tensor z = zbuf.narrow(0, 0, I * P).view({I, P});
      at::mm_out(z, w1m, band_matrix(x, n, a0, a1 - a0, channels_last));
      const scalar_t* zp = z.const_data_ptr<scalar_t>();

      // 2. x1 = act(z1 + b1); primary half of the output on the band's own rows
      for (int64_t c = 0; c < I; ++c) {
        const acc_t bc = b1p[c];
        const scalar_t* zc = zp + c * P;
        acc_t* xc = x1.data() + c * P;
        for (int64_t q = 0; q < P; ++q) xc[q] = act_forward(A, static_cast<acc_t>(zc[q]) + bc);
      }
      for (int64_t c = 0; c < n_primary; ++c) {
        for (int64_t r = r0; r < r1; ++r) {
          const acc_t* src = x1.data() + c * P + (r - a0) * W;
          scalar_t* dst = o.row(n, c, r);
          for (int64_t w = 0; w < W; ++w) dst[w * o.sw] = static_cast<scalar_t>(src[w]);
        }
      }

      // 3. cheap half: act(b2 + depthwise(x1)) straight into the output
      for (int64_t j = 0; j < n_cheap; ++j) {
        const acc_t* plane = x1.data() + (j / M) * P;
        for (int64_t r = r0; r < r1; ++r) {
          depthwise_row(row.data(), plane, w2p + j * K * K, b2p[j], r, a0, H, W, K);
          scalar_t* dst = o.row(n, I + j, r);
          for (int64_t w = 0; w < W; ++w) dst[w * o.sw] = static_cast<scalar_t>(act_forward(A, row[w]));
        }
      }
    }
  });
}

template <typename scalar_t, Act A>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                     const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& grad_x, at::Tensor& gw1,
                     at::Tensor& gb1, at::Tensor& gw2, at::Tensor& gb2, const GhostDims& d, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const bool same_type = std::is_same<acc_t, scalar_t>::value;
  const int64_t C = d.C, H = d.H, W = d.W, I = d.I, M = d.M, K = d.K, p = K / 2, KK = K * K;
  const int64_t n_cheap = d.cheap_kept(), OC = d.oc;

  const at::Tensor w1a = w1.to(acc_type).reshape({I, C}).contiguous();
  const at::Tensor w1a_t = w1a.t();
  const at::Tensor b1a = b1.to(acc_type).contiguous();
  const at::Tensor w2a = w2.to(acc_type).contiguous();
  const at::Tensor b2a = b2.to(acc_type).contiguous();
  const acc_t* b1p = b1a.data_ptr<acc_t>();
  const acc_t* w2p = w2a.data_ptr<acc_t>();
  const acc_t* b2p = b2a.data_ptr<acc_t>();
  const Strided4d<const scalar_t> go(grad_out);

  // Per-thread partial sums of the weight gradients.
  const int64_t T = at::get_num_threads();
  const auto acc_opts = x.options().dtype(acc_type).memory_format(at::MemoryFormat::Contiguous);
  at::Tensor part_w1 = at::zeros({T, I, C}, acc_opts);
  at::Tensor part_b1 = at::zeros({T, I}, acc_opts);
  at::Tensor part_w2 = at::zeros({T, I * M, KK}, acc_opts);
  at::Tensor part_b2 = at::zeros({T, I * M}, acc_opts);

  const int64_t bytes_per_row = (2 * I + n_cheap + I + C) * W * int64_t(sizeof(acc_t));
  const int64_t band = pick_band_rows(d.N, H, 2 * p, bytes_per_row);
  const int64_t bands = ceil_div(H, band);
  const int64_t max_a = std::min(H, band + 4 * p), max_b = std::min(H, band + 2 * p);

  at::parallel_for(0, d.N * bands, 1, [&](int64_t begin, int64_t end) {
    const int64_t tid = at::get_thread_num();
    at::Tensor pw1 = part_w1.select(0, tid);
    acc_t* pb1 = part_b1.select(0, tid).data_ptr<acc_t>();
    acc_t* pw2 = part_w2.select(0, tid).data_ptr<acc_t>();
    acc_t* pb2 = part_b2.select(0, tid).data_ptr<acc_t>();
    at::Tensor zbuf = at::empty({I * max_a * W}, acc_opts);
    at::Tensor g1buf = at::empty({I * band * W}, acc_opts);
    std::vector<acc_t> x1(I * max_a * W);
    std::vector<acc_t> g2(n_cheap * max_b * W);
    std::vector<acc_t> row(W);

    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / bands;
      const int64_t r0 = (item % bands) * band, r1 = std::min(H, r0 + band), own = r1 - r0;
      const int64_t a0 = std::max<int64_t>(0, r0 - 2 * p), a1 = std::min(H, r1 + 2 * p);
      const int64_t b0 = std::max<int64_t>(0, r0 - p), b1r = std::min(H, r1 + p);
      const int64_t PA = (a1 - a0) * W, PB = (b1r - b0) * W, PO = own * W;

      // Recompute z1 and x1 on rows [a0, a1).
      at::Tensor xa = band_matrix(x, n, a0, a1 - a0, channels_last);
      if (!same_type) xa = xa.to(acc_type);
      at::Tensor z = zbuf.narrow(0, 0, I * PA).view({I, PA});
      at::mm_out(z, w1a, xa);
      acc_t* zp = z.data_ptr<acc_t>();
      for (int64_t c = 0; c < I; ++c) {
        const acc_t bc = b1p[c];
        for (int64_t q = 0; q < PA; ++q) {
          zp[c * PA + q] += bc;
          x1[c * PA + q] = act_forward(A, zp[c * PA + q]);
        }
      }

      // g2 = grad of the cheap half's pre-activation, on rows [b0, b1r); its weight gradients on own rows only
      // (the neighbouring bands account for theirs).
      for (int64_t j = 0; j < n_cheap; ++j) {
        const acc_t* plane = x1.data() + (j / M) * PA;
        const acc_t* wk = w2p + j * KK;
        for (int64_t r = b0; r < b1r; ++r) {
          acc_t* g = g2.data() + j * PB + (r - b0) * W;
          const scalar_t* gor = go.row(n, I + j, r);
          if (A == Act::Identity) {
            for (int64_t w = 0; w < W; ++w) g[w] = static_cast<acc_t>(gor[w * go.sw]);
          } else {
            depthwise_row(row.data(), plane, wk, b2p[j], r, a0, H, W, K);
            for (int64_t w = 0; w < W; ++w) g[w] = static_cast<acc_t>(gor[w * go.sw]) * act_derivative(A, row[w]);
          }
        }
        for (int64_t r = r0; r < r1; ++r) {
          const acc_t* g = g2.data() + j * PB + (r - b0) * W;
          acc_t s = 0;
          for (int64_t w = 0; w < W; ++w) s += g[w];
          pb2[j] += s;
          for (int64_t dy = 0; dy < K; ++dy) {
            const int64_t rr = r + dy - p;
            if (rr < 0 || rr >= H) continue;
            const acc_t* src = plane + (rr - a0) * W;
            for (int64_t dx = 0; dx < K; ++dx) pw2[j * KK + dy * K + dx] += shifted_dot(g, src, dx - p, W);
          }
        }
      }

      // g1 = (grad of x1 from the output slice + transposed depthwise conv of g2) * act'(z1), on own rows.
      acc_t* g1 = g1buf.data_ptr<acc_t>();
      for (int64_t c = 0; c < I; ++c) {
        for (int64_t r = r0; r < r1; ++r) {
          acc_t* gr = g1 + c * PO + (r - r0) * W;
          if (c < OC) {
            const scalar_t* gor = go.row(n, c, r);
            for (int64_t w = 0; w < W; ++w) gr[w] = static_cast<acc_t>(gor[w * go.sw]);
          } else {
            std::fill(gr, gr + W, acc_t(0));
          }
          for (int64_t m = 0; m < M; ++m) {
            const int64_t j = c * M + m;
            if (j >= n_cheap) break;
            const acc_t* wk = w2p + j * KK;
            for (int64_t dy = 0; dy < K; ++dy) {
              const int64_t rs = r - dy + p;
              if (rs < 0 || rs >= H) continue;
              const acc_t* g = g2.data() + j * PB + (rs - b0) * W;
              for (int64_t dx = 0; dx < K; ++dx) shifted_axpy(gr, g, wk[dy * K + dx], p - dx, W);
            }
          }
          const acc_t* zr = zp + c * PA + (r - a0) * W;
          acc_t s = 0;
          for (int64_t w = 0; w < W; ++w) {
            gr[w] *= act_derivative(A, zr[w]);
            s += gr[w];
          }
          pb1[c] += s;
        }
      }

      // The two 1x1 GEMMs: grad W1 += g1 . x^T and grad x = W1^T . g1 on own rows.
      const at::Tensor g1m = g1buf.narrow(0, 0, I * PO).view({I, PO});
      const at::Tensor xo = xa.narrow(1, (r0 - a0) * W, PO);
      pw1.addmm_(g1m, xo.t());
      at::Tensor gx_band = grad_x.select(0, n).narrow(1, r0, own);  // [C, own, W]
      if (!channels_last && same_type) {
        at::Tensor gx_mat = gx_band.view({C, PO});
        at::mm_out(gx_mat, w1a_t, g1m);
      } else {
        gx_band.copy_(at::mm(w1a_t, g1m).view({C, own, W}));
      }
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

at::Tensor ghost_module_cpu(const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
                            const at::Tensor& w_cheap, const at::Tensor& b_cheap, int64_t out_channels,
                            c10::string_view act) {
  const GhostDims d = check_ghost_inputs(kForwardOp, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act);
  check_cpu(kForwardOp, x);
  const at::MemoryFormat fmt = output_memory_format(x);
  at::Tensor out = at::empty({d.N, d.oc, d.H, d.W}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor w1 = w_primary.contiguous(), b1 = b_primary.contiguous();
  const at::Tensor w2 = w_cheap.contiguous(), b2 = b_cheap.contiguous();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "ghost_module_cpu", [&] {
    dispatch_act(d.act, [&](auto a) {
      forward_kernel<scalar_t, decltype(a)::value>(xc, w1, b1, w2, b2, out, d, cl);
    });
  });
  return out;
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
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor gw1 = at::zeros(w_primary.sizes(), w_primary.options());
  at::Tensor gb1 = at::zeros(b_primary.sizes(), b_primary.options());
  at::Tensor gw2 = at::zeros(w_cheap.sizes(), w_cheap.options());
  at::Tensor gb2 = at::zeros(b_cheap.sizes(), b_cheap.options());
  if (x.numel() == 0) {
    grad_x.zero_();
    return {grad_x, gw1, gb1, gw2, gb2};
  }
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor goc = grad_out.contiguous(fmt);
  const at::Tensor w1 = w_primary.contiguous(), b1 = b_primary.contiguous();
  const at::Tensor w2 = w_cheap.contiguous(), b2 = b_cheap.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "ghost_module_backward_cpu", [&] {
    dispatch_act(d.act, [&](auto a) {
      backward_kernel<scalar_t, decltype(a)::value>(goc, xc, w1, b1, w2, b2, grad_x, gw1, gb1, gw2, gb2, d, cl);
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
