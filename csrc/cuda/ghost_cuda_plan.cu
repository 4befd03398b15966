// Tiling choice and device queries for the CUDA Ghost-module kernels (host code only).
#include "ghost_cuda_plan.h"

#include "ghost_cuda_params.cuh"

#include <climits>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

namespace ghostkernels {
namespace cuda {

namespace {

constexpr int kMaxDevices = 64;
constexpr int kMaxTileSide = 32;

int elem_size(DType t) { return t == DType::Float32 ? 4 : 2; }

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// One candidate tiling and its shared memory, or total = 0 when the GEMM rect is too wide.
Plan make_plan(const GhostShape& s, bool backward, int th, int tw) {
  Plan pl;
  const int p = int(s.K / 2);
  const int halo = backward ? 2 * p : p;
  pl.g.th = th;
  pl.g.tw = tw;
  pl.g.tiles_y = int((s.H + th - 1) / th);
  pl.g.tiles_x = int((s.W + tw - 1) / tw);
  pl.g.halo = halo;
  pl.g.rh = th + 2 * halo;
  pl.g.rw = tw + 2 * halo;
  pl.g.chunks = int((s.I + kChunk - 1) / kChunk);
  if (gemm_cols(pl.g.rh * pl.g.rw) > kMaxGemmCols) return pl;
  pl.L = make_layout(elem_size(s.dtype), s.channels_last, pl.g.rh * pl.g.rw, backward, th, tw, p, int(s.M),
                     int(s.K * s.K));
  return pl;
}

// The cheapest tiling within `smem_limit` bytes (plan.why set when none fits).
Plan search(const GhostShape& s, bool backward, unsigned smem_limit) {
  Plan best;
  best.why = "no tile fits in shared memory (the ratio, i.e. the number of cheap channels per primary channel, "
             "is too large for the CUDA kernels)";
  long long best_cost = LLONG_MAX;
  const int max_th = int(s.H < kMaxTileSide ? s.H : kMaxTileSide);
  const int max_tw = int(s.W < kMaxTileSide ? s.W : kMaxTileSide);
  for (int th = 1; th <= max_th; ++th) {
    for (int tw = 1; tw <= max_tw; ++tw) {
      const Plan pl = make_plan(s, backward, th, tw);
      if (pl.L.total == 0 || pl.L.total > smem_limit) continue;
      long long per_tile = pl.L.cols + 48;
      if (backward) per_tile += (th + pl.g.halo) * (tw + pl.g.halo) + 16;  // the ring-1 depthwise recompute
      const long long cost = pl.g.ntiles() * per_tile;
      // Ties go to the wider tile: longer rows make NCHW loads and stores better coalesced.
      if (cost < best_cost || (cost == best_cost && tw > best.g.tw)) {
        best = pl;
        best_cost = cost;
      }
    }
  }
  return best;
}

// search() scans up to 1024 candidates (tens of microseconds): memoized, since a network calls the op with the same
// few shapes over and over and the small shapes run in a few microseconds on the GPU.
Plan choose(const GhostShape& s, bool backward, unsigned smem_limit) {
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int, bool, bool, unsigned>;
  static std::mutex mu;
  static std::map<Key, Plan> cache;
  const Key key{s.H, s.W, s.K, s.M, s.I, elem_size(s.dtype), s.channels_last, backward, smem_limit};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() > 4096) cache.clear();  // bounded: a program that sweeps shapes does not grow it forever
  const Plan pl = search(s, backward, smem_limit);
  cache.emplace(key, pl);
  return pl;
}

}  // namespace

DeviceInfo device_info(int device) {
  static std::mutex mu;
  static DeviceInfo cache[kMaxDevices];
  static bool ready[kMaxDevices] = {};
  DeviceInfo info;
  if (device < 0 || device >= kMaxDevices) {
    info.err = cudaErrorInvalidDevice;
    return info;
  }
  std::lock_guard<std::mutex> lock(mu);
  if (ready[device]) return cache[device];
  cudaError_t e = cudaDeviceGetAttribute(&info.cc_major, cudaDevAttrComputeCapabilityMajor, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&info.cc_minor, cudaDevAttrComputeCapabilityMinor, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&info.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&info.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  info.err = e;
  if (e == cudaSuccess) {
    cache[device] = info;
    ready[device] = true;
  }
  return info;
}

Plan plan_forward(const GhostShape& s) {
  const DeviceInfo dev = device_info(s.device);
  return choose(s, false, unsigned(dev.smem_optin));
}

Plan plan_backward(const GhostShape& s) {
  const DeviceInfo dev = device_info(s.device);
  // First try to leave room for two blocks per SM (the runtime reserves 1 KB of shared memory per block).
  const unsigned two_per_sm = unsigned(dev.smem_per_sm / 2 - 1024);
  const unsigned optin = unsigned(dev.smem_optin);
  Plan pl = choose(s, true, two_per_sm < optin ? two_per_sm : optin);
  if (pl.why != nullptr) pl = choose(s, true, optin);
  return pl;
}

KernelParams make_kernel_params(const GhostShape& s, const TileGeom& g, const SmemLayout& L, const void* x,
                                const void* w1, const void* b1, const void* w2, const void* b2) {
  KernelParams P;
  P.C = int(s.C);
  P.H = int(s.H);
  P.W = int(s.W);
  P.I = int(s.I);
  P.M = int(s.M);
  P.K = int(s.K);
  P.OC = int(s.OC);
  P.PK = int(s.OC < s.I ? s.OC : s.I);
  P.CK = int(s.OC > s.I ? s.OC - s.I : 0);
  P.N = s.N;
  P.HW = s.H * s.W;
  P.items = s.N * g.ntiles();
  P.act = s.act;
  const int vec = s.dtype == DType::Float32 ? 4 : 8;
  P.vec_x = s.channels_last && s.C % vec == 0 && aligned16(x);
  P.vec_w1 = s.C % vec == 0 && aligned16(w1);
  P.g = g;
  P.L = L;
  P.x = x;
  P.w1 = w1;
  P.b1 = b1;
  P.w2 = w2;
  P.b2 = b2;
  return P;
}

Layout choose_layout(const GhostShape& s, const void* per_pixel_a, const void* per_pixel_b) {
  if (!s.channels_last) return Layout::NCHW;
  const int vec = kVecBytes / elem_size(s.dtype);
  // M == 1: a cheap channel's source is the x1 channel of the same index, so a vector of cheap channels reads a
  // vector of x1 channels; OC % vec: every pixel of out / grad_out starts vector-aligned; I % 4: every channel
  // group of a block begins and ends on a 4-channel (8-byte) boundary (ghost_forward_kernel.cuh).
  const bool ok = s.M == 1 && s.OC % vec == 0 && s.I % 4 == 0 && aligned16(per_pixel_a) &&
                  (per_pixel_b == nullptr || aligned16(per_pixel_b));
  return ok ? Layout::NHWCVec : Layout::NHWC;
}

cudaError_t allow_dynamic_smem(const void* kernel, int device, unsigned bytes) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, unsigned> granted;
  std::lock_guard<std::mutex> lock(mu);
  unsigned& have = granted[{kernel, device}];
  if (bytes <= have) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (e == cudaSuccess) have = bytes;
  return e;
}

int resident_blocks_per_sm(const void* kernel, int device, unsigned smem_bytes) {
  static std::mutex mu;
  static std::map<std::tuple<const void*, int, unsigned>, int> known;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = known.find({kernel, device, smem_bytes});
    if (it != known.end()) return it->second;
  }
  int per_sm = 0;
  if (allow_dynamic_smem(kernel, device, smem_bytes) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem_bytes) != cudaSuccess)
    return 1;  // not cached: the launch itself will report the problem
  if (per_sm < 1) per_sm = 1;
  std::lock_guard<std::mutex> lock(mu);
  known[{kernel, device, smem_bytes}] = per_sm;
  return per_sm;
}

const char* unsupported_reason(const GhostShape& s, bool backward) {
  const DeviceInfo dev = device_info(s.device);
  if (dev.err != cudaSuccess) return "could not query the CUDA device's attributes";
  if (dev.cc_major < 8)
    return "the CUDA kernels need compute capability 8.0 or newer (Ampere, Hopper, ...): they use cp.async and "
           "bfloat16/tf32 tensor cores";
  if (!(s.K == 1 || s.K == 3 || s.K == 5 || s.K == 7))
    return "the CUDA kernels support depthwise kernel sizes 1, 3, 5 and 7 only";
  const Plan pl = backward ? plan_backward(s) : plan_forward(s);
  if (pl.why != nullptr) return pl.why;
  if (!backward && (long long)pl.g.chunks * s.N * pl.g.ntiles() > INT_MAX)
    return "the input has more tiles than one CUDA grid can hold (more than 2^31 - 1 blocks)";
  return nullptr;
}

}  // namespace cuda
}  // namespace ghostkernels
