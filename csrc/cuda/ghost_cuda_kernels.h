// The slices of the kernel table (ghost_cuda_select.cuh), one per translation unit, for the launchers.
#pragma once

#include "ghost_cuda_params.cuh"

namespace ghostkernels {
namespace cuda {

using KernelFn = void (*)(const KernelParams);

KernelFn forward_kernel_f16(int K, Act a, Layout L, bool gated);
KernelFn forward_kernel_bf16(int K, Act a, Layout L, bool gated);
KernelFn forward_kernel_f32(int K, Act a, Layout L, bool gated);
KernelFn forward_kernel_tf32(int K, Act a, Layout L, bool gated);
KernelFn backward_kernel_f16(int K, Act a, Layout L);
KernelFn backward_kernel_bf16(int K, Act a, Layout L);
KernelFn backward_kernel_f32(int K, Act a, Layout L);
KernelFn backward_kernel_tf32(int K, Act a, Layout L);

// The instantiation for a call's dtype, math, k, activation and layout (`gated`: the forward with the gate map).
inline KernelFn pick_kernel(bool backward, const GhostShape& s, Layout L, bool gated = false) {
  const int K = int(s.K);
  switch (s.dtype) {
    case DType::Float16: return backward ? backward_kernel_f16(K, s.act, L) : forward_kernel_f16(K, s.act, L, gated);
    case DType::BFloat16:
      return backward ? backward_kernel_bf16(K, s.act, L) : forward_kernel_bf16(K, s.act, L, gated);
    case DType::Float32:
    default:
      if (s.fp32_math == Fp32Math::TF32)
        return backward ? backward_kernel_tf32(K, s.act, L) : forward_kernel_tf32(K, s.act, L, gated);
      return backward ? backward_kernel_f32(K, s.act, L) : forward_kernel_f32(K, s.act, L, gated);
  }
}

}  // namespace cuda
}  // namespace ghostkernels
