// The AVX-512 NCHW forward kernel, float32 and bfloat16 (see kernel_ghost_forward_avx512.h for what it computes and
// why).
//
// No torch header here, and the only code compiled for AVX-512 sits in this file between GK_AVX512_REGION_BEGIN
// and GK_AVX512_REGION_END (util_avx512_target.h), in an anonymous namespace (plus the one exported entry point), so no inline function shared with
// other files is ever emitted with AVX-512 instructions: the library still loads and runs its generic kernels on
// CPUs without AVX-512, which avx512_forward_available() keeps away from this code.
//
// Numerics: float32 accumulation throughout; each z1 is a sum over input channels in channel order with fused
// multiply-adds (bfloat16: two products per step, exact in float, then one rounding), like a blocked GEMM, except
// on the dot tiles (an image's last HW % 16 pixels where that is 1-4, float32 and the bf16 dot product): 16
// lane-wise partial sums in channel order, then a fixed tree. Which pixels those are depends only on the image
// size, never on the work items, so results do not depend on the cut or the thread count. The depthwise sum adds
// the k*k taps row by row to b2. Results differ from eager's oneDNN convolutions only by rounding (the tests hold
// them to the dtype's tolerances against a float64 reference).
#include "kernel_ghost_forward_avx512.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../activations.h"
#include "util_cpu_features.h"

#include "util_avx512_target.h"

#if GK_AVX512_KERNELS && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace ghostkernels {
namespace cpu {

namespace {
constexpr int64_t kLanes = 16;  // floats per 512-bit vector
constexpr int64_t kMR = kForwardTileChannels;
constexpr int64_t kWideTileChannels = 8;  // float32 tiles of at most 3 vectors: 8 x 3 accumulators
constexpr int64_t kDotWideMaxPixels = 2;  // dot tiles of up to this many pixels take 8 channels
constexpr int64_t kNV = kForwardTileVectors;   // 16-float vectors of pixels per tile: 6 x 4 = 24 accumulator registers of 32
// Elements kept before the first plane and after the last one, so every unmasked load of the stencil, including
// the junk lanes past a band's last output, stays inside the buffer.
int64_t plane_slack(int64_t W, int64_t K) { return (K / 2 + 1) * W + 2 * kLanes; }
int64_t plane_stride(const ForwardAvx512Params& p) { return (p.B + 2 * (p.K / 2)) * p.W; }
int64_t band_pixels_max(const ForwardAvx512Params& p) {
  const int64_t rows = p.B + 2 * (p.K / 2);
  return (rows < p.H ? rows : p.H) * p.W;
}
}  // namespace

bool avx512_forward_available(bool bf16, int64_t K) {
  (void)bf16;  // bfloat16 runs without AVX-512 BF16 too (widened to the float32 GEMM)
#if GK_AVX512_KERNELS
  return cpu_has_avx512(false) && (K == 1 || K == 3 || K == 5 || K == 7);
#else
  (void)K;
  return false;
#endif
}

bool avx512_forward_bf16_dot() {
#if GK_AVX512_KERNELS
  return cpu_has_avx512(true);
#else
  return false;
#endif
}

namespace {
// AMX's tile data is off for a Linux process until it asks for it (arch_prctl ARCH_REQ_XCOMP_PERM with the
// XTILEDATA feature, Linux 5.16 and later); a tile instruction before that is an illegal instruction. The grant
// covers every thread of the process.
bool amx_granted() {
#if GK_AVX512_KERNELS && defined(__linux__) && defined(SYS_arch_prctl)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!cpu_has_avx512(true) || !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amx_bf16 = (edx >> 22) & 1u, amx_tile = (edx >> 24) & 1u;  // CPUID.(7,0):EDX
  if (!(amx_bf16 && amx_tile)) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
}  // namespace

bool avx512_forward_amx() {
  static const bool granted = amx_granted();
  if (!granted) return false;
  const char* env = std::getenv("GHOSTKERNELS_CPU_AMX");
  return env == nullptr || std::strcmp(env, "0") != 0;
}

std::vector<uint16_t> avx512_column_masks(int64_t K, int64_t W, int64_t B) {
  const int64_t p = K / 2, vecs = (B * W + kLanes - 1) / kLanes;
  std::vector<uint16_t> m(vecs * K);
  for (int64_t v = 0; v < vecs; ++v) {
    for (int64_t dx = 0; dx < K; ++dx) {
      uint16_t bits = 0;
      for (int64_t l = 0; l < kLanes; ++l) {
        const int64_t col = (v * kLanes + l) % W + dx - p;
        if (col >= 0 && col < W) bits = static_cast<uint16_t>(bits | (1u << l));
      }
      m[v * K + dx] = bits;
    }
  }
  return m;
}

// The packed x of an item, in 4-byte words: float32 packs only groups of images; bfloat16 always packs (pairs of
// channels per word for the dot product, else one widened channel per word).
int64_t panel_words(const ForwardAvx512Params& p) {
  // AMX: the channel-pair rows padded with zero rows to whole tiles of 16, and 32 words of slack, read (into junk
  // columns that are never stored) by the last row's tiles of a ragged last strip.
  if (p.bf16 && p.bf16_dot && p.amx) return avx512_amx_words(p.C) * p.G * band_pixels_max(p) + 32;
  if (p.bf16 && p.bf16_dot) return (p.C + 1) / 2 * p.G * band_pixels_max(p);
  if (p.bf16) return p.C * p.G * band_pixels_max(p);
  return p.G > 1 ? p.C * p.G * band_pixels_max(p) : 0;
}

// How an item's GEMM is ordered (bench/NOTES.md entries 54 and 63). Float32 items of one image, and bfloat16 ones on
// the bf16 dot product:
//  - the last HW % 16 pixels of each image, where that is 1-4 (GhostNet's 7x7 maps: 1, 14x14: 4), go to dot_tile
//    rather than to a vector of 16 pixels with 12-15 idle lanes;
//  - items of at most 256 pixels (GhostNet's 14x14 and 7x7 layers, whole images or bands) take tiles of 8 channels
//    x 3 vectors (more reuse of each x vector than 6 x 4, x strips of 48 pixels), and where there is more than one
//    strip, groups of 4 such tiles per strip, so that the strip's x is read from L2 once per 32 channels instead of
//    once per tile (the group's planes, 32 x (B + 2p) x W floats, stay in L1/L2 for the cheap half).
// Measured alone (float32), one thread, batch 1: 14x14 modules 0.79-0.91x the time of 6 x 4 tiles, 7x7 0.82-0.91x.
// Groups of images, bfloat16 widened to float, AMX and larger maps keep their tiles, one at a time.
struct GemmBlocking {
  int64_t tiles;  // tiles whose strips are computed together (one x strip, from L1, for all of them)
  int64_t dot;    // the last `dot` pixels of each image go to dot_tile (0: none)
  int64_t tm;     // channels per GEMM tile: kMR, or kWideTileChannels
  int64_t sv;     // vectors per strip of pixels: kNV, or 3 with kWideTileChannels (8 x 3 accumulators)
};

constexpr int64_t kSmallItemPixels = 256;  // items of at most this many pixels take the 8 x 3 tiles
constexpr int64_t kTileGroup = 4;
// AMX: blocks of 32 channels x 32 pixels (2 x 2 tiles of 16 x 16 floats: each A and B tile load feeds two tile
// products), all of an item's pixels for one block, then that block's cheap half.
constexpr int64_t kAmxChannels = 32;
constexpr int64_t kAmxPixels = 32;

GemmBlocking gemm_blocking(const ForwardAvx512Params& p) {
  const int64_t HW = p.H * p.W, rest = HW % kLanes;
  GemmBlocking b{1, 0, kMR, kNV};
  if (p.bf16 && p.bf16_dot && p.amx) return GemmBlocking{1, 0, kAmxChannels, kAmxPixels / kLanes};
  // bfloat16 on the float GEMM (widened x) keeps the plain tiles; the bf16 dot product takes the same small-map
  // blocking as float32 (bench/NOTES.md entry 63).
  if ((p.bf16 && !p.bf16_dot) || p.G != 1) return b;
  if (HW >= kLanes && rest >= 1 && rest <= 4) b.dot = rest;
  const int64_t pixels = band_pixels_max(p);
  if (pixels <= kSmallItemPixels) {
    b.tm = kWideTileChannels;
    b.sv = 3;
    if (pixels - b.dot > b.sv * kLanes) b.tiles = kTileGroup;  // with one strip there is no x to share
  }
  return b;
}

int64_t avx512_forward_scratch_words(const ForwardAvx512Params& p) {
  const GemmBlocking b = gemm_blocking(p);
  return panel_words(p) + b.tiles * b.tm * p.G * plane_stride(p) + 2 * plane_slack(p.W, p.K) + b.dot * p.C;
}

#if GK_AVX512_KERNELS
// avx512bf16 only adds the bf16 dot product the BF16 instantiations use; the F32 and BF16W ones contain none of its
// instructions, so they run on AVX-512 CPUs without BF16.
GK_AVX512_REGION_BEGIN

}  // namespace cpu
}  // namespace ghostkernels

