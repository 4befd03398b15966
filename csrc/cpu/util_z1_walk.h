// The walk over z1 that the train-mode BatchNorm passes starting from z1 share (launch_bn_z1_passes.cpp): work
// items, each item's z1 rows, and its compact planes of x1 (or of other per-pixel functions of z1) for the
// depthwise stencils of util_plane_ops.h.
//
// An item is g images x a block of primary channels x a band of rows (util_work_plan.h), with a halo of k//2 rows
// (the depthwise conv's reach). The passes are channel-separable (cheap channel j reads only primary channel
// j / (ratio-1)), so blocks need no data from each other. As in the generic forward kernel
// (launch_ghost_forward.cpp), the planes of an item's g images lie back to back `plane_stride` apart with at least
// 2p zero elements between images, so one stencil call covers all g images (their outputs start plane_stride
// apart; what lies between is junk and never used): for 7x7 images that is one long loop instead of many short ones.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "../ghost_module_check.h"
#include "util_ghost_launch.h"
#include "util_plane_ops.h"
#include "util_work_plan.h"

namespace ghostkernels {
namespace cpu {

struct Z1Item {
  int64_t n0, g;       // images [n0, n0 + g)
  int64_t c0, c1;      // primary channels [c0, c1)
  int64_t r0, own;     // own rows [r0, r0 + own)
  int64_t a0, a1, PA;  // z1 rows read: [a0, a1) = the own rows and the halo inside the image; PA = (a1 - a0) * W
  Planes planes;       // the plane geometry: rows [r0 - p, r0 + own + p)
};

template <typename acc_t>
class Z1Walk {
 public:
  // `planes_per_channel`: how many plane sets the pass fills per primary channel; `bytes_per_pixel`: what else the
  // pass keeps per (primary channel, pixel) of an item (for the cache budget of util_work_plan.h);
  // `generic_masks`: whether util_plane_ops.h's stencils run (masks()); the AVX-512 taps have masks of their own, and
  // building these costs a division per element of a group's planes on every call (at 112x112 more than a pass's
  // z1 copy, bench/NOTES.md entry 43).
  Z1Walk(const GhostDims& d, int64_t planes_per_channel, int64_t bytes_per_pixel, bool generic_masks)
      : d_(d), p_(d.K / 2), sets_(planes_per_channel) {
    const int64_t gap_rows = p_ == 0 ? 0 : ceil_div(2 * p_, d.W);
    auto stride_for = [&](int64_t B) { return (std::min(d.H, B) + 2 * p_ + gap_rows) * d.W; };
    const int64_t as = sizeof(acc_t);
    plan_ = plan_work(d.N, d.H, d.W, d.I, p_, /*split_channels=*/true, [&](int64_t G, int64_t Ib, int64_t B) {
      const int64_t rows = std::min(d.H, B + 2 * p_);
      return Ib * G * (rows * d.W * as + sets_ * stride_for(B) * as + B * d.W * bytes_per_pixel);
    });
    plane_stride_ = stride_for(plan_.B);
    group_stride_ = plan_.G * plane_stride_;
    // Before the first plane and after the last, what a stencil may read: p elements for util_plane_ops.h's loops,
    // (p + 1) rows and two vectors for the AVX-512 one (kernel_ghost_forward_avx512.h).
    slack_ = (p_ + 1) * d.W + 2 * kVec;
    masks_ = std::make_unique<ColumnMasks<acc_t>>(d.K, d.W,
                                                  generic_masks ? group_stride_ + (d.K - 1) * d.W + kVec : 0);
  }

  const WorkPlan& plan() const { return plan_; }
  const ColumnMasks<acc_t>& masks() const { return *masks_; }  // empty unless generic_masks
  int64_t plane_stride() const { return plane_stride_; }

  Z1Item item(int64_t item) const {
    Z1Item it;
    it.n0 = plan_.group_of(item) * plan_.G;
    it.g = std::min(plan_.G, d_.N - it.n0);
    it.c0 = plan_.block_of(item) * plan_.Ib;
    it.c1 = std::min(d_.I, it.c0 + plan_.Ib);
    it.r0 = plan_.band_of(item) * plan_.B;
    it.own = std::min(d_.H, it.r0 + plan_.B) - it.r0;
    it.planes = Planes{it.r0 - p_, it.own + 2 * p_, d_.W, p_, plane_stride_};
    it.a0 = std::max<int64_t>(0, it.r0 - p_);
    it.a1 = std::min(d_.H, it.r0 + it.own + p_);
    it.PA = (it.a1 - it.a0) * d_.W;
    return it;
  }

  // Outputs of one stencil over all of an item's images (image i's own rows start at i * plane_stride).
  int64_t outputs(const Z1Item& it) const { return (it.g - 1) * plane_stride_ + it.own * d_.W; }

  // Per-thread buffers: the item's z1 rows in the accumulation type, the plane sets (zero-initialized once: the
  // gap rows between images are never written and must stay zero), stencil outputs and scratch, and `rows`: room
  // for a pass's own rows of (M + 1) channels per primary channel (output or grad_out rows), [Ib * (M+1)][G][B*W].
  struct Buffers {
    at::Tensor zrows;                        // [Ib][G][PA]
    std::vector<std::vector<acc_t>> planes;  // one per set
    std::vector<acc_t> scratch;
    std::vector<std::vector<acc_t>> outs;    // stencil outputs
    at::Tensor rows;
  };
  Buffers buffers(const at::Tensor& z1, int64_t n_outs, bool with_rows) const {
    Buffers b;
    const int64_t max_rows = std::min(d_.H, plan_.B + 2 * p_);
    const auto opts =
        z1.options().dtype(c10::CppTypeToScalarType<acc_t>::value).memory_format(at::MemoryFormat::Contiguous);
    b.zrows = at::empty({plan_.Ib * plan_.G * max_rows * d_.W}, opts);
    if (with_rows) b.rows = at::empty({plan_.Ib * (d_.M + 1) * plan_.G * plan_.B * d_.W}, opts);
    for (int64_t s = 0; s < sets_; ++s) b.planes.emplace_back(plan_.Ib * group_stride_ + 2 * slack_);
    b.scratch.resize(kChunk + (d_.K - 1) * d_.W);
    for (int64_t s = 0; s < n_outs; ++s) b.outs.emplace_back(group_stride_ + kVec);
    return b;
  }

  // Copies the item's z1 rows into b.zrows and returns them: zrows[((c - c0) * g + i) * PA + q], q counted from
  // row a0.
  const acc_t* load(const RowCopy<acc_t>& z1, const Z1Item& it, Buffers& b) const {
    acc_t* z = b.zrows.template data_ptr<acc_t>();
    z1.to_buffer(it.n0, it.g, it.c0, it.c1 - it.c0, it.a0, it.a1 - it.a0, z);
    return z;
  }

  // Plane of set s, primary channel c, image i (its first element, after the front slack).
  acc_t* plane(Buffers& b, int64_t s, const Z1Item& it, int64_t c, int64_t i) const {
    return b.planes[s].data() + slack_ + (c - it.c0) * group_stride_ + i * plane_stride_;
  }

  // Rows of a stencil's outputs that the column masks must cover (avx512_column_masks(K, W, mask_rows())).
  int64_t mask_rows() const { return ceil_div(group_stride_, d_.W) + 1; }

 private:
  GhostDims d_;
  int64_t p_, sets_;
  WorkPlan plan_;
  int64_t plane_stride_ = 0, group_stride_ = 0, slack_ = 0;
  std::unique_ptr<ColumnMasks<acc_t>> masks_;
};

}  // namespace cpu
}  // namespace ghostkernels
