// The CPU forward of ghostkernels::ghost_module (ghost_forward in entry_points.h): the launcher, and the generic
// kernel.
//
// On CPUs with AVX-512 the float32/bfloat16 NCHW forward runs on kernel_ghost_forward_avx512.cpp instead; the
// GHOSTKERNELS_CPU_KERNEL knob (util_kernel_choice.h) picks. What follows describes the generic kernel, which
// handles everything.
//
// Per work item (images x primary-channel block x row band, see util_work_plan.h):
//   1. z1 = W1 . x for the item's channels over its rows plus a halo of k//2 rows: one GEMM (at::mm, so MKL or
//      oneDNN) over all the item's pixels; a halo shared with a neighbouring band is recomputed, not exchanged;
//   2. x1 = act(z1 + b1) into compact, cache-resident planes with zero rows above and below (util_plane_ops.h),
//      never written out as a tensor;
//   3. the primary half of the output is x1 on the item's own rows; the cheap half is act(b2 + depthwise(x1)),
//      computed from the planes (rows outside the image are the planes' zero rows, columns outside it are
//      masked), straight into the output.
//
// Numerics: bfloat16 takes bfloat16 GEMMs (oneDNN uses the CPU's bf16 dot-product instructions, accumulating in
// float, rounding z1 to bfloat16 as eager's convolution does); everything after the GEMM is computed in float.
// float64 is computed in float64 throughout.
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/upsample_nearest2d.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <array>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "../activations.h"
#include "../ghost_module_check.h"
#include "../nearest_index.h"
#include "entry_points.h"
#include "kernel_ghost_forward_avx512.h"
#include "util_float_weights.h"
#include "util_forward_avx512_call.h"
#include "util_bf16_widen.h"
#include "util_ghost_launch.h"
#include "util_kernel_choice.h"
#include "util_mask_cache.h"
#include "util_plane_ops.h"
#include "util_tensor_pool.h"
#include "util_tile_balance.h"
#include "util_work_plan.h"

namespace ghostkernels {
namespace cpu {
namespace {

template <typename scalar_t, Act A, bool CL>
void forward_kernel(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                    const at::Tensor& b2, const at::Tensor& out, const GhostDims& d) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const int64_t N = d.N, C = d.C, H = d.H, W = d.W, I = d.I, M = d.M, K = d.K, p = K / 2;
  const int64_t n_primary = d.primary_kept(), n_cheap = d.cheap_kept();