#include "util_avx512_common.h"

namespace ghostkernels {
namespace cpu {
namespace {

// The element types and their GEMM step. A `word` is the GEMM operand unit: one float, or two bfloat16 of
// neighbouring input channels; madd(acc, a, b) adds, per float lane, the products of a broadcast weight word and
// a word of x. `pairs`: x is packed as channel pairs (the bf16 dot product); `widen`: bfloat16 x is widened to
// float as it is packed, for the float GEMM (CPUs without AVX-512 BF16).
struct F32 {
  using elem = float;
  using out_elem = float;  // the output's element: x's, except for the out_float types below
  using word = float;
  using wvec = __m512;
  static constexpr bool pairs = false;
  static constexpr bool widen = false;
  static constexpr bool amx = false;
  static wvec load(const word* p) { return _mm512_loadu_ps(p); }
  static wvec load(__mmask16 m, const word* p) { return _mm512_maskz_loadu_ps(m, p); }
  static wvec broadcast(word w) { return _mm512_set1_ps(w); }
  static __m512 madd(__m512 acc, wvec a, wvec b) { return _mm512_fmadd_ps(a, b, acc); }
};
struct BF16W : F32 {
  using elem = uint16_t;  // raw bfloat16
  using out_elem = uint16_t;
  static constexpr bool widen = true;
};
struct BF16 {
  using elem = uint16_t;  // raw bfloat16
  using out_elem = uint16_t;
  using word = uint32_t;
  using wvec = __m512i;
  static constexpr bool pairs = true;
  static constexpr bool widen = false;
  static constexpr bool amx = false;
  static wvec load(const word* p) { return _mm512_loadu_si512(p); }
  static wvec load(__mmask16 m, const word* p) { return _mm512_maskz_loadu_epi32(m, p); }
  static wvec broadcast(word w) { return _mm512_set1_epi32(static_cast<int>(w)); }
  static __m512 madd(__m512 acc, wvec a, wvec b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
};
// The same panel and pairs of weights, multiplied on AMX tiles (amx_block); the vector tiles are not used.
struct BF16X : BF16 {
  static constexpr bool amx = true;
};
// bfloat16 x with float32 outputs (ForwardAvx512Params::out_float: the fused front's scratch planes).
struct BF16F : BF16 {
  using out_elem = float;
};
struct BF16XF : BF16X {
  using out_elem = float;
};

// x's input channels per GEMM step.
template <typename T>
constexpr int64_t channels_per_word() { return T::pairs ? 2 : 1; }

// Whether T's items of small maps take gemm_blocking's 8 x 3 tiles, tile groups and dot tiles: float32 and the bf16
// dot product (BF16W's plain tiles and AMX's blocks never do; gemm_blocking decides at run time, this only keeps
// those tiles from being compiled for the other types).
template <typename T>
constexpr bool has_small_map_tiles() { return std::is_same_v<T, F32> || (T::pairs && !T::amx); }

// Stores the lanes `mask` of v at dst, rounding to the element type (bfloat16: to nearest even), after adding,
// where the call has a residual (laid out like the output), the residual's element at the same place, in float.
template <typename T>
inline void store_output(typename T::out_elem* dst, const typename T::out_elem* res, __mmask16 mask, __m512 v) {
  if (res != nullptr) v = _mm512_add_ps(v, load_f32(mask, res));
  store_f32(dst, mask, v);
}

// The map elements a vector's lanes `mask` multiply by (ForwardAvx512Params::gate): the lanes' entries of
// gate_index, and whether they fit a 32-element window from the smallest one. (The index is not monotone along a
// plane: rows that share a map row start over at its first element. But 16 consecutive pixels touch at most two map
// rows' elements for the maps of GhostNetV2, a window of at most 2 * Wg.) Computed once per vector of pixels and
// used for every channel: the gated GEMM epilogue builds one per vector for its tile's channels, the cheap half a
// table of them per band (gate_lanes_of_band).
struct GateLanes {
  __m512i idx, rel;
  int32_t first;
  bool window;
  __mmask16 mask;
  GateLanes() = default;
  GateLanes(const int32_t* index, __mmask16 m) : mask(m) {  // m != 0
    idx = _mm512_maskz_loadu_epi32(m, index);
    first = _mm512_mask_reduce_min_epi32(m, idx);
    window = _mm512_mask_reduce_max_epi32(m, idx) - first < 32;
    rel = _mm512_sub_epi32(idx, _mm512_set1_epi32(first));
  }
  // The lanes' map values from one map plane; `end` bounds the window's two loads.
  __m512 load(const float* plane, const float* end) const {
    const float* base = plane + first;
    if (window && base + 32 <= end) {
      return _mm512_permutex2var_ps(_mm512_loadu_ps(base), rel, _mm512_loadu_ps(base + kLanes));
    }
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, idx, plane, 4);
  }
};

// One work item's pieces, shared by its tiles.
template <typename T>
struct Item {
  const void* b;         // GEMM right operand: x of the item, [words][P] with row stride ldb (in 4-byte words)
  int64_t ldb, P, PA;    // P = g * PA pixels; PA = pixels of one image's computed rows [a0, a1)
  float* planes;         // plane(r, i) = planes + (r * G + i) * pstride, row t = image row top + t
  int64_t pstride, x1_off;  // x1_off: where row a0 starts in a plane
  typename T::out_elem* out;         // the output (OutputMap's addressing)
  const typename T::out_elem* res;   // the residual laid out like the output, or nullptr
  int64_t out_primary;               // where channel m0 = 0 of the item's first image, row a0, starts in them
  int64_t out_image, out_plane;      // output elements per image and per channel plane
  int64_t own_lo, own_hi;  // pixels (of PA) on the band's own rows
  int64_t n0, pix0;        // the item's first image, and the in-image pixel of row a0's first column (a0 * W)
};

// Epilogue of one vector of z1 (MR channels from m0, pixels [s, s + 16) of the item, written up to pixel `end`):
// x1 = act(z1 + b1) to the planes (every computed row) and the output (own rows, kept channels).
// The activation is a run-time switch here, once per vector of MR rows, not a template parameter of the tiles: the
// ~110 GEMM and dot tiles (element type x MR x NV or R) would otherwise be compiled once per activation, which made
// this file a quarter of the library's compile time. The branch goes the same way for a whole call.
// MR 0: `rows` (at most 16) channels, a run-time count (the AMX blocks' ragged last rows); else MR channels.
template <typename T, int MR>
__attribute__((always_inline)) inline void epilogue_vector(const ForwardAvx512Params& p, const Item<T>& it, int64_t m0, int64_t s, int64_t end,
                            __m512* z, int rows = MR) {
  const int64_t plane_pitch = it.out_plane, valid = imin(kLanes, end - s);
  const int R = MR > 0 ? MR : rows;
  dispatch_act(static_cast<Act>(p.act), [&](auto a) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) z[r] = act_v<decltype(a)::value>(_mm512_add_ps(z[r], _mm512_set1_ps(p.b1[m0 + r])));
  });
  // Lanes of one image at a time: a vector spans two images where the pixels of an image are not a multiple
  // of 16 (and more than two only for images under 16 pixels).
  int64_t i = s / it.PA;
  for (int64_t lo = 0; lo < valid; ++i) {
    const int64_t hi = imin(valid, (i + 1) * it.PA - s);
    const int64_t shift = s - i * it.PA;  // pixel (of the image's computed rows) of lane 0
    const __mmask16 mine = lane_range(lo, hi);
    const __mmask16 own = mine & lane_range(it.own_lo - shift, it.own_hi - shift);
    float* x1 = it.planes + i * it.pstride + it.x1_off + shift;
    const int64_t out_off = it.out_primary + i * it.out_image + m0 * plane_pitch + shift;
    typename T::out_elem* out = it.out + out_off;
    const typename T::out_elem* res = it.res == nullptr ? nullptr : it.res + out_off;
    const bool gated = p.gate != nullptr && own;
    const GateLanes gl = gated ? GateLanes(p.gate_index + it.pix0 + shift, own) : GateLanes();
    const float* gplane = gated ? p.gate + ((it.n0 + i) * p.OC + m0) * p.gate_plane : nullptr;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      _mm512_mask_storeu_ps(x1 + r * p.G * it.pstride, mine, z[r]);  // x1 itself: the cheap half reads it
      if (own && m0 + r < p.n_primary) {
        const __m512 y = gated ? _mm512_mul_ps(z[r], gl.load(gplane + r * p.gate_plane, p.gate_end)) : z[r];
        store_output<T>(out + r * plane_pitch, res == nullptr ? nullptr : res + r * plane_pitch, own, y);
      }
    }
    lo = hi;
  }
}

