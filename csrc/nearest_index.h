// Nearest-neighbour upsampling's source index, as PyTorch computes it (F.interpolate(mode='nearest') with a size and
// no scale factor; ATen's nearest_idx): output index i of a dimension resized from `in` to `out` reads input index
//   i                                    when out == in,
//   i >> 1                               when out == 2 * in,
//   min(floor(i * (float(in) / out)), in - 1)   otherwise (the scale in float, as ATen rounds it).
// A 3-row map upsampled to 7 rows reads rows 0, 0, 0, 1, 1, 2, 2. The gated Ghost module's kernels (CPU and CUDA)
// use it to find the DFC map element of each output pixel. Torch-free, for host and device code.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GK_NEAREST_HD __host__ __device__
#else
#define GK_NEAREST_HD
#endif

namespace ghostkernels {

// The scale of the general case, float(in) / float(out): loop-invariant, so a kernel computes it once per call
// and calls the scaled form per pixel. The CUDA forward gets it from the host as a kernel parameter: the device
// code is built with --use_fast_math, whose division is not the correctly rounded one ATen's host code uses.
GK_NEAREST_HD inline float nearest_scale(int64_t in, int64_t out) {
  return static_cast<float>(in) / static_cast<float>(out);
}

// The same index with the scale given (scale == nearest_scale(in, out)); Int is int64_t, or int where in, out and
// i fit (the CUDA forward's 32-bit pixel coordinates).
template <typename Int>
GK_NEAREST_HD inline Int nearest_source_index_scaled(Int i, Int in, Int out, float scale) {
  if (out == in) return i;
  if (out - in == in) return i >> 1;  // out == 2 * in, without overflow
  const Int src = static_cast<Int>(floorf(static_cast<float>(i) * scale));
  return src < in - 1 ? src : in - 1;
}

GK_NEAREST_HD inline int64_t nearest_source_index(int64_t i, int64_t in, int64_t out) {
  return nearest_source_index_scaled<int64_t>(i, in, out, nearest_scale(in, out));
}

}  // namespace ghostkernels

#undef GK_NEAREST_HD
