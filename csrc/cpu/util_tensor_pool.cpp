// The CPU block pool (see util_tensor_pool.h for why it exists).
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "util_tensor_pool.h"

#include <ATen/core/Tensor.h>
#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/native/TensorFactories.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace ghostkernels {
namespace cpu {
namespace {

constexpr int64_t kPageBytes = 4096;
constexpr int64_t kDefaultLimitMB = 512;

// Depth of TransientAllocationScopes alive on this thread.
thread_local int transient_depth = 0;

int64_t limit_bytes() {
  const char* env = std::getenv("GHOSTKERNELS_CPU_POOL_MB");
  if (env == nullptr || *env == '\0') return kDefaultLimitMB << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  TORCH_CHECK_VALUE(end != env && *end == '\0' && mb >= 0, "GHOSTKERNELS_CPU_POOL_MB must be a whole number of ",
                    "megabytes >= 0 (0 turns the CPU block pool off), got '", env, "'");
  return static_cast<int64_t>(mb) << 20;
}

class Pool {
 public:
  // A block of at least `bytes` (rounded up to whole pages), or nullptr when the pool is off.
  void* take(int64_t bytes, int64_t* block_bytes) {
    const int64_t limit = limit_bytes();
    if (limit == 0) return nullptr;
    const int64_t want = (bytes + kPageBytes - 1) / kPageBytes * kPageBytes;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // The smallest idle size that fits and is at most a quarter larger (kTransientFit times larger inside a
      // TransientAllocationScope): a network asks for the same sizes every pass, so fits are the rule once it has
      // run once. Of the blocks of that size, the one returned last: it is the likeliest to be still in cache.
      auto it = idle_.lower_bound(want);
      const int64_t largest = transient_depth > 0 ? want * kTransientFit : want + want / 4;
      if (it != idle_.end() && it->first <= largest) {
        void* ptr = it->second.back();
        *block_bytes = it->first;
        it->second.pop_back();
        if (it->second.empty()) idle_.erase(it);
        cached_ -= *block_bytes;
        in_use_ += *block_bytes;
        ++hits_;
        return ptr;
      }
      ++misses_;
      in_use_ += want;
    }
    *block_bytes = want;
    return c10::alloc_cpu(static_cast<size_t>(want));
  }

  void give_back(void* ptr, int64_t bytes) {
    const int64_t limit = limit_bytes();
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_use_ -= bytes;
      if (cached_ + bytes <= limit) {
        idle_[bytes].push_back(ptr);
        cached_ += bytes;
        return;
      }
    }
    c10::free_cpu(ptr);
  }

  void release() {
    std::map<int64_t, std::vector<void*>> idle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      idle.swap(idle_);
      cached_ = 0;
    }
    for (auto& kv : idle) {
      for (void* ptr : kv.second) c10::free_cpu(ptr);
    }
  }

  PoolStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return PoolStats{cached_, in_use_, hits_, misses_, limit_bytes()};
  }

 private:
  std::mutex mu_;
  std::map<int64_t, std::vector<void*>> idle_;  // block size -> idle blocks of that size, last returned at the back
  int64_t cached_ = 0, in_use_ = 0, hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors holding blocks may be freed during or after static destruction at exit.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

// The DataPtr context of a pooled tensor: which block to give back.
struct BlockContext {
  void* ptr;
  int64_t bytes;
};

void give_back_block(void* ctx) {
  auto* b = static_cast<BlockContext*>(ctx);
  pool().give_back(b->ptr, b->bytes);
  delete b;
}

// The strides at::empty gives a tensor of these sizes in this memory format.
std::vector<int64_t> strides_for(at::IntArrayRef sizes, at::MemoryFormat fmt) {
  if (fmt == at::MemoryFormat::ChannelsLast) return c10::get_channels_last_strides_2d(sizes);
  TORCH_CHECK(fmt == at::MemoryFormat::Contiguous, "pooled_empty: unsupported memory format ", fmt);
  std::vector<int64_t> strides(sizes.size());
  int64_t s = 1;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    strides[d] = s;
    s *= std::max<int64_t>(sizes[d], 1);
  }
  return strides;
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opts, at::MemoryFormat fmt) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(opts.dtype())));
  if (bytes < kMinPooledBytes) return at::empty(sizes, opts.memory_format(fmt));
  int64_t block_bytes = 0;
  void* ptr = pool().take(bytes, &block_bytes);
  if (ptr == nullptr) return at::empty(sizes, opts.memory_format(fmt));
  auto* ctx = new BlockContext{ptr, block_bytes};
  at::Tensor t = at::for_blob(ptr, sizes)
                     .strides(strides_for(sizes, fmt))
                     .context(ctx, &give_back_block)
                     .options(opts.memory_format(c10::nullopt))
                     .make_tensor();
  // What at::empty does under torch.utils.deterministic.fill_uninitialized_memory: a reused block holds the
  // previous tensor's values, which would hide elements a kernel never writes (the tests rely on the NaN fill).
  if (at::globalContext().deterministicAlgorithms() && at::globalContext().deterministicFillUninitializedMemory()) {
    at::native::fill_empty_deterministic_(t);
  }
  return t;
}

TransientAllocationScope::TransientAllocationScope() { ++transient_depth; }

TransientAllocationScope::~TransientAllocationScope() { --transient_depth; }

PoolStats pool_stats() { return pool().stats(); }

void pool_release_cached() { pool().release(); }

}  // namespace cpu
}  // namespace ghostkernels
