// The AVX-512 NCHW forward kernel, float32 and bfloat16 (see kernel_ghost_forward_avx512.h for what it computes and
// why).
//
// No torch header here, and the only code compiled for AVX-512 sits in this file between GK_AVX512_REGION_BEGIN
// and GK_AVX512_REGION_END (util_avx512_target.h), in an anonymous namespace (plus the one exported entry point), so no inline function shared with
// other files is ever emitted with AVX-512 instructions: the library still loads and runs its generic kernels on
// CPUs without AVX-512, which avx512_forward_available() keeps away from this code.
//
// Numerics: float32 accumulation throughout; each z1 is a sum over input channels in channel order with fused
// multiply-adds (bfloat16: two products per step, exact in float, then one rounding), like a blocked GEMM; the
// depthwise sum adds the k*k taps row by row to b2. Results differ from eager's oneDNN convolutions only by rounding
// (the tests hold them to the dtype's tolerances against a float64 reference).
#include "kernel_ghost_forward_avx512.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../activations.h"
#include "util_cpu_features.h"

#include "util_avx512_target.h"

namespace ghostkernels {
namespace cpu {

namespace {
constexpr int64_t kLanes = 16;  // floats per 512-bit vector
constexpr int64_t kMR = kForwardTileChannels;
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
  if (p.bf16 && p.bf16_dot) return (p.C + 1) / 2 * p.G * band_pixels_max(p);
  if (p.bf16) return p.C * p.G * band_pixels_max(p);
  return p.G > 1 ? p.C * p.G * band_pixels_max(p) : 0;
}

int64_t avx512_forward_scratch_words(const ForwardAvx512Params& p) {
  return panel_words(p) + kMR * p.G * plane_stride(p) + 2 * plane_slack(p.W, p.K);
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
  using word = float;
  using wvec = __m512;
  static constexpr bool pairs = false;
  static constexpr bool widen = false;
  static wvec load(const word* p) { return _mm512_loadu_ps(p); }
  static wvec load(__mmask16 m, const word* p) { return _mm512_maskz_loadu_ps(m, p); }
  static wvec broadcast(word w) { return _mm512_set1_ps(w); }
  static __m512 madd(__m512 acc, wvec a, wvec b) { return _mm512_fmadd_ps(a, b, acc); }
};
struct BF16W : F32 {
  using elem = uint16_t;  // raw bfloat16
  static constexpr bool widen = true;
};
struct BF16 {
  using elem = uint16_t;  // raw bfloat16
  using word = uint32_t;
  using wvec = __m512i;
  static constexpr bool pairs = true;
  static constexpr bool widen = false;
  static wvec load(const word* p) { return _mm512_loadu_si512(p); }
  static wvec load(__mmask16 m, const word* p) { return _mm512_maskz_loadu_epi32(m, p); }
  static wvec broadcast(word w) { return _mm512_set1_epi32(static_cast<int>(w)); }
  static __m512 madd(__m512 acc, wvec a, wvec b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
};

// x's input channels per GEMM step.
template <typename T>
constexpr int64_t channels_per_word() { return T::pairs ? 2 : 1; }

// Stores the lanes `mask` of v at dst, rounding to the element type (bfloat16: to nearest even), after adding,
// where the call has a residual (laid out like the output), the residual's element at the same place, in float.
template <typename T>
inline void store_output(typename T::elem* dst, const typename T::elem* res, __mmask16 mask, __m512 v) {
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
  typename T::elem* out;             // the output (OutputMap's addressing)
  const typename T::elem* res;       // the residual laid out like the output, or nullptr
  int64_t out_primary;               // where channel m0 = 0 of the item's first image, row a0, starts in them
  int64_t out_image, out_plane;      // output elements per image and per channel plane
  int64_t own_lo, own_hi;  // pixels (of PA) on the band's own rows
  int64_t n0, pix0;        // the item's first image, and the in-image pixel of row a0's first column (a0 * W)
};

// z1 for channels [m0, m0 + MR) x pixels [s0, s0 + 16*NV) of the item, then its epilogue. `tail` masks the last
// vector's lanes past the item's pixels.
template <typename T, int MR, int NV, Act A>
void gemm_tile(const ForwardAvx512Params& p, const Item<T>& it, int64_t m0, int64_t s0, __mmask16 tail) {
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

  // Epilogue: x1 = act(z1 + b1) to the planes (every computed row) and the output (own rows, kept channels).
  const int64_t plane_pitch = it.out_plane;
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const int64_t s = s0 + v * kLanes, valid = imin(kLanes, it.P - s);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[r][v] = act_v<A>(_mm512_add_ps(acc[r][v], _mm512_set1_ps(p.b1[m0 + r])));
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
      typename T::elem* out = it.out + out_off;
      const typename T::elem* res = it.res == nullptr ? nullptr : it.res + out_off;
      const bool gated = p.gate != nullptr && own;
      const GateLanes gl = gated ? GateLanes(p.gate_index + it.pix0 + shift, own) : GateLanes();
      const float* gplane = gated ? p.gate + ((it.n0 + i) * p.OC + m0) * p.gate_plane : nullptr;
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        _mm512_mask_storeu_ps(x1 + r * p.G * it.pstride, mine, acc[r][v]);  // x1 itself: the cheap half reads it
        if (own && m0 + r < p.n_primary) {
          const __m512 y = gated ? _mm512_mul_ps(acc[r][v], gl.load(gplane + r * p.gate_plane, p.gate_end)) : acc[r][v];
          store_output<T>(out + r * plane_pitch, res == nullptr ? nullptr : res + r * plane_pitch, own, y);
        }
      }
      lo = hi;
    }
  }
}