// z1 for channels [m0, m0 + MR) x pixels [s0, s0 + 16*NV) of the item, then its epilogue for the pixels before
// `end`. `tail` masks the last vector's lanes past the item's (vector-tile) pixels.
template <typename T, int MR, int NV>
void gemm_tile(const ForwardAvx512Params& p, const Item<T>& it, int64_t m0, int64_t s0, __mmask16 tail, int64_t end) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  const int64_t words = (p.C + channels_per_word<T>() - 1) / channels_per_word<T>(), ldb = it.ldb;
  using word = typename T::word;
  const word* a = static_cast<const word*>(p.w1) + m0 * words;
  const word* b = static_cast<const word*>(it.b) + s0;
#pragma GCC unroll 2
  for (int64_t k = 0; k < words; ++k) {
    const word* bk = b + k * ldb;
    typename T::wvec bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV - 1; ++v) bv[v] = T::load(bk + v * kLanes);
    bv[NV - 1] = T::load(tail, bk + (NV - 1) * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const typename T::wvec av = T::broadcast(a[r * words + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = T::madd(acc[r][v], av, bv[v]);
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    __m512 z[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) z[r] = acc[r][v];
    epilogue_vector<T, MR>(p, it, m0, s0 + v * kLanes, end, z);
  }
}

// The sums of the 16 lanes of each of v[0..7], by a fixed tree: v[r]'s in lane r for r < 4, lane r + 4 for r >= 4.
inline __m512 sum8(const __m512* v) {
  __m512 u[4];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: v[2i] in floats 0 and 2, v[2i+1] in 1 and 3
    u[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  __m512 w[2];
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {  // per 128-bit lane: v[4i .. 4i+3] in floats 0-3
    const __m512d a = _mm512_castps_pd(u[2 * i]), b = _mm512_castps_pd(u[2 * i + 1]);
    w[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  // 128-bit lanes: w[0]'s L0+L1, L2+L3, w[1]'s L0+L1, L2+L3; then each pair added.
  const __m512 x = _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(x, _mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(2, 3, 0, 1)));
}

// z1 for channels [m0, m0 + MR) x the R (1-4) pixels from item pixel s as dot products over the input channels,
// 16 words per vector (float32: 16 channels; the bf16 dot product: 16 pairs of channels), then the epilogue. For the
// last HW % 16 pixels of an image, which as a vector of pixels would leave 12-15 of its 16 lanes idle in every step
// of the GEMM (GhostNet's 7x7 maps are 3 x 16 + 1 pixels, its 14x14 maps 12 x 16 + 4). xt: those pixels' x as R
// rows of the item's words per pixel (the panel's words, transposed). s is a multiple of 16 from the image's first
// pixel. Numerics: each of these sums is 16 lane-wise partial sums in word order (bfloat16: each step adds a pair's
// two products, as the vector tiles do), then added in a fixed tree; which pixels take this path depends only on
// the image size, never on the cut.
template <typename T, int MR, int R>
void dot_tile(const ForwardAvx512Params& p, const Item<T>& it, int64_t m0, int64_t s, const typename T::word* xt) {
  __m512 acc[MR][R];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  using word = typename T::word;
  const int64_t words = (p.C + channels_per_word<T>() - 1) / channels_per_word<T>();
  const word* a = static_cast<const word*>(p.w1) + m0 * words;
  for (int64_t k = 0; k < words; k += kLanes) {
    const __mmask16 m = lane_range(0, words - k);
    typename T::wvec xv[R];
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) xv[j] = T::load(m, xt + j * words + k);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const typename T::wvec wv = T::load(m, a + r * words + k);
#pragma GCC unroll 4
      for (int j = 0; j < R; ++j) acc[r][j] = T::madd(acc[r][j], wv, xv[j]);
    }
  }
  // Per pixel, the MR sums in one vector (sum8), then each channel's sum moved to the lane of its pixel.
  __m512 z[MR];
#pragma GCC unroll 4
  for (int j = 0; j < R; ++j) {
    __m512 col[8];
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) col[r] = r < MR ? acc[r][j] : _mm512_setzero_ps();
    const __m512 sums = sum8(col);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512i from = _mm512_set1_epi32(r < 4 ? r : r + 4);
      z[r] = j == 0 ? _mm512_permutexvar_ps(from, sums)
                    : _mm512_mask_permutexvar_ps(z[r], static_cast<__mmask16>(1u << j), from, sums);
    }
  }
  epilogue_vector<T, MR>(p, it, m0, s, s + R, z);
}

