// When a CPU inference op cuts its batch into one slice per thread, each thread running the op's whole work on its
// slice (the kernels inside then run on that thread alone: at::parallel_for does not nest). Used by
// ghostkernels::chain (op_chain.cpp: the whole network per slice) and ghostkernels::ghost_bottleneck
// (launch_ghost_bottleneck.cpp: the whole block per slice, for networks fused but not frozen).
//
// Why: at batch 8 on two threads every kernel otherwise splits its images, channels or rows over both threads, with a
// fork and a join per parallel region and each kernel reading what the other core wrote; a slice per thread keeps an
// image's activations in its own core's caches. Below 2 images per thread the kernels' own splits win
// (bench/NOTES.md, entry 55).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>

namespace ghostkernels {
namespace cpu {

constexpr int64_t kDefaultImageSplit = 2;

// Images per thread from which the batch is cut: GHOSTKERNELS_CHAIN_IMAGE_SPLIT, read per call (0: never).
inline int64_t image_split_threshold(const char* op) {
  const char* env = std::getenv("GHOSTKERNELS_CHAIN_IMAGE_SPLIT");
  if (env == nullptr || *env == '\0') return kDefaultImageSplit;
  char* end = nullptr;
  const long v = std::strtol(env, &end, 10);
  TORCH_CHECK_VALUE(end != env && *end == '\0' && v >= 0, op, ": GHOSTKERNELS_CHAIN_IMAGE_SPLIT must be a ",
                    "non-negative integer (images per thread from which the batch is split; 0: never), got '", env,
                    "'");
  return v;
}

// The number of slices to cut a batch of N images into: the thread count, where the threshold allows it and the cut
// is even (a thread with one image more would leave the other idle for a whole image), else 1.
inline int64_t image_slices(int64_t N, const char* op) {
  const int64_t threads = at::get_num_threads();
  if (threads < 2 || at::in_parallel_region()) return 1;
  const int64_t split = image_split_threshold(op);
  return split > 0 && N >= split * threads && N % threads == 0 ? threads : 1;
}

// fn(t, n0, n) for slice t of `slices` (images [n0, n0 + n)), one slice per thread. The caller's thread-local state
// goes with each slice (at::parallel_for does not carry it), so that torch.profiler records the user scopes on the
// other threads too and inference mode holds there as well. An error in a slice is rethrown by at::parallel_for.
template <typename Fn>
void for_each_image_slice(int64_t N, int64_t slices, Fn&& fn) {
  const int64_t per = N / slices;
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard state_guard(caller_state);
    for (int64_t t = begin; t < end; ++t) fn(t, t * per, per);
  });
}

}  // namespace cpu
}  // namespace ghostkernels
