// The CPU kernels of the train-mode BatchNorm passes that start from z1 (entry_points.h): ghost_bn_cheap_stats,
// ghost_bn_forward_out and ghost_bn_backward_reduce (csrc/ghost_module.cpp has their math).
//
// All three walk z1 the same way (util_z1_walk.h): per work item, the item's z1 rows are copied into a buffer of
// the accumulation type (float for float32 and bfloat16, double for float64; the copy also undoes any memory
// format), y1 = weight1 * (z1 - mean1) * invstd1 + bias1 is computed per pixel, and the per-pixel functions of y1
// that the depthwise conv reads go into compact planes with zero rows standing for the padding; then each cheap
// channel's depthwise stencils (util_plane_ops.h) run over all of the item's images at once. grad_out rows (the
// reduce pass) and output rows (the output pass) go through buffers of the accumulation type the same way, so one
// kernel serves every dtype and memory format.
//
// Numerics: everything after z1 in the accumulation type; statistics as util_channel_stats.h describes; sums per
// item and channel in 16 partial sums of the accumulation type, then in float64 per thread (the reduce pass's
// cheap-channel sums in float on AVX-512: one 16-lane accumulator per sum, kernel_bn_reduce_avx512.h).
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <initializer_list>
#include <type_traits>
#include <tuple>

#include "../activations.h"
#include "entry_points.h"
#include "kernel_bn_reduce_avx512.h"
#include "kernel_ghost_forward_avx512.h"
#include "util_channel_stats.h"
#include "util_ghost_launch.h"
#include "util_kernel_choice.h"
#include "util_tensor_pool.h"
#include "util_z1_walk.h"

namespace ghostkernels {
namespace cpu {
namespace {

// One BN stage's per-channel vectors (BnStage, already in the accumulation type) as raw pointers.
template <typename acc_t>
struct StageView {
  const acc_t *mean, *invstd, *weight, *bias;
  explicit StageView(const BnStage& s)
      : mean(s.mean.const_data_ptr<acc_t>()), invstd(s.invstd.const_data_ptr<acc_t>()),
        weight(s.weight.const_data_ptr<acc_t>()), bias(s.bias.const_data_ptr<acc_t>()) {}
  acc_t xhat(int64_t c, acc_t z) const { return (z - mean[c]) * invstd[c]; }
  acc_t pre(int64_t c, acc_t xh) const { return weight[c] * xh + bias[c]; }
};

// Fills plane set 0 of the item's channels with x1 = act(y1) (what every pass needs).
template <typename acc_t, Act A>
void fill_x1_planes(const Z1Walk<acc_t>& walk, typename Z1Walk<acc_t>::Buffers& b, const Z1Item& it,
                    const acc_t* zr, const StageView<acc_t>& s1) {
  for (int64_t c = it.c0; c < it.c1; ++c) {
    for (int64_t i = 0; i < it.g; ++i) {
      const acc_t* zc = zr + ((c - it.c0) * it.g + i) * it.PA;
      fill_plane(walk.plane(b, 0, it, c, i), it.planes, it.a0, it.a1,
                 [&](int64_t q) { return act_forward(A, s1.pre(c, s1.xhat(c, zc[q]))); });
    }
  }
}

// backward_reduce's three plane sets of one (channel, image) in one pass over its z1 rows (xhat1 and y1 computed
// once per pixel, not once per set): x1 = act(y1), a1 = act'(y1), a1 * xhat1, with fill_plane's zero rows and
// slack (util_ghost_launch.h). The inner loop takes restrict pointers and the channel's BN as values, so that it
// vectorizes without alias checks (a lambda reading the BN vectors through pointers ran scalar: 4x the pass's time).
template <typename acc_t, Act A>
void fill_values(acc_t* __restrict__ x1, acc_t* __restrict__ a1, acc_t* __restrict__ aq, const acc_t* __restrict__ z,
                 int64_t n, acc_t mean, acc_t invstd, acc_t weight, acc_t bias) {
  for (int64_t q = 0; q < n; ++q) {
    const acc_t xh = (z[q] - mean) * invstd, y = weight * xh + bias, d = act_derivative(A, y);
    x1[q] = act_forward(A, y);
    a1[q] = d;
    aq[q] = d * xh;
  }
}

template <typename acc_t, Act A>
void fill_reduce_planes(acc_t* o0, acc_t* o1, acc_t* o2, const Planes& g, int64_t a0, int64_t a1, const acc_t* z,
                        const StageView<acc_t>& s1, int64_t c) {
  const int64_t head = (a0 - g.top) * g.W, tail = (a1 - g.top) * g.W, end = g.rows * g.W;
  for (acc_t* o : {o0, o1, o2}) {
    std::fill(o - g.p, o + head, acc_t(0));
    std::fill(o + tail, o + end + g.p, acc_t(0));
  }
  fill_values<acc_t, A>(o0 + head, o1 + head, o2 + head, z, tail - head, s1.mean[c], s1.invstd[c], s1.weight[c],
                        s1.bias[c]);
}

// Whether a call's depthwise stencils are the AVX-512 forward kernel's (float, where GHOSTKERNELS_CPU_KERNEL and the
// CPU allow it and the kernel size has one) rather than util_plane_ops.h's.
template <typename acc_t>
bool avx512_stencils(const GhostDims& d) {
  return std::is_same<acc_t, float>::value && use_avx512(cpu_kernel_knob(), false, d.K);
}

// The depthwise stencils of a call (see avx512_stencils).
template <typename acc_t>
struct Stencils {
  const Z1Walk<acc_t>& walk;
  const GhostDims& d;
  const acc_t* w2;
  bool avx512;
  std::vector<uint16_t> masks;  // avx512_column_masks over the walk's stencil outputs