// AMX (BF16X): one tile configuration for the whole item (palette 1, eight tiles of 16 rows x 64 bytes). Tiles 0-3
// accumulate z1, 16 channels x 16 pixels of floats each ([channel half][pixel half] of a block); 4-5 hold weights,
// 16 channels x 16 words (pairs of input channels, the rows of w1); 6-7 hold x, 16 words x 16 pixels (rows of the
// panel: the pair layout the bf16 dot product reads is also the tile product's B layout).
struct alignas(64) AmxConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

#define GK_AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))

GK_AMX_TARGET void amx_configure() {
  AmxConfig c{};
  c.palette = 1;
  for (int t = 0; t < 8; ++t) c.rows[t] = 16, c.colsb[t] = 64;
  _tile_loadconfig(&c);
}

// Gives the tile state back (the kernel thread then carries no AMX state into its next context switch).
GK_AMX_TARGET void amx_release() { _tile_release(); }

// z1 of 16 (TM: 32) channels x 16 (TN: 32) pixels into zt, rows of kAmxPixels floats: a = w1 at the block's first
// channel, lda words per row (a multiple of 16, zero-padded); b = the panel at the block's first pixel, ldb words per
// row, lda rows (the rows past the input channels are zero). Numerics: each tile product adds 32 products (16 pairs)
// per element in float, rounding to nearest even with denormals flushed, as vdpbf16ps does.
template <bool TM, bool TN>
GK_AMX_TARGET void amx_block(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t ldb, float* zt) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t k = 0; k < lda; k += 16) {
    const uint32_t* bk = b + k * ldb;
    _tile_loadd(6, bk, ldb * 4);
    if constexpr (TN) _tile_loadd(7, bk + 16, ldb * 4);
    _tile_loadd(4, a + k, lda * 4);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (TN) _tile_dpbf16ps(1, 4, 7);
    if constexpr (TM) {
      _tile_loadd(5, a + 16 * lda + k, lda * 4);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (TN) _tile_dpbf16ps(3, 5, 7);
    }
  }
  constexpr int64_t pitch = kAmxPixels * sizeof(float);
  _tile_stored(0, zt, pitch);
  if constexpr (TN) _tile_stored(1, zt + 16, pitch);
  if constexpr (TM) {
    _tile_stored(2, zt + 16 * kAmxPixels, pitch);
    if constexpr (TN) _tile_stored(3, zt + 16 * kAmxPixels + 16, pitch);
  }
}