  const at::Tensor w1m = w1.reshape({I, C});
  // bfloat16 where ATen's bfloat16 GEMM is a scalar loop: a float32 GEMM, z1 rounded to bfloat16 as before.
  const bool widen = cpu::widen_bf16(x);
  const at::Tensor w1g = widen ? w1m.to(at::kFloat) : w1m;
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
      const at::Tensor xm = input_matrix(x, n0, g, a0, a1 - a0, CL, pack);
      if (widen) {
        z.copy_(at::mm(w1g.narrow(0, c0, cb), xm.to(at::kFloat)));
      } else {
        at::mm_out(z, w1m.narrow(0, c0, cb), xm);
      }
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

bool use_avx512_forward(const at::Tensor& x, at::MemoryFormat fmt, const GhostDims& d) {
  const CpuKernel knob = cpu_kernel_knob();
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if (!(bf16 || x.scalar_type() == at::kFloat) || fmt != at::MemoryFormat::Contiguous) return false;
  return use_avx512(knob, bf16, d.K);
}

// For each output pixel of an H x W image, the element of an Hg x Wg map that nearest upsampling puts there.
std::vector<int32_t> gate_index_table(int64_t H, int64_t W, int64_t Hg, int64_t Wg) {
  std::vector<int32_t> idx(H * W);
  for (int64_t h = 0; h < H; ++h) {
    const int64_t row = nearest_source_index(h, Hg, H) * Wg;
    for (int64_t w = 0; w < W; ++w) idx[h * W + w] = static_cast<int32_t>(row + nearest_source_index(w, Wg, W));
  }
  return idx;
}

constexpr int64_t kLanesPerVector = 16;  // floats per AVX-512 vector

// balance_tiles (util_tile_balance.h) for a float32 call, remembered per shape: its search models a few hundred
// items, microseconds that a batch-1 module of 20-60 us should not pay on every call of a network.
template <typename Fits>
cpu::WorkPlan balanced_plan(const cpu::WorkPlan& base, const GhostDims& d, int64_t threads, Fits&& fits) {
  if (threads < 2 || base.groups >= 2 * threads) return base;  // what balance_tiles would return, without the lock
  using Key = std::array<int64_t, 11>;
  static std::mutex mutex;
  static std::map<Key, cpu::WorkPlan> plans;
  const Key key{d.N, d.C, d.H, d.W, d.I, d.M, d.K, threads, base.G, base.Ib, base.B};
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it == plans.end()) {
    const cpu::ForwardShape s{d.N, d.C, d.H, d.W, d.I, d.M, d.K};
    const cpu::TileShape t{cpu::kForwardTileChannels, cpu::kForwardTileVectors};
    it = plans.emplace(key, cpu::balance_tiles(base, s, t, threads, fits)).first;
  }
  return it->second;
}

}  // namespace

ForwardAvx512Call::ForwardAvx512Call(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                                     const at::Tensor& w2, const at::Tensor& b2, const GhostDims& d,
                                     const at::Tensor& gate)
    : b1f_(b1), w2f_(w2), b2f_(b2) {
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const bool bf16_dot = bf16 && cpu::avx512_forward_bf16_dot();
  // AMX only where the input channels fill at least one tile's 16 pairs more than half: with C <= 16 (GhostNet's
  // 112x112 and first 56x56 modules) the zero-padded tile product and its stores through memory cost more than the
  // bf16 dot product's registers (bench/NOTES.md entry 60).
  const bool amx = bf16_dot && (d.C + 1) / 2 > 8 && cpu::avx512_forward_amx();
  // bfloat16 weights for the dot product as pairs of neighbouring input channels (one 32-bit word each), an odd C
  // padded with a zero; for AMX, zero-padded further to whole tiles (avx512_amx_rows x avx512_amx_words); without
  // the dot product, float weights for the float GEMM.
  w1k_ = w1.reshape({d.I, d.C});
  if (amx) {
    w1k_ = at::constant_pad_nd(w1k_, {0, 2 * avx512_amx_words(d.C) - d.C, 0, avx512_amx_rows(d.I) - d.I});
  } else if (bf16_dot && d.C % 2 == 1) {
    w1k_ = at::constant_pad_nd(w1k_, {0, 1});
  }
  w1k_ = w1k_.contiguous();
  if (bf16 && !bf16_dot) w1f_.emplace(w1k_);
  prm.bf16 = bf16;
  prm.bf16_dot = bf16_dot;
  prm.amx = amx;
  // The gated module's map as float32 planes; the kernel's window loads may read past a plane up to the end of the
  // memory holding it (the bottleneck's maps come with slack after the last plane, util_tensor_pool.h).
  gatef_ = !gate.defined()                     ? gate
           : gate.scalar_type() == at::kFloat ? gate.contiguous()
                                              : gate.to(at::kFloat).contiguous();
  if (gatef_.defined()) {
    const int64_t Hg = gatef_.size(2), Wg = gatef_.size(3);
    gate_index_ = gate_index_table(d.H, d.W, Hg, Wg);
    prm.gate = gatef_.const_data_ptr<float>();
    prm.gate_end = reinterpret_cast<const float*>(static_cast<const char*>(gatef_.storage().data()) +
                                                  gatef_.storage().nbytes());
    prm.gate_plane = Hg * Wg;
    prm.gate_index = gate_index_.data();
  }
  prm.x = x.const_data_ptr();
  prm.w1 = w1f_ ? static_cast<const void*>(w1f_->data()) : w1k_.const_data_ptr();
  prm.b1 = b1f_.data();
  prm.w2 = w2f_.data();
  prm.b2 = b2f_.data();
  prm.N = d.N, prm.C = d.C, prm.H = d.H, prm.W = d.W, prm.I = d.I, prm.M = d.M, prm.K = d.K, prm.OC = d.oc;
  prm.n_primary = d.primary_kept();
  prm.n_cheap = d.cheap_kept();
  prm.act = static_cast<int>(d.act);
}

namespace {

// Float32 or bfloat16 NCHW forward on the AVX-512 kernel (kernel_ghost_forward_avx512.h); x and out are contiguous.
void forward_avx512(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                    const at::Tensor& b2, const at::Tensor& out, const at::Tensor& residual, const GhostDims& d,
                    const at::Tensor& gate) {
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  ForwardAvx512Call call(x, w1, b1, w2, b2, d, gate);
  ForwardAvx512Params& prm = call.prm;
  prm.out = out.mutable_data_ptr();
  prm.residual = residual.defined() ? residual.const_data_ptr() : nullptr;
  const int64_t p = d.K / 2, es = x.element_size();
  // Working set of an item: x's rows of the item (packed or not, re-read once per tile of primaries, so it should
  // stay in L2) and the float planes of one tile of primaries.
  // Images per item: float32 x of a single image is the GEMM's operand in place, while a group of images is first
  // copied into a panel, by every item of the group (one per block of channels). For GhostNet's 7x7 and 14x14 layers
  // at batch 8 that copy cost more than the ragged last vector of per-image GEMMs (one image per item: 10-20% faster
  // modules, bench/NOTES.md entry 47), so float32 groups only images smaller than one vector. bfloat16 packs x in
  // every case (channel pairs, or widened to float), and keeps grouping small images up to 512 pixels.
  const int64_t target_pixels = bf16 ? 512 : kLanesPerVector;
  const auto item_bytes = [&](int64_t G, int64_t, int64_t B) {
    const int64_t rows = std::min(d.H, B + 2 * p);
    return G * d.C * rows * d.W * es + cpu::kForwardTileChannels * G * (B + 2 * p) * d.W * int64_t(sizeof(float));
  };
  cpu::WorkPlan plan = cpu::plan_work(d.N, d.H, d.W, d.I, p, /*split_channels=*/true, item_bytes, target_pixels);
  // Float32 where the images leave threads without two items each (batch 1): blocks of whole tiles, cut so that the
  // busiest thread has the least work (util_tile_balance.h; bench/NOTES.md entry 49). bfloat16's tiles cost
  // differently (the dot product, packed panels) and keep plan_work's plan.
  if (!bf16) {
    plan = balanced_plan(plan, d, at::get_num_threads(), [&](int64_t G, int64_t Ib, int64_t B) {
      return item_bytes(G, Ib, B) <= cpu::kWorkItemBudgetBytes;
    });
  }
  // AMX multiplies whole tiles of 16 channels: blocks of channels cut at tile boundaries waste none.
  if (prm.amx && plan.blocks > 1) {
    plan.Ib = cpu::ceil_div(plan.Ib, 16) * 16;
    plan.blocks = cpu::ceil_div(d.I, plan.Ib);
  }
  prm.G = plan.G, prm.Ib = plan.Ib, prm.B = plan.B;
  prm.groups = plan.groups, prm.blocks = plan.blocks, prm.bands = plan.bands;
  prm.colmask = cpu::cached_masks(false, d.K, d.W, plan.B);
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

at::Tensor ghost_forward(const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
                         const at::Tensor& w_cheap, const at::Tensor& b_cheap, const GhostDims& d,
                         const at::Tensor& residual, const at::Tensor& into, const at::Tensor& gate) {
  const at::MemoryFormat fmt = output_memory_format(x);
  if (into.defined() && !into.is_contiguous(fmt)) {  // a destination of another layout: through a temporary
    into.copy_(ghost_forward(x, w_primary, b_primary, w_cheap, b_cheap, d, residual, at::Tensor(), gate));
    return into;
  }
  at::Tensor out = into.defined() ? into : pooled_empty({d.N, d.oc, d.H, d.W}, x.options(), fmt);
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor w1 = w_primary.contiguous(), b1 = b_primary.contiguous();
  const at::Tensor w2 = w_cheap.contiguous(), b2 = b_cheap.contiguous();
  if (use_avx512_forward(xc, fmt, d)) {
    forward_avx512(xc, w1, b1, w2, b2, out, residual.defined() ? residual.contiguous(fmt) : residual, d, gate);
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
  // The generic kernel's gate: one more pass over the output (float64, channels_last, CPUs without AVX-512).
  if (gate.defined()) out.mul_(at::upsample_nearest2d(gate.to(out.scalar_type()), {d.H, d.W}));
  if (residual.defined()) out.add_(residual);
  return out;
}

}  // namespace cpu
}  // namespace ghostkernels
