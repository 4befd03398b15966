// The AVX-512 kernels' column masks by shape, computed once per process and shared by every launcher: building them
// is a loop over every lane of every vector of a band, which was a few percent of a batch-1 GhostNet block
// (bench/NOTES.md entries 52 and 60), while the shapes of a network are few. No AVX-512 code here (launchers include
// it); the masks themselves come from the kernel files' builders.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "kernel_depthwise_avx512.h"
#include "kernel_ghost_forward_avx512.h"

namespace ghostkernels {
namespace cpu {

// depthwise false: avx512_column_masks(K, a = W, b = B) (the Ghost-module kernel's); true:
// avx512_depthwise_column_masks(K, a = stride, b = Ho, c = Wo) (the depthwise and small-convolution kernels').
// Kept for the life of the process; map nodes never move, so the pointers stay valid.
inline const uint16_t* cached_masks(bool depthwise, int64_t K, int64_t a, int64_t b, int64_t c = 0) {
  static std::mutex mutex;
  static std::map<std::array<int64_t, 5>, std::vector<uint16_t>> masks;
  const std::array<int64_t, 5> key{depthwise, K, a, b, c};
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = masks.find(key);
  if (it == masks.end()) {
    it = masks.emplace(key, depthwise ? avx512_depthwise_column_masks(K, a, b, c) : avx512_column_masks(K, a, b)).first;
  }
  return it->second.data();
}

}  // namespace cpu
}  // namespace ghostkernels
