// The AVX-512 depthwise convolution with 16 channels in the vector lanes, for small maps (and mid-size ones with
// 5x5 or 7x7 taps): what kernel_depthwise_avx512.h computes (same params, same results bit for bit), another layout
// inside.
//
// Why: on GhostNet's 14x14 -> 7x7 and 7x7 maps the plane kernel fills 49 of 64 lanes per output plane, masks most
// tap loads at row ends, and splits every input plane into stride phases first (a pass as long as the taps); the
// stride-2 convolutions there took 2.5-3x OpenVINO's time, which keeps channels in the lanes throughout
// (bench/NOTES.md entry 64). Here an item is 16 channels of one image: their input planes are transposed into a
// zero-bordered pixel-major tile in scratch ([H + 2p][W + 2p][16 channels], float), every output pixel is then K*K
// fused multiply-adds of one aligned tile load by one vector of 16 channel weights (no masks, no phase split: stride
// 2 is a pixel step of 2), and the output pixels are transposed back into the 16 output planes as they are stored.
// The transposes run over the planes' flat pixels, 16 (float32) or 32 (bfloat16, two pixels per 32-bit lane) per
// 16 x 16 transpose.
//
// Numerics: the plane kernel's exactly (bias, then the K*K taps in row-major order, float32; padding taps add
// 0 * w, as that kernel's masked loads do).
#pragma once

#include <cstdint>

#include "kernel_depthwise_avx512.h"

namespace ghostkernels {
namespace cpu {

// Whether the lanes kernel takes p: as avx512_depthwise_available, K > 1, and the bordered tile of one item
// ((H + 2p) * (W + 2p) * 64 bytes) at most kDepthwiseLanesMaxTileBytes for 3x3 taps (it then stays in L1), or
// kDepthwiseLanesMaxTileBytesK5 for 5x5 and 7x7 ones (in L2). The transposes cost per input pixel, the taps gain
// per output pixel: measured (bench/NOTES.md entry 64), 3x3 stride-2 convolutions of 28x28 maps were 9% faster on
// 240 channels and 5% slower on 40 (the last group 8 of 16 lanes), 5x5 ones on 56x56 maps 6-22% faster.
bool avx512_depthwise_lanes_applies(const DepthwiseAvx512Params& p);

// 14x14 maps with 5x5 taps: 18 * 18 * 64 bytes = 20.25 KiB, in a 32 KiB L1 with the output buffer beside it.
constexpr int64_t kDepthwiseLanesMaxTileBytes = 24 * 1024;
constexpr int64_t kDepthwiseLanesMaxTileBytesK5 = 256 * 1024;

// Items of N images: (group of 16 channels, image), group-major, so that a thread's consecutive items share their
// weights (regrouped per group into scratch when the group changes); a group may hold fewer than 16 channels.
inline int64_t avx512_depthwise_lanes_items(const DepthwiseAvx512Params& p, int64_t N) { return N * ((p.C + 15) / 16); }

// Per-thread scratch, in floats (any contents: the kernel zeroes the tile's border itself).
int64_t avx512_depthwise_lanes_scratch_floats(const DepthwiseAvx512Params& p);

// Computes items [begin, end) of N images (threads may run disjoint ranges).
void avx512_depthwise_lanes(const DepthwiseAvx512Params& p, int64_t N, int64_t begin, int64_t end, float* scratch);

}  // namespace cpu
}  // namespace ghostkernels