template <typename T, Act A>
using TileFn = void (*)(const ForwardAvx512Params&, const Item<T>&, int64_t, int64_t, __mmask16);

template <typename T, Act A, int MR>
TileFn<T, A> tile_for_nv(int64_t nv) {
  switch (nv) {
    case 1: return &gemm_tile<T, MR, 1, A>;
    case 2: return &gemm_tile<T, MR, 2, A>;
    case 3: return &gemm_tile<T, MR, 3, A>;
    default: return &gemm_tile<T, MR, 4, A>;
  }
}

template <typename T, Act A>
TileFn<T, A> tile_for(int64_t mr, int64_t nv) {
  static_assert(kMR == 6 && kNV == 4, "the switches below enumerate the tile shapes");
  switch (mr) {
    case 1: return tile_for_nv<T, A, 1>(nv);
    case 2: return tile_for_nv<T, A, 2>(nv);
    case 3: return tile_for_nv<T, A, 3>(nv);
    case 4: return tile_for_nv<T, A, 4>(nv);
    case 5: return tile_for_nv<T, A, 5>(nv);
    default: return tile_for_nv<T, A, 6>(nv);
  }
}

// dst[q] = act(b2 + sum_{dy,dx} w[dy*K+dx] * x1(q + (dy-p)*W + dx-p)) for q in [0, n), where `centre` is x1 at
// the band's first own row (times the map plane gplane's elements gl[q / 16] where gplane is not nullptr, then plus
// res[q] where res is not nullptr). colmask[(q/16)*K + dx] keeps the lanes whose column q%W + dx - p is inside the
// row.
template <typename T, int K, Act A>
void depthwise_rows(const float* centre, typename T::elem* dst, const typename T::elem* res, int64_t n, int64_t W,
                    const float* w, float bias, const uint16_t* colmask, const float* gplane, const GateLanes* gl,
                    const float* gend) {
  constexpr int P = K / 2;
  for (int64_t q0 = 0; q0 < n; q0 += kLanes) {
    const uint16_t* cm = colmask + (q0 / kLanes) * K;
    __m512 acc = _mm512_set1_ps(bias);
#pragma GCC unroll 7
    for (int dy = 0; dy < K; ++dy) {
      const float* row = centre + q0 + (dy - P) * W - P;
#pragma GCC unroll 7
      for (int dx = 0; dx < K; ++dx) {
        const __m512 v = dx == P ? _mm512_loadu_ps(row + dx) : _mm512_maskz_loadu_ps(cm[dx], row + dx);
        acc = _mm512_fmadd_ps(v, _mm512_set1_ps(w[dy * K + dx]), acc);
      }
    }
    const __mmask16 lanes = lane_range(0, n - q0);
    __m512 y = act_v<A>(acc);
    if (gplane != nullptr) y = _mm512_mul_ps(y, gl[q0 / kLanes].load(gplane, gend));
    store_output<T>(dst + q0, res == nullptr ? nullptr : res + q0, lanes, y);
  }
}

