// The float32 AVX-512 Ghost-module forward's work items re-cut for the threads where the batch alone cannot feed
// them (batch 1: one image).
//
// Why: plan_work (util_work_plan.h) halves the channel block, then the row band, until there are two items per
// thread. On GhostNet's 28x28, 14x14 and 7x7 layers at batch 1 that gives blocks of 10-25 primary channels, which
// the microkernel's 6-channel tiles round up (a 14-channel block is tiles of 6 + 6 + 2), and for the 40- and
// 80-channel modules also row bands whose halo rows are computed by both neighbours. Each thread then runs two or
// three small items whose ragged tiles and halos it pays for. Here the blocks are whole tiles, and of the
// (blocks, bands) cuts the one is taken whose busiest thread has the least modelled work: at::parallel_for hands
// each thread one contiguous run of ceil(items / threads) items, so that is what the model adds up.
//
// The model counts cycles of the microkernel (per input channel, a tile of mr channels x v vectors issues v loads
// and mr broadcasts against mr * v fused multiply-adds, two of either per cycle), of the depthwise taps (one masked
// load and one multiply-add per tap and vector) and a fixed cost per item (its planes' zero rows, its set-up). Only
// the relative cost of cuts of the same call matters. Results do not depend on the cut: every output is the same
// sum in the same order whatever item computes it (a band's halo rows are recomputed, not exchanged).
#pragma once

#include <algorithm>
#include <cstdint>

#include "util_work_plan.h"

namespace ghostkernels {
namespace cpu {

struct TileShape {
  int64_t tile_channels;  // primary channels per microkernel tile
  int64_t tile_vectors;   // 16-float vectors of pixels per microkernel tile
};

struct ForwardShape {
  int64_t N, C, H, W, I, M, K;  // images, input channels, rows, columns, primary channels, cheap per primary, k
};

namespace tile_balance_detail {

constexpr double kItemCycles = 3000;  // set-up of an item: its planes' zero rows, masks, pointers
constexpr int64_t kLanes = 16;

// Modelled cycles of one item: cb primary channels over gemm_pixels (own rows plus halo), the cheap channels over
// own_pixels.
inline double item_cycles(const ForwardShape& s, const TileShape& t, int64_t cb, int64_t gemm_pixels,
                          int64_t own_pixels) {
  const auto tile = [](int64_t mr, int64_t v) { return 0.5 * static_cast<double>(std::max(mr * v, mr + v)); };
  const int64_t strip = t.tile_vectors * kLanes;
  const int64_t full_strips = gemm_pixels / strip, rest_vectors = ceil_div(gemm_pixels % strip, kLanes);
  const auto strips = [&](int64_t mr) {
    return static_cast<double>(full_strips) * tile(mr, t.tile_vectors) + (rest_vectors > 0 ? tile(mr, rest_vectors) : 0);
  };
  const int64_t full_tiles = cb / t.tile_channels, rest_channels = cb % t.tile_channels;
  const double gemm = static_cast<double>(s.C) *
                      (static_cast<double>(full_tiles) * strips(t.tile_channels) + (rest_channels > 0 ? strips(rest_channels) : 0));
  const double cheap = static_cast<double>(cb * s.M * ceil_div(own_pixels, kLanes) * s.K * s.K);
  return gemm + cheap + kItemCycles;
}

// The busiest thread's modelled cycles under plan w, items handed out as at::parallel_for does (contiguous runs of
// ceil(items / threads), band fastest, then block, then group).
inline double busiest_thread(const ForwardShape& s, const TileShape& t, const WorkPlan& w, int64_t threads) {
  const int64_t items = w.items(), used = std::min(threads, items), run = ceil_div(items, used), p = s.K / 2;
  double busiest = 0, current = 0;
  for (int64_t item = 0; item < items; ++item) {
    const int64_t g = std::min(w.G, s.N - w.group_of(item) * w.G);
    const int64_t cb = std::min(w.Ib, s.I - w.block_of(item) * w.Ib);
    const int64_t r0 = w.band_of(item) * w.B, r1 = std::min(s.H, r0 + w.B);
    const int64_t a0 = std::max<int64_t>(0, r0 - p), a1 = std::min(s.H, r1 + p);
    current += item_cycles(s, t, cb, g * (a1 - a0) * s.W, g * (r1 - r0) * s.W);
    if ((item + 1) % run == 0 || item + 1 == items) {
      busiest = std::max(busiest, current);
      current = 0;
    }
  }
  return busiest;
}

}  // namespace tile_balance_detail

// base: plan_work's plan for the call. fits(G, Ib, B): whether an item of that size fits plan_work's cache budget.
// Returns base where the images alone give every thread
// two items (batch 8 on GhostNet: balanced already), else the best whole-tile cut.
template <typename Fits>
WorkPlan balance_tiles(const WorkPlan& base, const ForwardShape& s, const TileShape& t, int64_t threads, Fits&& fits) {
  using tile_balance_detail::busiest_thread;
  if (threads < 2 || base.groups >= 2 * threads) return base;
  const int64_t tiles = ceil_div(s.I, t.tile_channels);
  const int64_t min_band = std::min<int64_t>(s.H, std::max<int64_t>(2, 2 * (s.K / 2)));
  WorkPlan best = base;
  double best_cost = busiest_thread(s, t, base, threads);
  // At most two items per thread in each direction: more only adds set-up and ragged edges.
  for (int64_t b = 1; b <= std::min(tiles, 2 * threads); ++b) {
    const int64_t Ib = t.tile_channels * ceil_div(tiles, b);
    if (b > 1 && Ib == t.tile_channels * ceil_div(tiles, b - 1)) continue;  // the same cut as b - 1
    for (int64_t k = 1; k <= std::min(s.H, 2 * threads); ++k) {
      const int64_t B = ceil_div(s.H, k);
      if (k > 1 && B < min_band) break;
      // Never taller bands than base's: plan_work's bands of the wide maps keep a tile's planes in L1 for the
      // depthwise taps, which the model does not see (whole 56x56 images per item measured 1.1-1.4x slower).
      if (B > base.B || !fits(base.G, Ib, B)) continue;
      WorkPlan w;
      w.G = base.G, w.groups = base.groups;
      w.Ib = Ib, w.blocks = ceil_div(s.I, Ib);
      w.B = B, w.bands = ceil_div(s.H, B);
      const double cost = busiest_thread(s, t, w, threads);
      // A cut must be clearly better (the model is rough); among equals, the one with fewer items.
      if (cost < 0.99 * best_cost || (cost <= best_cost && w.items() < best.items())) {
        best = w;
        best_cost = cost;
      }
    }
  }
  return best;
}

}  // namespace cpu
}  // namespace ghostkernels
