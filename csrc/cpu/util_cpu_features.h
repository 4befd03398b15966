// Which AVX-512 extensions this CPU has, probed once per file that asks: the availability checks of the AVX-512
// kernel files (kernel_ghost_forward_avx512, kernel_depthwise_avx512, kernel_gemv_avx512) share it. No torch header,
// like those files.
//
// Internal linkage on purpose (see util_avx512_common.h): include and call it outside a file's AVX-512 region
// (util_avx512_target.h), so that no copy of it is ever compiled with AVX-512 instructions.
#pragma once

namespace ghostkernels {
namespace cpu {
namespace {

// AVX-512 F/BW/VL/DQ (every AVX-512 kernel here needs them), and with `bf16` also AVX-512 BF16.
inline bool cpu_has_avx512(bool bf16) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  static const bool ok_bf16 = ok && __builtin_cpu_supports("avx512bf16");
  return bf16 ? ok_bf16 : ok;
#else
  (void)bf16;
  return false;
#endif
}

}  // namespace
}  // namespace cpu
}  // namespace ghostkernels
