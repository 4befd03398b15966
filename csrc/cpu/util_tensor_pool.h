// A process-wide cache of large CPU blocks for the tensors the CPU kernels return or use as scratch.
//
// Why: a fresh multi-megabyte allocation from glibc is an mmap whose every page faults, and the kernel zeroes it,
// on first touch; freeing it unmaps it again. Inside a network that is the fate of most activations at batch 8
// (glibc's adaptive mmap threshold is reset by the next larger block), and on the 2-core VM of bench/NOTES.md
// (entry 11) those page faults cost more than the kernels that write the memory. Blocks returned to this pool keep
// their pages, so the next forward pass writes to memory that is already mapped (and often still in cache).
//
// Only blocks of at least kMinPooledBytes go through the pool; smaller ones come from torch's CPU allocator as
// usual (glibc serves them from its heap without page faults). At most GHOSTKERNELS_CPU_POOL_MB megabytes
// (default 512; 0 turns the pool off) of idle blocks are kept; a freed block beyond that goes back to the system.
// Blocks in use do not count: they belong to live tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ghostkernels {
namespace cpu {

constexpr int64_t kMinPooledBytes = 64 * 1024;

// at::empty(sizes, opts.memory_format(fmt)) on the CPU, with the memory from the pool where it is large enough.
// The tensor's storage cannot be resized (it wraps the pool's block); everything else about it is ordinary.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opts,
                        at::MemoryFormat fmt = at::MemoryFormat::Contiguous);

// While one of these lives on a thread, that thread's pooled_empty may hand out an idle block up to
// kTransientFit times the size asked for (outside one: a quarter more at most). For code whose allocations are
// intermediates that die before the scope ends (ghostkernels::chain between its first and last step,
// ghost_bottleneck after allocating its output): reusing blocks across sizes shrinks the set of distinct blocks
// one pass touches, memory that must otherwise be read from DRAM again on every pass (GhostNet 1.0x at batch 1:
// 18 blocks, 8.6 MB -> 8 blocks, 5.6 MB; bench/NOTES.md, entries 26 and 28). Outside such code the looser fit
// would let a small long-lived tensor pin a large block. Nestable.
class TransientAllocationScope {
 public:
  TransientAllocationScope();
  ~TransientAllocationScope();
  TransientAllocationScope(const TransientAllocationScope&) = delete;
  TransientAllocationScope& operator=(const TransientAllocationScope&) = delete;
};

constexpr int64_t kTransientFit = 4;

struct PoolStats {
  int64_t cached_bytes;   // idle blocks held by the pool
  int64_t in_use_bytes;   // blocks held by live tensors
  int64_t hits, misses;   // allocations served from the cache / from the system
  int64_t limit_bytes;    // the cap on cached_bytes (GHOSTKERNELS_CPU_POOL_MB)
};

PoolStats pool_stats();

// Returns every idle block to the system.
void pool_release_cached();

}  // namespace cpu
}  // namespace ghostkernels
