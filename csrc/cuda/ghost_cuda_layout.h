// Block geometry and shared-memory layout of the CUDA Ghost-module kernels, shared by the host planner and the
// device code so that both agree on every offset. Torch-free and CUDA-free (plain C++ with __host__ __device__).
//
// A work unit is one channel chunk of `rows` x1 channels (kChunk = 32 in the backward; 32, 64 or 128 in the
// forward, two 16-row tensor-core tiles per 32) and one spatial tile of th x tw output pixels of one image. A block
// computes z1 = W1 . x for the tile plus a halo ("the GEMM rect", one column per pixel, padded to a multiple of 16
// columns), looping over the input channels in slices of kc through S = 2..4 shared-memory stages. The GEMM result
// lands in Z (float).
//
// Backward (make_layout): one unit per item of its persistent loop; the stages alias Z (they are done before Z is
// written):
//   shared memory = max(S A stages + S B stages, Z) + D + G2 + the chunk's depthwise weights/biases
//                   + a pixel table (one int64 per GEMM column)
// Forward (make_forward_layout): a block runs a contiguous range of units (a persistent grid, ghost_forward_kernel.cuh)
// and may keep, in addition:
//   - `overlap`: stages 0 .. S-2 disjoint from Z, so that the next unit's first S-1 slices are copied while this
//     unit's epilogue reads Z (stage S-1 still aliases Z: it is first written after the epilogue);
//   - `xres`: x resident, the rect's pixels x all C channels in one buffer X that the units of one tile share, so
//     that x is read once per tile instead of once per chunk (no B stages then: the slices land in X);
//   - two pixel tables (the next tile's is built while this tile's is still in use).
//
// Sizes that matter (16-bit, kc = 32, a 16x16 tile with k = 3, i.e. an 18x18 GEMM rect -> 336 columns):
//   A stage 32 x 40 halves = 2.5 KB, B stage 336 x 40 halves = 26 KB, Z = 32 x 340 floats = 42.5 KB,
//   so the backward block and the aliased forward need about 60 KB (S = 2), the overlapped forward about 85 KB.
//   A 7x7 image (9x9 rect -> 96 columns) has 10 KB stages and gets S = 4; its forward takes 128-channel units (the
//   8 warps as 4 row groups x 2 column groups) with x resident when C is small (160 channels: 32 KB of X).
#pragma once

#include <cstddef>

#if defined(__CUDACC__)
#define GK_LAYOUT_HD __host__ __device__ __forceinline__
#else
#define GK_LAYOUT_HD inline
#endif

