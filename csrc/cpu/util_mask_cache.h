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

namespace mask_cache_detail {
template <typename Build>
const uint16_t* lookup(const std::array<int64_t, 5>& key, Build&& build) {
  static std::mutex mutex;
  static std::map<std::array<int64_t, 5>, std::vector<uint16_t>> masks;  // nodes never move: pointers stay valid
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = masks.find(key);
  if (it == masks.end()) it = masks.emplace(key, build()).first;
  return it->second.data();
}
}  // namespace mask_cache_detail

// avx512_column_masks(K, W, B) (the Ghost-module kernel's), kept for the life of the process.
inline const uint16_t* cached_column_masks(int64_t K, int64_t W, int64_t B) {
  return mask_cache_detail::lookup({0, K, W, B, 0}, [&] { return avx512_column_masks(K, W, B); });
}

// avx512_depthwise_column_masks(K, stride, Ho, Wo) (the depthwise and small-convolution kernels'), likewise.
inline const uint16_t* cached_depthwise_column_masks(int64_t K, int64_t stride, int64_t Ho, int64_t Wo) {
  return mask_cache_detail::lookup({1, K, stride, Ho, Wo},
                                   [&] { return avx512_depthwise_column_masks(K, stride, Ho, Wo); });
}

}  // namespace cpu
}  // namespace ghostkernels