// z1 of channels [g0, g1) (at most kAmxChannels; the padded weight rows past g1 are multiplied too and dropped) for
// pixels [0, P) of the item, a block of kAmxPixels at a time, then the epilogue of each of its 16-pixel vectors
// (pixels past P are junk columns: computed from whatever lies past a panel row, never stored). it.planes: channel
// g0's planes.
template <typename T>
void amx_group(const ForwardAvx512Params& p, const Item<T>& it, int64_t g0, int64_t g1, int64_t P) {
  alignas(64) float zt[kAmxChannels * kAmxPixels];
  const int64_t lda = avx512_amx_words(p.C), rows = g1 - g0;
  const uint32_t* a = static_cast<const uint32_t*>(p.w1) + g0 * lda;
  const uint32_t* panel = static_cast<const uint32_t*>(it.b);
  for (int64_t s0 = 0; s0 < P; s0 += kAmxPixels) {
    const bool tn = P - s0 > 16;
    if (rows > 16) {
      (tn ? amx_block<true, true> : amx_block<true, false>)(a, lda, panel + s0, it.ldb, zt);
    } else {
      (tn ? amx_block<false, true> : amx_block<false, false>)(a, lda, panel + s0, it.ldb, zt);
    }
    for (int64_t h = 0; h < rows; h += 16) {
      Item<T> ih = it;
      ih.planes += h * p.G * it.pstride;
      const int n = static_cast<int>(imin(16, rows - h));
      for (int64_t v = 0; v < (tn ? 2 : 1); ++v) {
        __m512 z[16];
        for (int r = 0; r < n; ++r) z[r] = _mm512_load_ps(zt + (h + r) * kAmxPixels + v * kLanes);
        epilogue_vector<T, 0>(p, ih, g0 + h, s0 + v * kLanes, P, z, n);
      }
    }
  }
}

template <typename T>
using TileFn = void (*)(const ForwardAvx512Params&, const Item<T>&, int64_t, int64_t, __mmask16, int64_t);

template <typename T, int MR>
TileFn<T> tile_for_nv(int64_t nv) {
  switch (nv) {
    case 1: return &gemm_tile<T, MR, 1>;
    case 2: return &gemm_tile<T, MR, 2>;
    case 3: return &gemm_tile<T, MR, 3>;
    default: return &gemm_tile<T, MR, 4>;
  }
}

template <typename T>
TileFn<T> tile_for(int64_t mr, int64_t nv) {
  static_assert(kMR == 6 && kNV == 4 && kWideTileChannels == 8, "the switches below enumerate the tile shapes");
  switch (mr) {
    case 1: return tile_for_nv<T, 1>(nv);
    case 2: return tile_for_nv<T, 2>(nv);
    case 3: return tile_for_nv<T, 3>(nv);
    case 4: return tile_for_nv<T, 4>(nv);
    case 5: return tile_for_nv<T, 5>(nv);
    case 6: return tile_for_nv<T, 6>(nv);
    default:  // strips of at most 3 vectors (kWideTileChannels): float32 and the bf16 dot product
      if constexpr (has_small_map_tiles<T>()) {
        if (mr == 7) return tile_for_nv<T, 7>(nv);
        return tile_for_nv<T, 8>(nv);
      }
      return tile_for_nv<T, 6>(nv);
  }
}

template <typename T>
using DotFn = void (*)(const ForwardAvx512Params&, const Item<T>&, int64_t, int64_t, const typename T::word*);

template <typename T, int MR>
DotFn<T> dot_for_r(int64_t r) {
  if constexpr (MR > kMR) {  // kDotWideMaxPixels
    return r == 1 ? &dot_tile<T, MR, 1> : &dot_tile<T, MR, 2>;
  } else {
    switch (r) {
      case 1: return &dot_tile<T, MR, 1>;
      case 2: return &dot_tile<T, MR, 2>;
      case 3: return &dot_tile<T, MR, 3>;
      default: return &dot_tile<T, MR, 4>;
    }
  }
}

template <typename T>
DotFn<T> dot_for(int64_t mr, int64_t r) {
  switch (mr) {
    case 1: return dot_for_r<T, 1>(r);
    case 2: return dot_for_r<T, 2>(r);
    case 3: return dot_for_r<T, 3>(r);
    case 4: return dot_for_r<T, 4>(r);
    case 5: return dot_for_r<T, 5>(r);
    case 6: return dot_for_r<T, 6>(r);
    case 7: return dot_for_r<T, 7>(r);
    default: return dot_for_r<T, 8>(r);
  }
}