namespace ghostkernels {
namespace cuda {

constexpr int kThreads = 256;                // 8 warps per block
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 32;                   // x1 channels per block: two m16 tensor-core tiles
constexpr int kColTilesPerWarp = 3;          // GEMM column tiles (16 pixels each) one warp accumulates
constexpr int kMaxGemmCols = kWarps * kColTilesPerWarp * 16;  // 384 columns (halo pixels) per block
constexpr int kVX = 4;                       // depthwise outputs one thread computes along a row
constexpr int kMaxK = 7;                     // largest depthwise kernel the kernels accept
constexpr int kMaxRows = 128;                // x1 channels of the forward's tallest work unit (4 x kChunk)
constexpr int kVecBytes = 16;                // one vector access: 8 halves / bfloat16s or 4 floats

// The memory layout a kernel instantiation is compiled for (a template parameter, so that no per-element code
// tests it):
//   NCHW    [N, C, H, W] tensors;
//   NHWC    channels_last tensors, any channel count: one element per access (the fallback);
//   NHWCVec channels_last with ratio 2 (M = 1), out_channels a multiple of the vector (16 bytes), init a multiple
//           of 4 and 16-byte aligned tensors: the epilogues move one 16-byte vector of channels per thread and
//           access (4-channel, 8-byte accesses at the edges of a block's channel range), see ghost_forward_kernel.cuh.
enum class Layout : int { NCHW = 0, NHWC = 1, NHWCVec = 2 };

// Input channels per pipeline stage: 64 bytes of every pixel (16 floats or 32 halves).
GK_LAYOUT_HD int stage_kc(int elem_size) { return elem_size == 4 ? 16 : 32; }
// Row pitch of a stage in elements: kc plus 16 bytes, so that wmma's 32-byte alignment rules hold and the rows
// of a 16x16 fragment fall into different banks.
GK_LAYOUT_HD int stage_ld(int elem_size) { return stage_kc(elem_size) + 16 / elem_size; }
GK_LAYOUT_HD int round_up(int v, int m) { return (v + m - 1) / m * m; }
GK_LAYOUT_HD int gemm_cols(int rect_pixels) { return round_up(rect_pixels + kVX, 16); }  // + kVX: see Z below

// Where each buffer of a block lives, in bytes from the start of dynamic shared memory.
struct SmemLayout {
  int ld_stage = 0;  // row pitch of A and B stages (elements)
  int cols = 0;      // Z columns and pixel-table entries (rect pixels + kVX slack, multiple of 16)
  int gcols = 0;     // GEMM columns (rect pixels, multiple of 16; <= cols): B stage / X rows
  int rows = kChunk; // x1 channels per work unit: 32 (backward), 32, 64 or 128 (forward on tensor cores)
  int wc = kWarps;   // warps per row group of the GEMM: 8 warps = (rows / 32) row groups x wc column groups
  int ldz = 0;       // Z pitch in floats: NCHW Z[i][q] (pitch cols + 4), NHWC Z[q][i] (pitch rows + 4)
  int own = 0;       // th * tw + kVX: pixels of the D buffer (backward)
  int ring1 = 0;     // (th + 2p)(tw + 2p) + kVX: pixels of the G2 buffer (backward)
  int cheap = 0;     // rows * M cheap channels of the chunk
  int stages = 2;                           // pipeline depth of the K loop (2..4)
  bool overlap = false;                     // forward: stages 0..S-2 disjoint from Z (next unit copied early)
  bool xres = false;                        // forward: x resident in X for all chunks of a tile
  int kpad = 0;                             // xres: channels X holds per pixel (C rounded up to the MMA's k step)
  int ldx = 0;                              // xres: X pitch in elements (kpad + one 16-byte vector)
  unsigned a0 = 0, a_step = 0;              // A stages (W1 slices) at a0 + s * a_step
  unsigned b0 = 0, b_step = 0;              // B stages (x slices) at b0 + s * b_step (unused with xres)
  unsigned z = 0;                           // x1 (forward) / z1 -> x1 (backward), float
  unsigned x = 0;                           // xres: X[gcols][ldx], x's rect pixels with all their channels
  unsigned d = 0;                           // act'(z1) on own pixels, float (backward)
  unsigned g2 = 0;                          // dL/dz2 on the ring-1 rect, float (backward)
  unsigned w2 = 0, bias2 = 0, bias1 = 0;    // the chunk's w_cheap (tap-major: [k*k][cheap]), b_cheap, b_primary
  unsigned pix = 0;                         // the rect's pixel table, one int64 per Z column
  unsigned pix_step = 0;                    // forward: bytes from the first pixel table to the second
  unsigned total = 0;
};

GK_LAYOUT_HD unsigned align128(unsigned v) { return (v + 127u) / 128u * 128u; }

// Stages while they fit in the larger of Z and 40 KB: deep pipelines for small rects (whose slices are small, so
// more of them must be in flight to cover the memory latency), 2 for big ones.
GK_LAYOUT_HD int preferred_stages(unsigned stage_bytes, unsigned z_bytes) {
  const unsigned room = z_bytes > 40960u ? z_bytes : 40960u;
  return 4 * stage_bytes <= room ? 4 : 3 * stage_bytes <= room ? 3 : 2;
}

GK_LAYOUT_HD unsigned z_buffer_bytes(bool channels_last, int cols, int rows) {
  return align128(unsigned(channels_last ? cols * (rows + 4) : rows * (cols + 4)) * unsigned(sizeof(float)));
}

// Z keeps kVX columns of slack past the rect (gemm_cols adds them): a thread's depthwise window may run up to
// kVX - 1 pixels past the end of the rect's last row; those reads only feed outputs that are never stored, but they
// must stay inside the buffer (and read finite zeros, which the zero-filled B columns guarantee).
GK_LAYOUT_HD SmemLayout make_layout(int elem_size, bool channels_last, int rect_pixels, bool backward, int th,
                                    int tw, int p, int M, int KK) {
  SmemLayout L;
  L.ld_stage = stage_ld(elem_size);
  L.cols = gemm_cols(rect_pixels);
  L.gcols = L.cols;
  L.ldz = channels_last ? kChunk + 4 : L.cols + 4;
  L.cheap = kChunk * M;
  const unsigned a_bytes = align128(unsigned(kChunk * L.ld_stage * elem_size));
  const unsigned b_bytes = align128(unsigned(L.cols * L.ld_stage * elem_size));
  const unsigned z_bytes = z_buffer_bytes(channels_last, L.cols, kChunk);
  const unsigned stage_bytes = a_bytes + b_bytes;
  L.stages = preferred_stages(stage_bytes, z_bytes);
  L.a0 = 0;
  L.a_step = a_bytes;
  L.b0 = unsigned(L.stages) * a_bytes;
  L.b_step = b_bytes;
  L.z = 0;
  const unsigned stages = unsigned(L.stages) * stage_bytes;
  unsigned off = stages > z_bytes ? stages : z_bytes;
  if (backward) {
    L.own = th * tw + kVX;
    L.ring1 = (th + 2 * p) * (tw + 2 * p) + kVX;
    L.d = off;
    off += align128(unsigned(kChunk * L.own) * unsigned(sizeof(float)));
    L.g2 = off;
    off += align128(unsigned(L.cheap * L.ring1) * unsigned(sizeof(float)));
  }
  L.w2 = off;
  off += align128(unsigned(L.cheap * KK) * unsigned(sizeof(float)));
  L.bias2 = off;
  off += align128(unsigned(L.cheap) * unsigned(sizeof(float)));
  L.bias1 = off;
  off += align128(unsigned(kChunk) * unsigned(sizeof(float)));
  L.pix = off;
  off += align128(unsigned(L.cols) * 8u);
  L.total = off;
  return L;
}

// Warps per row group for a unit of `rows` channels: the 8 warps form rows/32 row groups of 2 16-row tiles, each
// warp accumulating kColTilesPerWarp column tiles, so a unit's GEMM covers at most kColTilesPerWarp * wc * 16
// columns (384, 192, 96 for 32, 64, 128 rows): 128-channel units fit a 7x7 image with k = 3 (a 9x9 rect, 96 columns).
GK_LAYOUT_HD int warp_col_groups(int rows) { return kWarps * kChunk / rows; }
GK_LAYOUT_HD int gemm_rect_cols(int rect_pixels) { return round_up(rect_pixels, 16); }
GK_LAYOUT_HD bool forward_gemm_fits(int rect_pixels, int rows) {
  return gemm_rect_cols(rect_pixels) <= kColTilesPerWarp * warp_col_groups(rows) * 16;
}

// The forward's layout for units of `rows` channels (32, 64, 128), x resident or streamed, with or without the
// overlap of the next unit's copies and the epilogue, and S stages; total = 0 when the GEMM does not fit.
//   overlap: [stages 0 .. S-2][stage S-1 | Z][X][weights][pixel tables]   (stage s = A_s then B_s)
//   else:    [stages 0 .. S-1 | Z][X][weights][pixel tables]
GK_LAYOUT_HD SmemLayout make_forward_layout(int elem_size, bool channels_last, int rect_pixels, int C, int M, int KK,
                                            int rows, bool xres, bool overlap, int stages) {
  SmemLayout L;
  if (!forward_gemm_fits(rect_pixels, rows) || stages < 2 || stages > 4) return L;
  L.ld_stage = stage_ld(elem_size);
  L.cols = gemm_cols(rect_pixels);
  L.gcols = gemm_rect_cols(rect_pixels);
  L.rows = rows;
  L.wc = warp_col_groups(rows);
  L.ldz = channels_last ? rows + 4 : L.cols + 4;
  L.cheap = rows * M;
  L.stages = stages;
  L.overlap = overlap;
  L.xres = xres;
  const unsigned a_bytes = align128(unsigned(rows * L.ld_stage * elem_size));
  const unsigned b_bytes = xres ? 0u : align128(unsigned(L.gcols * L.ld_stage * elem_size));
  const unsigned z_bytes = z_buffer_bytes(channels_last, L.cols, rows);
  const unsigned step = a_bytes + b_bytes;
  L.a0 = 0;
  L.b0 = a_bytes;
  L.a_step = L.b_step = step;
  unsigned off;
  if (overlap) {
    L.z = unsigned(stages - 1) * step;
    off = L.z + (z_bytes > step ? z_bytes : step);
  } else {
    L.z = 0;
    const unsigned all = unsigned(stages) * step;
    off = all > z_bytes ? all : z_bytes;
  }
  if (xres) {
    // The MMA's k step (16 for 16-bit types, 8 for TF32): a slice's steps past kpad are skipped, not zero-filled.
    L.kpad = round_up(C, elem_size == 4 ? 8 : 16);
    L.ldx = L.kpad + 16 / elem_size;  // pitch = 16 bytes x an odd number: conflict-free 8-row fragment loads
    L.x = off;
    off += align128(unsigned(L.gcols * L.ldx * elem_size));
  }
  L.w2 = off;
  off += align128(unsigned(L.cheap * KK) * unsigned(sizeof(float)));
  L.bias2 = off;
  off += align128(unsigned(L.cheap) * unsigned(sizeof(float)));
  L.bias1 = off;
  off += align128(unsigned(rows) * unsigned(sizeof(float)));
  L.pix = off;
  L.pix_step = align128(unsigned(L.cols) * 8u);
  off += 2 * L.pix_step;
  L.total = off;
  return L;
}

// A launch's tiling: tiles of th x tw output pixels; the GEMM rect adds `halo` pixels on every side (p = k/2 in the
// forward, 2p in the backward, whose depthwise gradient needs x1 two kernel radii away).
struct TileGeom {
  int th = 1, tw = 1;
  int tiles_y = 1, tiles_x = 1;
  int halo = 0;
  int rh = 1, rw = 1;  // GEMM rect: (th + 2 halo) x (tw + 2 halo)
  int chunks = 1;      // backward: ceil(I / kChunk); forward: units per tile, ceil(kept x1 channels / rows)
  long long ntiles() const { return (long long)tiles_y * tiles_x; }
};

}  // namespace cuda
}  // namespace ghostkernels
