// Tiling choice and device queries for the CUDA Ghost-module kernels (host code only).
#include "ghost_cuda_plan.h"

#include "../nearest_index.h"
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

// The forward's layout when nothing more fits: 32-row units, stages inside Z, as the backward (plus the second
// pixel table of the persistent loop). The tile search sizes forward tiles with it.
SmemLayout forward_fallback_layout(const GhostShape& s, int rect, int stages) {
  const int es = elem_size(s.dtype), M = int(s.M), KK = int(s.K * s.K);
  if (stages == 0) {
    const SmemLayout probe = make_forward_layout(es, s.channels_last, rect, int(s.C), M, KK, kChunk, false, false, 2);
    stages = preferred_stages(probe.a_step, z_buffer_bytes(s.channels_last, probe.cols, kChunk));
  }
  return make_forward_layout(es, s.channels_last, rect, int(s.C), M, KK, kChunk, false, false, stages);
}

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
  if (backward)
    pl.L = make_layout(elem_size(s.dtype), s.channels_last, pl.g.rh * pl.g.rw, true, th, tw, p, int(s.M),
                       int(s.K * s.K));
  else
    pl.L = forward_fallback_layout(s, pl.g.rh * pl.g.rw, 0);
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

// x1 channels with any output: the kept primary channels, and the sources of the kept cheap channels. A forward
// unit past them would store nothing, so the forward's chunks stop there.
int64_t kept_x1(const GhostShape& s) {
  const int64_t pk = s.OC < s.I ? s.OC : s.I, ck = s.OC > s.I ? s.OC - s.I : 0;
  const int64_t src = s.M > 0 ? (ck + s.M - 1) / s.M : 0;
  const int64_t kept = pk > src ? pk : src;
  return kept > 0 ? kept : 1;
}

// The forward's unit height and buffers for the searched tile (see plan_forward in ghost_cuda_plan.h).
Plan refine_forward(const GhostShape& s, const Plan& tile, const DeviceInfo& dev, const ForwardPlanRequest& req) {
  Plan pl = tile;
  const int es = elem_size(s.dtype), rect = tile.g.rh * tile.g.rw, M = int(s.M), KK = int(s.K * s.K);
  const bool tensor_cores = s.dtype != DType::Float32 || s.fp32_math == Fp32Math::TF32;
  const int64_t kept = kept_x1(s);
  const unsigned optin = unsigned(dev.smem_optin);
  // Two blocks per SM, as the launch bounds ask (the runtime reserves 1 KB of shared memory per block).
  const unsigned two_per_sm = unsigned(dev.smem_per_sm / 2 - 1024);
  const unsigned budget = two_per_sm < optin ? two_per_sm : optin;
  const long long slots = 2LL * dev.sm_count;
  const bool forced = req.rows != 0 || req.mode != 0 || req.stages != 0;

  int rows = kChunk;
  if (req.rows != 0) {
    rows = req.rows;
    if (!(rows == 32 || rows == 64 || rows == 128) || (rows != kChunk && !tensor_cores) ||
        !forward_gemm_fits(rect, rows)) {
      pl.why = "the requested forward unit height does not fit this shape";
      return pl;
    }
  } else if (tensor_cores) {
    for (int r = kMaxRows; r > kChunk; r /= 2) {
      const long long chunks = (kept + r - 1) / r;
      // Taller units mean fewer of them: keep them while they still occupy most resident blocks (a grid a
      // little short of one wave runs as long as a full one; twice as many half-height units take longer).
      if (forward_gemm_fits(rect, r) && kept > r / 2 && 4 * s.N * tile.g.ntiles() * chunks >= 3 * slots) {
        rows = r;
        break;
      }
    }
  }
  pl.g.chunks = int((kept + rows - 1) / rows);

  // Candidate (x resident, overlap) pairs in order of preference. The resident X needs the MMA's k-step skipping,
  // which the exact-float32 FMA path does not have.
  const bool xres_ok = tensor_cores && pl.g.chunks > 1;
  bool cand[4][2];
  int ncand = 0;
  if (req.mode != 0) {
    if (req.mode < 1 || req.mode > 4 || (req.mode >= 3 && !tensor_cores)) {
      pl.why = "the requested forward mode does not exist for this dtype";
      return pl;
    }
    cand[0][0] = req.mode >= 3;
    cand[0][1] = req.mode % 2 == 0;
    ncand = 1;
  } else {
    if (xres_ok) {
      cand[ncand][0] = true, cand[ncand++][1] = true;
      cand[ncand][0] = true, cand[ncand++][1] = false;
    }
    cand[ncand][0] = false, cand[ncand++][1] = true;
    cand[ncand][0] = false, cand[ncand++][1] = false;
  }
  for (int c = 0; c < ncand; ++c) {
    const bool xres = cand[c][0], overlap = cand[c][1];
    const SmemLayout probe = make_forward_layout(es, s.channels_last, rect, int(s.C), M, KK, rows, xres, overlap, 2);
    if (probe.total == 0) continue;
    const int deepest = req.stages != 0 ? req.stages
                                        : preferred_stages(probe.a_step, z_buffer_bytes(s.channels_last, probe.cols, rows));
    const int shallowest = req.stages != 0 ? req.stages : 2;
    for (int st = deepest; st >= shallowest; --st) {
      const SmemLayout L = make_forward_layout(es, s.channels_last, rect, int(s.C), M, KK, rows, xres, overlap, st);
      if (L.total != 0 && L.total <= (forced ? optin : budget)) {
        pl.L = L;
        return pl;
      }
    }
  }
  if (forced) {
    pl.why = "the requested forward plan does not fit in shared memory";
    return pl;
  }
  // Nothing fits two blocks per SM: the tile search's own layout, which fits the opt-in limit.
  pl.g.chunks = int((kept + kChunk - 1) / kChunk);
  pl.L = tile.L;
  return pl;
}

