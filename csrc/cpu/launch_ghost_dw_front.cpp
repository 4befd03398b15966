// The fused front of a stride-2 bottleneck (ghost_dw_front in entry_points.h): conv_dw(ghost1(x)) in one pass,
// ghost1's output never in memory.
//
// Why: unfused, ghost1 writes its whole output (GhostNet's blocks.1.0: 48 channels x 112 x 112 float32, 2.4 MB per
// image, more than a core's L2) and conv_dw reads it straight back: in blocks.1.0 alone the two passes were about an
// eighth of a batch-8 forward (bench/NOTES.md, entry 52). conv_dw is depthwise, so its output channel c needs only
// ghost1's channel c, and a ghost1 channel needs only its primary (cheap channel j reads primary j / M). So a unit of work is (image, one 6-channel tile of ghost1's primaries, a band of conv_dw's output rows):
// the Ghost-module kernel (kernel_ghost_forward_avx512.h, avx512_forward_region) computes the tile's primary and
// cheap planes on the ghost1 rows that the band reads (its halo rows recomputed by the neighbouring band) into a
// per-thread scratch, and the depthwise kernel (kernel_depthwise_avx512.h, avx512_depthwise_band) runs the band
// from those planes into conv_dw's output. Every unit reuses the same scratch addresses, which stay in L2: no dirty
// line of ghost1's output is ever written back.
//
// The bands depend on the shape only (a per-plane byte target and a cache budget), never on the thread count, and
// the squeeze-excite's plane sums are the bands' partial sums added in band order after the parallel region: the
// results are the same for every thread count. With one band per plane the sums are the unfused path's to the bit;
// with more they differ from it by float32 rounding (the order of the additions). The outputs of ghost1 and
// conv_dw are the same sums in the same order as unfused (the cut does not enter them): bitwise equal.
//
// Where it applies: float32, or bfloat16 on CPUs with AVX-512 BF16 (ghost1's GEMM on the bf16 dot product or AMX
// tiles, its planes kept in float: ForwardAvx512Params::out_float, so conv_dw reads ghost1 unrounded and only its
// own output is rounded to bfloat16), contiguous NCHW, the AVX-512 kernels available for ghost1's and conv_dw's
// kernel sizes, and GHOSTKERNELS_CPU_FUSED_FRONT not "0"; bfloat16 only on ghost1 planes of 56x56 and more
// (kBf16FrontMinPixels).
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "entry_points.h"
#include "kernel_depthwise_avx512.h"
#include "kernel_ghost_forward_avx512.h"
#include "util_float_weights.h"
#include "util_forward_avx512_call.h"
#include "util_ghost_launch.h"
#include "util_kernel_choice.h"
#include "util_mask_cache.h"
#include "util_tensor_pool.h"
#include "util_work_plan.h"