// dst[q] = act(b2 + sum_{dy,dx} w[dy*K+dx] * x1(q + (dy-p)*W + dx-p)) for q in [0, n), where `centre` is x1 at
// the band's first own row (times the map plane gplane's elements gl[q / 16] where gplane is not nullptr, then plus
// res[q] where res is not nullptr). colmask[(q/16)*K + dx] keeps the lanes whose column q%W + dx - p is inside the
// row.
// NV (1 or 2) vectors of depthwise_rows from output q0: independent chains of k*k fused multiply-adds (one chain
// alone waits on the FMA's latency), each output's sum the same, in the same order.
template <typename T, int K, Act A, int NV>
__attribute__((always_inline)) inline void depthwise_vectors(const float* centre, typename T::out_elem* dst,
                                                             const typename T::out_elem* res, int64_t q0, int64_t n,
                                                             int64_t W, const float* w, float bias,
                                                             const uint16_t* colmask, const float* gplane,
                                                             const GateLanes* gl, const float* gend) {
  constexpr int P = K / 2;
  const uint16_t* cm = colmask + (q0 / kLanes) * K;
  __m512 acc[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) acc[v] = _mm512_set1_ps(bias);
#pragma GCC unroll 7
  for (int dy = 0; dy < K; ++dy) {
    const float* row = centre + q0 + (dy - P) * W - P;
#pragma GCC unroll 7
    for (int dx = 0; dx < K; ++dx) {
      const __m512 wv = _mm512_set1_ps(w[dy * K + dx]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        const float* src = row + dx + v * kLanes;
        const __m512 x = dx == P ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(cm[v * K + dx], src);
        acc[v] = _mm512_fmadd_ps(x, wv, acc[v]);
      }
    }
  }
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    const int64_t q = q0 + v * kLanes;
    __m512 y = act_v<A>(acc[v]);
    if (gplane != nullptr) y = _mm512_mul_ps(y, gl[q / kLanes].load(gplane, gend));
    store_output<T>(dst + q, res == nullptr ? nullptr : res + q, lane_range(0, n - q), y);
  }
}

// dst[q] = act(b2 + sum_{dy,dx} w[dy*K+dx] * x1(q + (dy-p)*W + dx-p)) for q in [0, n), where `centre` is x1 at
// the band's first own row (times the map plane gplane's elements gl[q / 16] where gplane is not nullptr, then plus
// res[q] where res is not nullptr). colmask[(q/16)*K + dx] keeps the lanes whose column q%W + dx - p is inside the
// row.
template <typename T, int K, Act A>
void depthwise_rows(const float* centre, typename T::out_elem* dst, const typename T::out_elem* res, int64_t n, int64_t W,
                    const float* w, float bias, const uint16_t* colmask, const float* gplane, const GateLanes* gl,
                    const float* gend) {
  int64_t q0 = 0;
  for (; q0 + kLanes < n; q0 += 2 * kLanes) {
    depthwise_vectors<T, K, A, 2>(centre, dst, res, q0, n, W, w, bias, colmask, gplane, gl, gend);
  }
  if (q0 < n) depthwise_vectors<T, K, A, 1>(centre, dst, res, q0, n, W, w, bias, colmask, gplane, gl, gend);
}

template <typename T, Act A>
using DepthwiseFn = void (*)(const float*, typename T::out_elem*, const typename T::out_elem*, int64_t, int64_t, const float*,
                             float, const uint16_t*, const float*, const GateLanes*, const float*);

template <typename T, Act A>
DepthwiseFn<T, A> depthwise_for(int64_t K) {
  switch (K) {
    case 1: return &depthwise_rows<T, 1, A>;
    case 3: return &depthwise_rows<T, 3, A>;
    case 5: return &depthwise_rows<T, 5, A>;
    default: return &depthwise_rows<T, 7, A>;
  }
}

// Packs channels [2k, 2k+1] of g images' rows [a0, a1) into words (low half: channel 2k), row k of a [C/2][g*PA]
// panel; an odd C's last word pairs its channel with zero (as the weights do).
void pack_bf16_pairs(const uint16_t* x, int64_t C, int64_t HW, int64_t n0, int64_t g, int64_t a0W, int64_t PA,
                     uint32_t* panel) {
  const int64_t words = (C + 1) / 2, P = g * PA;
  for (int64_t k = 0; k < words; ++k) {
    for (int64_t i = 0; i < g; ++i) {
      const uint16_t* lo = x + ((n0 + i) * C + 2 * k) * HW + a0W;
      const uint16_t* hi = 2 * k + 1 < C ? lo + HW : nullptr;
      uint32_t* dst = panel + k * P + i * PA;
      for (int64_t q = 0; q < PA; q += kLanes) {
        const __mmask16 m = lane_range(0, PA - q);
        const __m512i l = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, lo + q));
        const __m512i h = hi ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, hi + q)) : _mm512_setzero_si512();
        _mm512_mask_storeu_epi32(dst + q, m, _mm512_or_si512(l, _mm512_slli_epi32(h, 16)));
      }
    }
  }
}

// Widens channels [0, C) of g images' rows [a0, a1) to float, row k of a [C][g*PA] panel (bfloat16 on the float
// GEMM).
void pack_bf16_widened(const uint16_t* x, int64_t C, int64_t HW, int64_t n0, int64_t g, int64_t a0W, int64_t PA,
                       float* panel) {
  const int64_t P = g * PA;
  for (int64_t k = 0; k < C; ++k) {
    for (int64_t i = 0; i < g; ++i) {
      const uint16_t* src = x + ((n0 + i) * C + k) * HW + a0W;
      float* dst = panel + k * P + i * PA;
      for (int64_t q = 0; q < PA; q += kLanes) {
        const __mmask16 m = lane_range(0, PA - q);
        _mm512_mask_storeu_ps(dst + q, m, load_f32(m, src + q));
      }
    }
  }
}

