// How the CPU kernels cut a ghost_module call into independent work items for at::parallel_for.
//
// An item is (a group of G images) x (a block of Ib primary channels) x (a band of B rows). Three forces pick the
// sizes:
//  - GEMM efficiency: the 1x1 conv is a [Ib x C] . [C x pixels] GEMM per item. GhostNet's late layers are 7x7 or
//    14x14, and a 49-column GEMM runs far below peak, so small images are grouped until an item has ~512 pixels.
//  - Cache: an item's buffers (GEMM output, x1 planes, packed input) should stay in a core's L2.
//  - Parallelism: at least two items per thread. Channel blocks are the cheap way to get there in the forward pass
//    because the Ghost module is channel-separable after the 1x1 conv (cheap channel j reads only x1 channel
//    j / (ratio-1)), so a block needs no halo and no data from other blocks. Row bands cost a recomputed halo and
//    come last. The backward pass cannot split channels (grad x sums over all of them), so it only groups and bands.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace ghostkernels {
namespace cpu {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The working set plan_work allows one item (of a 1-2 MiB L2).
constexpr int64_t kWorkItemBudgetBytes = 768 * 1024;

struct WorkPlan {
  int64_t G = 1, Ib = 1, B = 1;               // images, channels, rows per item
  int64_t groups = 1, blocks = 1, bands = 1;  // how many of each
  int64_t items() const { return groups * blocks * bands; }
  // item -> (group, block, band), band fastest so that neighbouring items share input rows in cache.
  int64_t group_of(int64_t item) const { return item / (bands * blocks); }
  int64_t block_of(int64_t item) const { return (item / bands) % blocks; }
  int64_t band_of(int64_t item) const { return item % bands; }
};

// bytes(G, Ib, B): the working set of one item of that size.
// target_pixels: images with fewer pixels are grouped until an item has that many (the AVX-512 float32 forward, which
// reads a single image's x in place but copies a group's rows into a panel, asks for less: launch_ghost_forward.cpp).
template <typename Bytes>
WorkPlan plan_work(int64_t N, int64_t H, int64_t W, int64_t I, int64_t halo, bool split_channels, Bytes&& bytes,
                   int64_t target_pixels = 512) {
  constexpr int64_t kBudget = kWorkItemBudgetBytes;
  constexpr int64_t kMinBlock = 16;
  const int64_t threads = at::get_num_threads();
  const int64_t want = threads > 1 ? 2 * threads : 1;
  const int64_t min_band = std::min<int64_t>(H, std::max<int64_t>(2, 2 * halo));

  WorkPlan w;
  w.B = H;
  w.Ib = I;
  w.G = H * W < target_pixels ? std::min(N, ceil_div(target_pixels, H * W)) : 1;
  auto update = [&] {
    w.groups = ceil_div(N, w.G);
    w.blocks = ceil_div(I, w.Ib);
    w.bands = ceil_div(H, w.B);
  };

  // Fit the cache budget: fewer images first, then (forward) fewer channels, then fewer rows.
  while (w.G > 1 && bytes(w.G, w.Ib, w.B) > kBudget) w.G = ceil_div(w.G, 2);
  while (split_channels && w.Ib > kMinBlock && bytes(w.G, w.Ib, w.B) > kBudget) w.Ib = ceil_div(w.Ib, 2);
  while (w.B > min_band && bytes(w.G, w.Ib, w.B) > kBudget) w.B = std::max(min_band, ceil_div(w.B, 2));
  update();

  // Enough items for the threads, in the same order of preference.
  while (w.items() < want && w.G > 1) {
    w.G = ceil_div(w.G, 2);
    update();
  }
  while (split_channels && w.items() < want && w.Ib > kMinBlock) {
    w.Ib = std::max(kMinBlock, ceil_div(w.Ib, 2));
    update();
  }
  while (w.items() < want && w.B > min_band) {
    w.B = std::max(min_band, ceil_div(w.B, 2));
    update();
  }

  // Even out the pieces (e.g. 7 rows in bands of 4 + 3 rather than 6 + 1).
  w.G = ceil_div(N, w.groups);
  w.Ib = ceil_div(I, w.blocks);
  w.B = ceil_div(H, w.bands);
  update();
  return w;
}

}  // namespace cpu
}  // namespace ghostkernels