Plan plan_forward(const GhostShape& s, const ForwardPlanRequest& req) {
  const DeviceInfo dev = device_info(s.device);
  const Plan tile = choose(s, false, unsigned(dev.smem_optin));
  if (tile.why != nullptr) return tile;
  // Memoized like the tile search (a few dozen layout evaluations per call otherwise); the batch size is part of
  // the key because the unit height depends on whether the batch fills the device.
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, bool, int,
                         int, int, int>;
  static std::mutex mu;
  static std::map<Key, Plan> cache;
  const Key key{s.N, s.C, s.H, s.W, s.I, s.M, s.K, s.OC, int(s.dtype), int(s.fp32_math), s.channels_last, s.device,
                req.rows, req.mode, req.stages};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() > 4096) cache.clear();
  const Plan pl = refine_forward(s, tile, dev, req);
  cache.emplace(key, pl);
  return pl;
}

long long set_forward_grid(KernelParams& P, long long max_blocks) {
  P.units = P.items * P.g.chunks;
  if (P.units == 0) return 0;
  long long blocks = P.units;
  if (max_blocks > 0 && blocks > max_blocks) blocks = max_blocks;
  P.units_per_block = P.units / blocks;
  P.units_rem = P.units % blocks;
  return blocks;
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

void set_forward_gate(KernelParams& P, const void* gate, int64_t Hg, int64_t Wg) {
  P.gate = gate;
  if (gate == nullptr) return;
  P.Hg = int(Hg);
  P.Wg = int(Wg);
  P.gate_sy = nearest_scale(Hg, P.H);
  P.gate_sx = nearest_scale(Wg, P.W);
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
  // The forward kernel counts a block's units and its images in 32 bits; its grid has at least one block per SM.
  if (!backward && s.N * pl.g.ntiles() * pl.g.chunks / (dev.sm_count > 0 ? dev.sm_count : 1) >= INT_MAX)
    return "the input has too many tiles for the CUDA forward kernel (more than 2^31 - 1 per SM)";
  if (!backward && s.N >= INT_MAX) return "the batch is too large for the CUDA forward kernel (2^31 images or more)";
  return nullptr;
}

}  // namespace cuda
}  // namespace ghostkernels
