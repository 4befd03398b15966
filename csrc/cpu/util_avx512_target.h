// Whether this build compiles the AVX-512 kernels, and the target their code is compiled for: one definition for
// every kernel_*_avx512.cpp.
//
// GK_AVX512_KERNELS is 1 where the compiler can build them (x86-64 GCC or Clang; <immintrin.h> is then included),
// else 0 and each file compiles stubs that are never called (its availability check says no). Only the code between
// GK_AVX512_REGION_BEGIN and GK_AVX512_REGION_END is compiled for AVX-512, so that the rest of the library still
// loads and runs on CPUs without it. The region's code has internal linkage (see util_avx512_common.h, included
// right after GK_AVX512_REGION_BEGIN), apart from each file's exported launch functions.
//
// avx512bf16 only adds the bf16 instructions of the bfloat16 instantiations; code without them still runs on
// AVX-512 CPUs without BF16.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GK_AVX512_KERNELS 1
#include <immintrin.h>
#else
#define GK_AVX512_KERNELS 0
#endif

#define GK_AVX512_REGION_BEGIN \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma\")")
#define GK_AVX512_REGION_END _Pragma("GCC pop_options")
