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

GK_NEAREST_HD inline int64_t nearest_source_index(int64_t i, int64_t in, int64_t out) {
  if (out == in) return i;
  if (out == 2 * in) return i >> 1;
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  const int64_t src = static_cast<int64_t>(floorf(static_cast<float>(i) * scale));
  return src < in - 1 ? src : in - 1;
}

}  // namespace ghostkernels

#undef GK_NEAREST_HD