// ForwardAvx512Params' output addressing, resolved (out_plane 0: the [N, OC, H, W] tensor).
struct OutputMap {
  int64_t image, plane, primary_shift, cheap_shift, pixel_shift;
  explicit OutputMap(const ForwardAvx512Params& p)
      : image(p.out_plane > 0 ? p.out_image : p.OC * p.H * p.W),
        plane(p.out_plane > 0 ? p.out_plane : p.H * p.W),
        primary_shift(p.out_plane > 0 ? p.out_primary_shift : 0),
        cheap_shift(p.out_plane > 0 ? p.out_cheap_shift : p.I),
        pixel_shift(p.out_plane > 0 ? p.out_pixel_shift : 0) {}
};

// One work item: images [n0, n0 + g), primary channels [c0, c1) and their cheap channels, own rows [r0, r1).
template <typename T, Act A>
void run_item(const ForwardAvx512Params& p, int64_t n0, int64_t g, int64_t c0, int64_t c1, int64_t r0, int64_t r1,
              void* scratch, bool panel_packed = false) {
  using elem = typename T::elem;
  using out_elem = typename T::out_elem;
  const int64_t C = p.C, H = p.H, W = p.W, HW = H * W, I = p.I, M = p.M, K = p.K, pad = K / 2;
  const int64_t pstride = plane_stride(p);
  const GemmBlocking gb = gemm_blocking(p);
  const int64_t group_channels = gb.tiles * gb.tm;
  uint32_t* panel = static_cast<uint32_t*>(scratch);
  float* planes = static_cast<float*>(scratch) + panel_words(p) + plane_slack(W, K);
  float* xt = planes + group_channels * p.G * pstride + plane_slack(W, K);  // after the planes: the dot tiles' x
  const elem* x = static_cast<const elem*>(p.x);
  out_elem* out_all = static_cast<out_elem*>(p.out);
  const out_elem* res_all = static_cast<const out_elem*>(p.residual);
  const DepthwiseFn<T, A> depthwise = depthwise_for<T, A>(K);
  const OutputMap om(p);
  thread_local std::vector<GateLanes> band_lanes;  // per thread, reused across items and calls

  {
    const int64_t own = r1 - r0;
    const int64_t top = r0 - pad, a0 = imax(0, top), a1 = imin(H, r1 + pad), PA = (a1 - a0) * W;

    Item<T> it;
    it.PA = PA;
    it.P = g * PA;
    if constexpr (T::pairs) {
      if (!panel_packed) pack_bf16_pairs(x, C, HW, n0, g, a0 * W, PA, panel);
      if constexpr (T::amx) {  // zero rows up to whole tiles (junk there times the zero weights could be NaN)
        const int64_t words = (C + 1) / 2;
        std::memset(panel + words * it.P, 0, (avx512_amx_words(C) - words) * it.P * sizeof(uint32_t));
      }
      it.b = panel;
      it.ldb = it.P;
    } else if constexpr (T::widen) {
      if (!panel_packed) pack_bf16_widened(x, C, HW, n0, g, a0 * W, PA, reinterpret_cast<float*>(panel));
      it.b = panel;
      it.ldb = it.P;
    } else if (g == 1) {
      it.b = x + n0 * C * HW + a0 * W;
      it.ldb = HW;
    } else {
      float* fpanel = reinterpret_cast<float*>(panel);
      for (int64_t k = 0; k < C; ++k) {
        for (int64_t i = 0; i < g; ++i) {
          std::memcpy(fpanel + k * it.P + i * PA, x + ((n0 + i) * C + k) * HW + a0 * W, PA * sizeof(float));
        }
      }
      it.b = fpanel;
      it.ldb = it.P;
    }
    it.planes = planes;
    it.pstride = pstride;
    it.x1_off = (a0 - top) * W;
    it.out = out_all;
    it.res = res_all;
    it.out_primary = n0 * om.image + om.primary_shift * om.plane + a0 * W + om.pixel_shift;
    it.out_image = om.image;
    it.out_plane = om.plane;
    it.own_lo = (r0 - a0) * W;
    it.own_hi = (r1 - a0) * W;
    it.n0 = n0;
    it.pix0 = a0 * W;

    // The gated module's map lanes for the band's own rows, shared by every cheap channel and image of the item.
    if (p.gate != nullptr) {
      band_lanes.clear();
      for (int64_t q0 = 0; q0 < own * W; q0 += kLanes) {
        band_lanes.emplace_back(p.gate_index + r0 * W + q0, lane_range(0, own * W - q0));
      }
    }

    // Plane rows outside the image are the depthwise conv's zero padding; the epilogue never writes them.
    const int64_t zero_top = (a0 - top) * W, zero_bottom_from = (a1 - top) * W, plane_end = (own + 2 * pad) * W;
    for (int64_t t = 0; t < group_channels * g; ++t) {
      float* pl = planes + (t / g) * p.G * pstride + (t % g) * pstride;
      if (zero_top > 0) std::memset(pl, 0, zero_top * sizeof(float));
      if (plane_end > zero_bottom_from) std::memset(pl + zero_bottom_from, 0, (plane_end - zero_bottom_from) * sizeof(float));
    }

    if constexpr (T::amx) amx_configure();

    // Pixels [0, preg) of the item on the vector tiles, [preg, P) (the image's last gb.dot pixels) on dot tiles,
    // whose x is copied out as rows of the item's words (float32 or the bf16 dot product, one image per item).
    int64_t preg = it.P;
    using word = typename T::word;
    word* xtw = reinterpret_cast<word*>(xt);
    if constexpr (has_small_map_tiles<T>()) {
      if (gb.dot > 0) {
        preg = imin(it.P, imax(0, HW - gb.dot - a0 * W));
        const word* xb = static_cast<const word*>(it.b);
        const int64_t words = (C + channels_per_word<T>() - 1) / channels_per_word<T>();
        for (int64_t j = 0; j < it.P - preg; ++j) {
          for (int64_t k = 0; k < words; ++k) xtw[j * words + k] = xb[k * it.ldb + preg + j];
        }
      }
    }

    // Groups of gb.tiles tiles: for each strip of pixels, every tile of the group, so that the strip's x is read
    // from L2 once per group, not once per tile.
    for (int64_t g0 = c0; g0 < c1; g0 += group_channels) {
      if (g0 >= p.n_primary && g0 * M >= p.n_cheap) break;  // this and every later channel is sliced away
      const int64_t g1 = imin(c1, g0 + group_channels);
      if constexpr (T::amx) {
        it.planes = planes;
        amx_group(p, it, g0, g1, preg);
      } else {
        const int64_t tm = gb.tm;
        for (int64_t s0 = 0; s0 < preg; s0 += gb.sv * kLanes) {
          const int64_t vecs = imin(gb.sv, (preg - s0 + kLanes - 1) / kLanes);
          const __mmask16 tail = lane_range(0, preg - (s0 + (vecs - 1) * kLanes));
          const TileFn<T> full = tile_for<T>(tm, vecs);
          for (int64_t m0 = g0; m0 < g1; m0 += tm) {
            if (m0 >= p.n_primary && m0 * M >= p.n_cheap) break;
            const int64_t mr = imin(tm, g1 - m0);
            it.planes = planes + (m0 - g0) * p.G * pstride;
            (mr == tm ? full : tile_for<T>(mr, vecs))(p, it, m0, s0, tail, preg);
          }
        }
      }
      if constexpr (has_small_map_tiles<T>()) {
        if (preg < it.P) {
          // Tiles of 8 channels for up to 2 pixels (8 x 2 accumulators), else of kMR.
          const int64_t dm = it.P - preg <= kDotWideMaxPixels ? kWideTileChannels : kMR;
          for (int64_t m0 = g0; m0 < g1; m0 += dm) {
            if (m0 >= p.n_primary && m0 * M >= p.n_cheap) break;
            it.planes = planes + (m0 - g0) * p.G * pstride;
            dot_for<T>(imin(dm, g1 - m0), it.P - preg)(p, it, m0, preg, xtw);
          }
        }
      }
      // Cheap channels of these primaries, from the planes while they are in L1 (or L2).
      for (int64_t c = g0; c < g1; ++c) {
        for (int64_t j = c * M; j < imin((c + 1) * M, p.n_cheap); ++j) {
          for (int64_t i = 0; i < g; ++i) {
            const float* centre = planes + ((c - g0) * p.G + i) * pstride + pad * W;
            const int64_t off = (n0 + i) * om.image + (j + om.cheap_shift) * om.plane + r0 * W + om.pixel_shift;
            const float* gplane = p.gate == nullptr ? nullptr : p.gate + ((n0 + i) * p.OC + I + j) * p.gate_plane;
            depthwise(centre, out_all + off, res_all == nullptr ? nullptr : res_all + off, own * W, W,
                      p.w2 + j * K * K, p.b2[j], p.colmask, gplane, band_lanes.data(), p.gate_end);
          }
        }
      }
    }
    if constexpr (T::amx) amx_release();
  }
}