namespace ghostkernels {
namespace cpu {
namespace {

// GHOSTKERNELS_CPU_FUSED_FRONT (read at every call): "0" runs ghost1 and conv_dw as two passes, as before this path
// existed (the tests compare the two; a benchmark can alternate them in one process); anything else, or unset, fuses.
bool fused_front_enabled() {
  const char* v = std::getenv("GHOSTKERNELS_CPU_FUSED_FRONT");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// A band's scratch plane stays within kPlaneBytes, and a unit's working set within kUnitBytes, so that a tile's planes,
// its x rows and the Ghost-module kernel's own planes stay in a 1.25 MiB L2 together. Measured on GhostNet's
// blocks.1.0 and 3.0 against 16 KB / 512 KB (bench/NOTES.md, entry 52): 112x112 in 2 bands instead of 4 and 56x56 in
// one instead of 2 (fewer halo rows recomputed) were 3-8% faster blocks.
constexpr int64_t kPlaneBytes = 32 * 1024;
constexpr int64_t kUnitBytes = 1024 * 1024;
constexpr int64_t kFloatBytes = sizeof(float);

// Ghost1 rows [R0, R1) that conv_dw's output rows [o0, o1) read (stride S, kernel K, padding K/2), within the image.
struct RowRange {
  int64_t r0, r1;
};
RowRange input_rows(int64_t o0, int64_t o1, int64_t S, int64_t K, int64_t H) {
  return {std::max<int64_t>(0, S * o0 - K / 2), std::min<int64_t>(H, S * (o1 - 1) - K / 2 + K)};
}

struct FrontPlan {
  int64_t Bo = 1, bands = 1;  // conv_dw output rows per band, bands per plane
  int64_t tiles = 1;          // 6-channel tiles of ghost1's primaries: one per unit
  int64_t max_rows = 1;       // the most ghost1 rows a band needs
  int64_t units(int64_t N) const { return N * bands * tiles; }
};

// The bands: the fewest whose ghost1 rows keep a plane within kPlaneBytes and a unit's working set (the tile's
// primary and cheap planes, x's rows with the cheap half's halo, the Ghost-module kernel's planes of one tile)
// within kUnitBytes; at least one output row per band. The shape alone decides (see the top of the file).
FrontPlan plan_front(const GhostDims& d1, int64_t K, int64_t S, int64_t Ho) {
  FrontPlan f;
  f.tiles = ceil_div(d1.I, kForwardTileChannels);
  const int64_t planes = kForwardTileChannels * (1 + d1.M), halo = 2 * (d1.K / 2);
  for (int64_t k = 1; k <= Ho; ++k) {
    const int64_t Bo = ceil_div(Ho, k);
    const int64_t rows = std::min(d1.H, S * Bo + K - S);
    const int64_t plane = rows * d1.W * kFloatBytes;
    const int64_t unit = planes * plane + (d1.C + kForwardTileChannels) * std::min(d1.H, rows + halo) * d1.W * kFloatBytes;
    f.bands = k;
    if (plane <= kPlaneBytes && unit <= kUnitBytes) break;
  }
  f.Bo = ceil_div(Ho, f.bands);
  f.bands = ceil_div(Ho, f.Bo);
  for (int64_t b = 0; b < f.bands; ++b) {
    const RowRange r = input_rows(b * f.Bo, std::min(Ho, (b + 1) * f.Bo), S, K, d1.H);
    f.max_rows = std::max(f.max_rows, r.r1 - r.r0);
  }
  return f;
}

// bfloat16 fuses only where ghost1's planes are at least this many pixels (GhostNet's 112x112 and 56x56 fronts):
// on the 28x28 and 14x14 ones ghost1's output stays in L2 between the two passes anyway, and the fused units, 6 of
// its primaries each, cost the AMX GEMM more than its whole-tile blocks (bench/NOTES.md entry 60).
constexpr int64_t kBf16FrontMinPixels = 56 * 56;

}  // namespace

bool ghost_dw_front_applies(const at::Tensor& x, const GhostDims& d1, int64_t K, int64_t stride) {
  const int64_t Ho = depthwise_output_size(d1.H, K, stride), Wo = depthwise_output_size(d1.W, K, stride);
  // GHOSTKERNELS_CPU_KERNEL=avx512 with a kernel unavailable: the two-pass path raises, saying why.
  // bfloat16 needs the bf16 dot product: the kernel's float planes (out_float) exist only on its bf16_dot path.
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const bool bf16_ok = bf16 && avx512_forward_bf16_dot() && d1.H * d1.W >= kBf16FrontMinPixels;
  return (x.scalar_type() == at::kFloat || bf16_ok) && x.is_contiguous() &&
         fused_front_enabled() && cpu_kernel_knob() != CpuKernel::Generic && avx512_forward_available(bf16, d1.K) &&
         avx512_depthwise_available(bf16, K, stride) && d1.N * d1.oc * Ho * Wo > 0;
}

at::Tensor ghost_dw_front(const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
                          const at::Tensor& w_cheap, const at::Tensor& b_cheap, const GhostDims& d1,
                          const at::Tensor& gate, const at::Tensor& dw_w, const at::Tensor& dw_b, int64_t stride,
                          at::Tensor* plane_sums) {
  const int64_t K = dw_w.size(2);
  TORCH_CHECK(ghost_dw_front_applies(x, d1, K, stride), "ghost_dw_front: called where it does not apply");
  const int64_t N = d1.N, H = d1.H, W = d1.W, I = d1.I, M = d1.M, OC = d1.oc;
  const int64_t Ho = depthwise_output_size(H, K, stride), Wo = depthwise_output_size(W, K, stride);
  at::Tensor out = pooled_empty({N, OC, Ho, Wo}, x.options());

  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const at::Tensor w1 = w_primary.contiguous(), b1 = b_primary.contiguous();
  const at::Tensor w2 = w_cheap.contiguous(), b2 = b_cheap.contiguous();
  ForwardAvx512Call call(x, w1, b1, w2, b2, d1, gate);
  ForwardAvx512Params& g = call.prm;
  const FrontPlan f = plan_front(d1, K, stride, Ho);
  g.out_float = bf16;  // ghost1's planes in the float scratch below, whatever x's dtype
  g.G = 1, g.Ib = kForwardTileChannels, g.B = f.max_rows;
  g.groups = N, g.blocks = f.tiles, g.bands = 1;  // not read by avx512_forward_region
  g.colmask = cached_masks(false, d1.K, W, f.max_rows);
  // The tile's planes in scratch: kForwardTileChannels primaries, then their cheap channels, each `pitch` floats,
  // ghost1 row R0 of the unit at a plane's start (the addressing is set per unit below).
  const int64_t pitch = ceil_div(f.max_rows * W, 16) * 16;
  g.out_image = 0;
  g.out_plane = pitch;

  const FloatWeights dwf(dw_w), dbf(dw_b);
  DepthwiseAvx512Params dp{};
  dp.bf16 = bf16;  // conv_dw's output in x's dtype; its input is always the float planes
  dp.w = dwf.data();
  dp.b = dbf.data();
  dp.C = OC, dp.H = H, dp.W = W, dp.K = K, dp.stride = stride, dp.Ho = Ho, dp.Wo = Wo;
  dp.act = static_cast<int>(Act::Identity);
  dp.colmask = cached_masks(true, K, stride, Ho, Wo);

  // Per-thread scratch: the Ghost-module kernel's, then the tile's planes between slack (the kernel's masked
  // primary stores may address up to K/2 rows before a plane and past the last one, with no lane stored there),
  // then conv_dw's phase planes.
  const int64_t ghost_words = avx512_forward_scratch_words(g);
  const int64_t slack = (d1.K / 2 + 1) * W + 32;
  const int64_t tile_planes = kForwardTileChannels * (1 + M);
  const int64_t planes_at = ghost_words + slack, dw_at = planes_at + tile_planes * pitch + slack;
  const int64_t scratch_floats = dw_at + avx512_depthwise_scratch_floats(dp);
  const bool sums = plane_sums != nullptr;
  std::vector<float> partial(sums ? N * OC * f.bands : 0);
  char* out_p = static_cast<char*>(out.mutable_data_ptr());
  const int64_t out_es = out.element_size();
  const int64_t n_primary = d1.primary_kept(), n_cheap = d1.cheap_kept();

  at::parallel_for(0, f.units(N), 1, [&](int64_t begin, int64_t end) {
    // Kept per thread across calls, zero-filled when it grows (the kernels' junk lanes are then never denormals).
    thread_local std::vector<float> scratch;
    if (static_cast<int64_t>(scratch.size()) < scratch_floats) scratch.assign(scratch_floats, 0.f);
    float* planes = scratch.data() + planes_at;
    float* dw_scratch = scratch.data() + dw_at;
    ForwardAvx512Params u = g;
    u.out = planes;
    // The (image, band) whose x panel this thread's scratch holds: consecutive units of a band (tile fastest) pack
    // bfloat16 x into channel pairs once, not once per 6-channel tile.
    int64_t packed_n = -1, packed_band = -1;
    for (int64_t unit = begin; unit < end; ++unit) {
      // unit -> (image, band, tile), tile fastest: a thread's consecutive units read the same rows of x from L2.
      const int64_t n = unit / (f.bands * f.tiles), band = (unit / f.tiles) % f.bands, tile = unit % f.tiles;
      const int64_t o0 = band * f.Bo, o1 = std::min(Ho, o0 + f.Bo);
      const RowRange rows = input_rows(o0, o1, stride, K, H);
      const int64_t c0 = tile * kForwardTileChannels, c1 = std::min(I, c0 + kForwardTileChannels), cb = c1 - c0;
      if (c0 >= n_primary && c0 * M >= n_cheap) continue;  // every channel of this tile is sliced away
      // Primary c at plane c - c0, cheap j at plane cb + j - c0 * M; ghost1 row R0 at each plane's start.
      u.out_primary_shift = -c0;
      u.out_cheap_shift = cb - c0 * M;
      u.out_pixel_shift = -rows.r0 * W;
      avx512_forward_region(u, n, c0, c1, rows.r0, rows.r1, scratch.data(), n == packed_n && band == packed_band);
      packed_n = n, packed_band = band;
      const auto run_band = [&](int64_t channel, const float* plane) {
        DepthwiseBand b{};
        b.c = channel;
        b.in = plane;
        b.in_row0 = rows.r0;
        b.in_rows = rows.r1 - rows.r0;
        b.out = out_p + ((n * OC + channel) * Ho * Wo + o0 * Wo) * out_es;
        b.o0 = o0, b.o1 = o1;
        b.want_sum = sums;
        const float s = avx512_depthwise_band(dp, b, dw_scratch);
        if (sums) partial[(n * OC + channel) * f.bands + band] = s;
      };
      for (int64_t c = c0; c < std::min(c1, n_primary); ++c) run_band(c, planes + (c - c0) * pitch);
      for (int64_t j = c0 * M; j < std::min(c1 * M, n_cheap); ++j) run_band(I + j, planes + (cb + j - c0 * M) * pitch);
    }
  });
  if (sums) {
    at::Tensor s = at::empty({N, OC}, x.options().dtype(at::kFloat));  // float32 sums for every x dtype, as depthwise_conv's
    float* sp = s.mutable_data_ptr<float>();
    for (int64_t pl = 0; pl < N * OC; ++pl) {
      float total = partial[pl * f.bands];
      for (int64_t b = 1; b < f.bands; ++b) total += partial[pl * f.bands + b];
      sp[pl] = total;
    }
    *plane_sums = s;
  }
  return out;
}

}  // namespace cpu
}  // namespace ghostkernels
