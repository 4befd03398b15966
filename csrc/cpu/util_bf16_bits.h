// bfloat16 <-> float conversions on raw 16-bit words, written so that plain loops over them vectorize.
//
// c10::BFloat16's own conversions are correct but, in `#pragma omp simd` loops of the generic (non-intrinsics)
// kernels, kept GhostNet's squeeze-excite blocks 1.5-2x slower in bfloat16 than in float32 (bench/NOTES.md, entry
// 25). Here a bfloat16 is handled as the uint16_t it stores: widening is a shift, narrowing rounds to nearest even
// (as c10 does) and keeps NaN a NaN. For any other type the helpers are plain casts, so a kernel templated on
// raw_type<scalar_t> serves every dtype.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace ghostkernels {
namespace cpu {

// The type a kernel reads and writes for elements of scalar_t: uint16_t for bfloat16, scalar_t otherwise.
template <typename scalar_t>
using raw_type = std::conditional_t<std::is_same_v<scalar_t, c10::BFloat16>, uint16_t, scalar_t>;

template <typename acc_t, typename raw_t>
inline acc_t widen(raw_t v) {
  if constexpr (std::is_same_v<raw_t, uint16_t>) {
    const uint32_t u = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
  } else {
    return static_cast<acc_t>(v);
  }
}

template <typename raw_t, typename acc_t>
inline raw_t narrow(acc_t v) {
  if constexpr (std::is_same_v<raw_t, uint16_t>) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof(u));
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;  // round to nearest even
    return static_cast<uint16_t>(v != v ? 0x7FC0u : rounded);         // NaN stays NaN
  } else {
    return static_cast<raw_t>(v);
  }
}

}  // namespace cpu
}  // namespace ghostkernels
