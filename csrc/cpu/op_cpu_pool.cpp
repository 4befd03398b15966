// The ops that expose the CPU block pool (util_tensor_pool.h) to Python: its statistics and a way to empty it.
// They take no tensors, so they have no dispatch key: each is defined with its one (catch-all) kernel.
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "util_tensor_pool.h"

namespace ghostkernels {
namespace cpu {
namespace {

std::vector<int64_t> cpu_pool_stats_op() {
  const PoolStats s = pool_stats();
  return {s.cached_bytes, s.in_use_bytes, s.hits, s.misses, s.limit_bytes};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ghostkernels, m) {
  // [cached bytes, bytes in use, hits, misses, limit bytes] of the CPU block pool (ghostkernels.ops.cpu_pool_stats).
  m.def("_cpu_pool_stats() -> int[]", &cpu_pool_stats_op);
  // Returns the pool's idle blocks to the system (ghostkernels.ops.release_cpu_pool).
  m.def("_cpu_pool_release() -> ()", &pool_release_cached);
}

}  // namespace cpu
}  // namespace ghostkernels