  Stencils(const Z1Walk<acc_t>& walk_, const GhostDims& d_, const acc_t* w2_)
      : walk(walk_), d(d_), w2(w2_), avx512(avx512_stencils<acc_t>(d_)) {
    if (avx512) masks = avx512_column_masks(d.K, d.W, walk.mask_rows());
  }

  // Cheap channel j's depthwise conv (no bias) over all of the item's images, from plane set `set` of its primary
  // channel, into b.outs[out].
  const acc_t* run(typename Z1Walk<acc_t>::Buffers& b, const Z1Item& it, int64_t set, int64_t out, int64_t j) const {
    const int64_t KK = d.K * d.K;
    const acc_t* src = walk.plane(b, set, it, j / d.M, 0);
    acc_t* dst = b.outs[out].data();
    if constexpr (std::is_same<acc_t, float>::value) {
      if (avx512) {
        avx512_depthwise_taps(src + it.planes.p * d.W, dst, walk.outputs(it), d.W, d.K, w2 + j * KK, masks.data());
        return dst;
      }
    }
    stencil(dst, src, w2 + j * KK, d.K, d.W, walk.outputs(it), /*init=*/true, acc_t(0), walk.masks(),
            b.scratch.data());
    return dst;
  }
};

// The item loop every pass runs: at::parallel_for over the walk's items, each thread with its own buffers.
template <typename acc_t, typename F>
void for_each_item(const Z1Walk<acc_t>& walk, const at::Tensor& z1, int64_t n_outs, bool with_rows, F&& f) {
  const RowCopy<acc_t> rows(z1);
  at::parallel_for(0, walk.plan().items(), 1, [&](int64_t begin, int64_t end) {
    typename Z1Walk<acc_t>::Buffers b = walk.buffers(z1, n_outs, with_rows);
    const int64_t tid = at::get_thread_num();
    for (int64_t item = begin; item < end; ++item) {
      const Z1Item it = walk.item(item);
      f(it, walk.load(rows, it, b), b, tid);
    }
  });
}

template <typename acc_t, Act A>
void cheap_stats_kernel(const at::Tensor& z1, const BnStage& primary, const at::Tensor& w_cheap,
                        ThreadMoments& moments, const GhostDims& d) {
  const Z1Walk<acc_t> walk(d, /*planes_per_channel=*/1, /*bytes_per_pixel=*/0, !avx512_stencils<acc_t>(d));
  const StageView<acc_t> s1(primary);
  const Stencils<acc_t> stencils(walk, d, w_cheap.const_data_ptr<acc_t>());
  const int64_t ps = walk.plane_stride();
  for_each_item(walk, z1, 1, false, [&](const Z1Item& it, const acc_t* zr, auto& b, int64_t tid) {
    Moments* mom = moments.of_thread(tid);
    fill_x1_planes<acc_t, A>(walk, b, it, zr, s1);
    for (int64_t j = it.c0 * d.M; j < it.c1 * d.M; ++j) {
      const acc_t* z2 = stencils.run(b, it, 0, 0, j);
      for (int64_t i = 0; i < it.g; ++i) add_block_moments(mom[j], z2 + i * ps, it.own * d.W);
    }
  });
}

template <typename acc_t, Act A>
void forward_out_kernel(const at::Tensor& z1, const BnStage& primary, const at::Tensor& w_cheap, const BnStage& cheap,
                        const at::Tensor& out, const GhostDims& d) {
  const Z1Walk<acc_t> walk(d, /*planes_per_channel=*/1, /*bytes_per_pixel=*/(d.M + 1) * sizeof(acc_t),
                           !avx512_stencils<acc_t>(d));
  const StageView<acc_t> s1(primary), s2(cheap);
  const Stencils<acc_t> stencils(walk, d, w_cheap.const_data_ptr<acc_t>());
  const RowCopy<acc_t> out_rows(out);
  const int64_t ps = walk.plane_stride(), W = d.W, n_primary = d.primary_kept(), n_cheap = d.cheap_kept();
  for_each_item(walk, z1, 1, true, [&](const Z1Item& it, const acc_t* zr, auto& b, int64_t) {
    acc_t* ob = b.rows.template data_ptr<acc_t>();  // the item's output rows, [channels][g][own * W]
    const int64_t PO = it.own * W, g = it.g;
    fill_x1_planes<acc_t, A>(walk, b, it, zr, s1);
    // Primary half: x1 on the own rows, straight from the planes.
    const int64_t p_end = std::min(it.c1, n_primary), np = std::max<int64_t>(0, p_end - it.c0);
    for (int64_t c = it.c0; c < p_end; ++c) {
      for (int64_t i = 0; i < g; ++i) {
        std::copy_n(walk.plane(b, 0, it, c, i) + it.planes.p * W, PO, ob + ((c - it.c0) * g + i) * PO);
      }
    }
    // Cheap half: act(BN2(dwconv(x1))).
    const int64_t j0 = it.c0 * d.M, j_end = std::min(it.c1 * d.M, n_cheap), nc = std::max<int64_t>(0, j_end - j0);
    acc_t* oc = ob + np * g * PO;
    for (int64_t j = j0; j < j_end; ++j) {
      const acc_t* z2 = stencils.run(b, it, 0, 0, j);
      for (int64_t i = 0; i < g; ++i) {
        acc_t* dst = oc + ((j - j0) * g + i) * PO;
        const acc_t* src = z2 + i * ps;
        for (int64_t q = 0; q < PO; ++q) dst[q] = act_forward(A, s2.pre(j, s2.xhat(j, src[q])));
      }
    }
    out_rows.from_buffer(it.n0, g, it.c0, np, it.r0, it.own, ob);
    out_rows.from_buffer(it.n0, g, d.I + j0, nc, it.r0, it.own, oc);
  });
}

template <typename acc_t, Act A>
void backward_reduce_kernel(const at::Tensor& grad_out, const at::Tensor& z1, const BnStage& primary,
                            const at::Tensor& w_cheap, const BnStage& cheap, ThreadSums& sums_p, ThreadSums& sums_c,
                            const GhostDims& d) {
  // Plane sets: 0 = x1, 1 = a1 = act'(y1), 2 = a1 * xhat1; stencil outputs: 0 = z2, 1 = da, 2 = dq.
  const Z1Walk<acc_t> walk(d, /*planes_per_channel=*/3, /*bytes_per_pixel=*/(d.M + 1) * sizeof(acc_t),
                           !avx512_stencils<acc_t>(d));
  const StageView<acc_t> s1(primary), s2(cheap);
  const Stencils<acc_t> stencils(walk, d, w_cheap.const_data_ptr<acc_t>());
  const RowCopy<acc_t> grad_rows(grad_out);
  const int64_t ps = walk.plane_stride(), W = d.W, n_primary = d.primary_kept(), n_cheap = d.cheap_kept();
  // The cheap channels' eight sums on AVX-512 where the stencils are (float, and an activation the kernel has).
  const bool avx512_sums = stencils.avx512 && avx512_bn_cheap_sums_available(static_cast<int>(A));
  for_each_item(walk, z1, 3, true, [&](const Z1Item& it, const acc_t* zr, auto& b, int64_t tid) {
    const int64_t PO = it.own * W, g = it.g;
    const int64_t p_end = std::min(it.c1, n_primary), np = std::max<int64_t>(0, p_end - it.c0);
    const int64_t j0 = it.c0 * d.M, j_end = std::min(it.c1 * d.M, n_cheap), nc = std::max<int64_t>(0, j_end - j0);
    acc_t* gp = b.rows.template data_ptr<acc_t>();  // the item's grad_out rows, [channels][g][own * W]
    acc_t* gc = gp + np * g * PO;
    grad_rows.to_buffer(it.n0, g, it.c0, np, it.r0, it.own, gp);
    grad_rows.to_buffer(it.n0, g, d.I + j0, nc, it.r0, it.own, gc);

    // The three plane sets in one pass over z1 (xhat1 and y1 computed once per pixel, not once per set).
    for (int64_t c = it.c0; c < it.c1; ++c) {
      for (int64_t i = 0; i < g; ++i) {
        const acc_t* zc = zr + ((c - it.c0) * g + i) * it.PA;
        fill_reduce_planes<acc_t, A>(walk.plane(b, 0, it, c, i), walk.plane(b, 1, it, c, i),
                                     walk.plane(b, 2, it, c, i), it.planes, it.a0, it.a1, zc, s1, c);
      }
    }
    // sum(a1 * grad_out) and sum(a1 * xhat1 * grad_out) over the own rows of the kept primary channels.
    double* p0 = sums_p.row(tid, 0);
    double* q0 = sums_p.row(tid, 1);
    for (int64_t c = it.c0; c < p_end; ++c) {
      for (int64_t i = 0; i < g; ++i) {
        const acc_t* a = walk.plane(b, 1, it, c, i) + it.planes.p * W;
        const acc_t* aq = walk.plane(b, 2, it, c, i) + it.planes.p * W;
        const acc_t* go = gp + ((c - it.c0) * g + i) * PO;
        const auto s = lane_sums<2, acc_t>(PO, [&](int64_t q, acc_t* v) {
          v[0] = a[q] * go[q];
          v[1] = aq[q] * go[q];
        });
        p0[c] += s[0];
        q0[c] += s[1];
      }
    }
    // Per kept cheap channel: z2, da = dwconv(a1), dq = dwconv(a1 * xhat1), and the eight sums.
    double* sc[8];
    for (int r = 0; r < 8; ++r) sc[r] = sums_c.row(tid, r);
    for (int64_t j = j0; j < j_end; ++j) {
      const acc_t* z2 = stencils.run(b, it, 0, 0, j);
      const acc_t* da = stencils.run(b, it, 1, 1, j);
      const acc_t* dq = stencils.run(b, it, 2, 2, j);
      for (int64_t i = 0; i < g; ++i) {
        const int64_t o = i * ps;
        const acc_t* go = gc + ((j - j0) * g + i) * PO;
        if constexpr (std::is_same<acc_t, float>::value) {
          if (avx512_sums) {
            float s[8];
            avx512_bn_cheap_sums({z2 + o, da + o, dq + o, go, PO, s2.mean[j], s2.invstd[j], s2.weight[j], s2.bias[j],
                                  static_cast<int>(A)},
                                 s);
            for (int r = 0; r < 8; ++r) sc[r][j] += s[r];
            continue;
          }
        }
        const auto s = lane_sums<8, acc_t>(PO, [&](int64_t q, acc_t* v) {
          const acc_t xh = s2.xhat(j, z2[o + q]);
          const acc_t g2 = go[q] * act_derivative(A, s2.pre(j, xh));
          const acc_t a = da[o + q], e = dq[o + q];
          v[0] = g2, v[1] = g2 * xh;
          v[2] = a * g2, v[3] = a, v[4] = a * xh;
          v[5] = e * g2, v[6] = e, v[7] = e * xh;
        });
        for (int r = 0; r < 8; ++r) sc[r][j] += s[r];
      }
    }
  });
}

// t itself when it is NCHW- or channels_last-dense (what RowCopy reads), else a contiguous copy.
at::Tensor dense(const at::Tensor& t) { return t.contiguous(output_memory_format(t)); }

at::ScalarType stats_dtype(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Calls f(acc_t tag, Act tag) for z1's accumulation type and the call's activation.
template <typename F>
void dispatch_acc_act(const at::Tensor& z1, Act act, F&& f) {
  if (z1.scalar_type() == at::kDouble) {
    dispatch_act(act, [&](auto a) { f(double{}, a); });
  } else {
    dispatch_act(act, [&](auto a) { f(float{}, a); });
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> bn_cheap_stats(const at::Tensor& z1, const BnStage& primary,
                                                  const at::Tensor& w_cheap, const GhostDims& d) {
  ThreadMoments moments(d.I * d.M);
  if (z1.numel() > 0) {
    const at::Tensor z1c = dense(z1), w2 = w_cheap.contiguous();
    dispatch_acc_act(z1, d.act, [&](auto acc, auto a) {
      cheap_stats_kernel<decltype(acc), decltype(a)::value>(z1c, primary, w2, moments, d);
    });
  }
  return moments.finish(stats_dtype(z1));
}

at::Tensor bn_forward_out(const at::Tensor& z1, const BnStage& primary, const at::Tensor& w_cheap,
                          const BnStage& cheap, const GhostDims& d) {
  at::Tensor out = pooled_empty({d.N, d.oc, d.H, d.W}, z1.options(), output_memory_format(z1));
  if (out.numel() == 0) return out;
  const at::Tensor z1c = dense(z1), w2 = w_cheap.contiguous();
  dispatch_acc_act(z1, d.act, [&](auto acc, auto a) {
    forward_out_kernel<decltype(acc), decltype(a)::value>(z1c, primary, w2, cheap, out, d);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bn_backward_reduce(const at::Tensor& grad_out, const at::Tensor& z1,
                                                      const BnStage& primary, const at::Tensor& w_cheap,
                                                      const BnStage& cheap, const GhostDims& d) {
  ThreadSums sums_p(2, d.I), sums_c(8, d.I * d.M);
  if (z1.numel() > 0) {
    const at::Tensor z1c = dense(z1), goc = dense(grad_out), w2 = w_cheap.contiguous();
    dispatch_acc_act(z1, d.act, [&](auto acc, auto a) {
      backward_reduce_kernel<decltype(acc), decltype(a)::value>(goc, z1c, primary, w2, cheap, sums_p, sums_c, d);
    });
  }
  return {sums_p.finish(stats_dtype(z1)), sums_c.finish(stats_dtype(z1))};
}

}  // namespace cpu
}  // namespace ghostkernels
