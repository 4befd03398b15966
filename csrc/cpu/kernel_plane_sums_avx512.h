// The sum of each contiguous plane of a float32 or bfloat16 tensor, on AVX-512: the squeeze-excite's means
// (launch_squeeze_excite.cpp) and the head's global average pool (launch_mean_hw.cpp). A launch function, no torch.
//
// Why: both ran a compiler-vectorized loop per plane, whose prologue, epilogue and horizontal sum were most of the
// work on GhostNet's 7x7 planes (49 elements): the means of a 960-channel squeeze-excite at batch 4 took ~56 us
// against ~4 us to read the planes from L2 (bench/NOTES.md entry 64). Here each plane is whole-vector loads (the
// last masked) into one accumulator, and 16 planes' accumulators are reduced together by one 16 x 16 transpose and
// 15 adds, a few instructions per plane.
//
// Numerics: float32 accumulation, lane l summing elements l, l + 16, ... of the plane, then the 16 lanes in a tree
// order; bfloat16 is widened exactly. Differs from a sequential sum by rounding only.
#pragma once

#include <cstdint>

namespace ghostkernels {
namespace cpu {

// Whether this CPU runs the kernel: AVX-512 F/BW/VL/DQ (bfloat16 needs nothing more).
bool avx512_plane_sums_available();

// sums[p] = sum of the HW elements of plane p (x + p * HW) for p in [begin, end); x is float32, or raw bfloat16 words
// where bf16. Threads may run disjoint ranges.
void avx512_plane_sums(bool bf16, const void* x, int64_t HW, int64_t begin, int64_t end, float* sums);

}  // namespace cpu
}  // namespace ghostkernels
