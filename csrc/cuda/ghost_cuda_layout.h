// Block geometry and shared-memory layout of the CUDA Ghost-module kernels, shared by the host planner and the
// device code so that both agree on every offset. Torch-free and CUDA-free (plain C++ with __host__ __device__).
//
// A block owns one channel chunk of kChunk x1 channels (two 16-row tensor-core tiles) and one spatial tile of
// th x tw output pixels of one image. It computes z1 = W1 . x for the tile plus a halo ("the GEMM rect", one
// column per pixel, padded to a multiple of 16 columns), looping over the input channels in slices of kc through
// S = 2..4 shared-memory stages. The GEMM result lands in Z (float), which reuses the stages' bytes once they are
// done.
//
//   shared memory = max(S A stages + S B stages, Z) [+ D + G2 in backward] + the chunk's depthwise weights/biases
//                   + a pixel table (one int64 per GEMM column)
//
// Sizes that matter (16-bit, kc = 32, a 16x16 tile with k = 3, i.e. an 18x18 GEMM rect -> 336 columns):
//   A stage 32 x 40 halves = 2.5 KB, B stage 336 x 40 halves = 26 KB, Z = 32 x 340 floats = 42.5 KB,
//   so the forward block needs about 60 KB (S = 2): three blocks per H100 SM by shared memory, two by registers.
//   A 7x7 image (9x9 rect -> 96 columns) has 10 KB stages and gets S = 4 (41 KB of stages).
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
  int cols = 0;      // GEMM columns (rect pixels + slack, multiple of 16)
  int ldz = 0;       // Z pitch in floats: NCHW Z[i][q] (pitch cols + 4), NHWC Z[q][i] (pitch kChunk + 4)
  int own = 0;       // th * tw + kVX: pixels of the D buffer (backward)
  int ring1 = 0;     // (th + 2p)(tw + 2p) + kVX: pixels of the G2 buffer (backward)
  int cheap = 0;     // kChunk * M cheap channels of the chunk
  int stages = 2;                           // pipeline depth of the K loop (2..4)
  unsigned a0 = 0, a_step = 0;              // A stages (W1 slices) at a0 + s * a_step (alias Z)
  unsigned b0 = 0, b_step = 0;              // B stages (x slices) at b0 + s * b_step (alias Z)
  unsigned z = 0;                           // x1 (forward) / z1 -> x1 (backward), float
  unsigned d = 0;                           // act'(z1) on own pixels, float (backward)
  unsigned g2 = 0;                          // dL/dz2 on the ring-1 rect, float (backward)
  unsigned w2 = 0, bias2 = 0, bias1 = 0;    // the chunk's w_cheap (tap-major: [k*k][cheap]), b_cheap, b_primary
  unsigned pix = 0;                         // the rect's pixel table, one int64 per GEMM column
  unsigned total = 0;
};

GK_LAYOUT_HD unsigned align128(unsigned v) { return (v + 127u) / 128u * 128u; }

// Z keeps kVX columns of slack past the rect (gemm_cols adds them): a thread's depthwise window may run up to
// kVX - 1 pixels past the end of the rect's last row; those reads only feed outputs that are never stored, but they
// must stay inside the buffer (and read finite zeros, which the zero-filled B columns guarantee).
GK_LAYOUT_HD SmemLayout make_layout(int elem_size, bool channels_last, int rect_pixels, bool backward, int th,
                                    int tw, int p, int M, int KK) {
  SmemLayout L;
  L.ld_stage = stage_ld(elem_size);
  L.cols = gemm_cols(rect_pixels);
  L.ldz = channels_last ? kChunk + 4 : L.cols + 4;
  L.cheap = kChunk * M;
  const unsigned a_bytes = align128(unsigned(kChunk * L.ld_stage * elem_size));
  const unsigned b_bytes = align128(unsigned(L.cols * L.ld_stage * elem_size));
  const unsigned z_bytes =
      align128(unsigned(channels_last ? L.cols * L.ldz : kChunk * L.ldz) * unsigned(sizeof(float)));
  // Up to 4 stages while they fit in the larger of Z and 40 KB: deep pipelines for small rects, 2 for big ones.
  const unsigned stage_bytes = a_bytes + b_bytes, room = z_bytes > 40960u ? z_bytes : 40960u;
  L.stages = 4 * stage_bytes <= room ? 4 : 3 * stage_bytes <= room ? 3 : 2;
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

// A launch's tiling: tiles of th x tw output pixels; the GEMM rect adds `halo` pixels on every side (p = k/2 in the
// forward, 2p in the backward, whose depthwise gradient needs x1 two kernel radii away).
struct TileGeom {
  int th = 1, tw = 1;
  int tiles_y = 1, tiles_x = 1;
  int halo = 0;
  int rh = 1, rw = 1;  // GEMM rect: (th + 2 halo) x (tw + 2 halo)
  int chunks = 1;      // ceil(I / kChunk)
  long long ntiles() const { return (long long)tiles_y * tiles_x; }
};

}  // namespace cuda
}  // namespace ghostkernels