template <typename T, Act A>
using DepthwiseFn = void (*)(const float*, typename T::elem*, const typename T::elem*, int64_t, int64_t, const float*,
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
              void* scratch) {
  using elem = typename T::elem;
  const int64_t C = p.C, H = p.H, W = p.W, HW = H * W, I = p.I, M = p.M, K = p.K, pad = K / 2;
  const int64_t pstride = plane_stride(p);
  uint32_t* panel = static_cast<uint32_t*>(scratch);
  float* planes = static_cast<float*>(scratch) + panel_words(p) + plane_slack(W, K);
  const elem* x = static_cast<const elem*>(p.x);
  elem* out_all = static_cast<elem*>(p.out);
  const elem* res_all = static_cast<const elem*>(p.residual);
  const DepthwiseFn<T, A> depthwise = depthwise_for<T, A>(K);
  const OutputMap om(p);
  thread_local std::vector<GateLanes> band_lanes;  // per thread, reused across items and calls

  const int64_t own = r1 - r0;
  const int64_t top = r0 - pad, a0 = imax(0, top), a1 = imin(H, r1 + pad), PA = (a1 - a0) * W;
  Item<T> it;
  it.PA = PA;
  it.P = g * PA;
  if constexpr (T::pairs) {
    pack_bf16_pairs(x, C, HW, n0, g, a0 * W, PA, panel);
    it.b = panel;
    it.ldb = it.P;
  } else if constexpr (T::widen) {
    pack_bf16_widened(x, C, HW, n0, g, a0 * W, PA, reinterpret_cast<float*>(panel));
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
  for (int64_t t = 0; t < kMR * g; ++t) {
    float* pl = planes + (t / g) * p.G * pstride + (t % g) * pstride;
    if (zero_top > 0) std::memset(pl, 0, zero_top * sizeof(float));
    if (plane_end > zero_bottom_from) std::memset(pl + zero_bottom_from, 0, (plane_end - zero_bottom_from) * sizeof(float));
  }

  for (int64_t m0 = c0; m0 < c1; m0 += kMR) {
    if (m0 >= p.n_primary && m0 * M >= p.n_cheap) break;  // this and every later channel is sliced away
    const int64_t mr = imin(kMR, c1 - m0);
    for (int64_t s0 = 0; s0 < it.P; s0 += kNV * kLanes) {
      const int64_t vecs = imin(kNV, (it.P - s0 + kLanes - 1) / kLanes);
      const __mmask16 tail = lane_range(0, it.P - (s0 + (vecs - 1) * kLanes));
      tile_for<T, A>(mr, vecs)(p, it, m0, s0, tail);
    }
    // Cheap channels of these primaries, from the planes while they are in L1.
    for (int64_t r = 0; r < mr; ++r) {
      const int64_t c = m0 + r;
      for (int64_t j = c * M; j < imin((c + 1) * M, p.n_cheap); ++j) {
        for (int64_t i = 0; i < g; ++i) {
          const float* centre = planes + (r * p.G + i) * pstride + pad * W;
          const int64_t off = (n0 + i) * om.image + (j + om.cheap_shift) * om.plane + r0 * W + om.pixel_shift;
          const float* gplane = p.gate == nullptr ? nullptr : p.gate + ((n0 + i) * p.OC + I + j) * p.gate_plane;
          depthwise(centre, out_all + off, res_all == nullptr ? nullptr : res_all + off, own * W, W,
                    p.w2 + j * K * K, p.b2[j], p.colmask, gplane, band_lanes.data(), p.gate_end);
        }
      }
    }
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
  if (p.bf16 && p.bf16_dot) {
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
                           void* scratch) {
  with_types(p, [&](auto t, auto a) { run_item<decltype(t), decltype(a)::value>(p, n, 1, c0, c1, r0, r1, scratch); });
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
void avx512_forward_region(const ForwardAvx512Params&, int64_t, int64_t, int64_t, int64_t, int64_t, void*) {}
void avx512_depthwise_taps(const float*, float*, int64_t, int64_t, int64_t, const float*, const uint16_t*) {}
#endif

}  // namespace cpu
}  // namespace ghostkernels