template <typename T, Act A>
void run_items(const ForwardAvx512Params& p, int64_t begin, int64_t end, void* scratch) {
  for (int64_t item = begin; item < end; ++item) {
    // item -> (group, block, band), band fastest: the order of util_work_plan.h's WorkPlan.
    const int64_t band = item % p.bands, block = (item / p.bands) % p.blocks, group = item / (p.bands * p.blocks);
    const int64_t n0 = group * p.G, r0 = band * p.B, c0 = block * p.Ib;
    run_item<T, A>(p, n0, imin(p.G, p.N - n0), c0, imin(p.I, c0 + p.Ib), r0, imin(p.H, r0 + p.B), scratch);
  }
}

// Calls fn(T{}, a) with the element/GEMM type of p and its activation as a compile-time constant.
template <typename Fn>
void with_types(const ForwardAvx512Params& p, Fn&& fn) {
  const auto with_act = [&](auto t) { dispatch_act(static_cast<Act>(p.act), [&](auto a) { fn(t, a); }); };
  if (p.bf16 && p.bf16_dot && p.out_float) {
    if (p.amx) {
      with_act(BF16XF{});
    } else {
      with_act(BF16F{});
    }
  } else if (p.bf16 && p.bf16_dot && p.amx) {
    with_act(BF16X{});
  } else if (p.bf16 && p.bf16_dot) {
    with_act(BF16{});
  } else if (p.bf16) {
    with_act(BF16W{});
  } else {
    with_act(F32{});
  }
}

}  // namespace

void avx512_forward_items(const ForwardAvx512Params& p, int64_t begin, int64_t end, void* scratch) {
  with_types(p, [&](auto t, auto a) { run_items<decltype(t), decltype(a)::value>(p, begin, end, scratch); });
}

void avx512_forward_region(const ForwardAvx512Params& p, int64_t n, int64_t c0, int64_t c1, int64_t r0, int64_t r1,
                           void* scratch, bool panel_packed) {
  with_types(p, [&](auto t, auto a) {
    run_item<decltype(t), decltype(a)::value>(p, n, 1, c0, c1, r0, r1, scratch, panel_packed);
  });
}

void avx512_depthwise_taps(const float* centre, float* dst, int64_t n, int64_t W, int64_t K, const float* w,
                           const uint16_t* colmask) {
  depthwise_for<F32, Act::Identity>(K)(centre, dst, nullptr, n, W, w, 0.f, colmask, nullptr, nullptr,
                                       nullptr);  // no gate
}

GK_AVX512_REGION_END
#else
// Never called: avx512_forward_available() is false.
void avx512_forward_items(const ForwardAvx512Params&, int64_t, int64_t, void*) {}
void avx512_forward_region(const ForwardAvx512Params&, int64_t, int64_t, int64_t, int64_t, int64_t, void*, bool) {}
void avx512_depthwise_taps(const float*, float*, int64_t, int64_t, int64_t, const float*, const uint16_t*) {}
#endif

}  // namespace cpu
}  // namespace ghostkernels
