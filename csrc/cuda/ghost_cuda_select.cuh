// The table from a call's run-time choices (k, activation, layout) to a compiled kernel instantiation. Each
// csrc/cuda/ghost_{forward,backward}_{f16,bf16,f32,tf32}.cu instantiates one (direction, element type, math) slice
// of it, so that a parallel build (MAX_JOBS) compiles the slices side by side; the launchers reach them through
// ghost_cuda_kernels.h. The host emulator includes this header directly and instantiates every slice.
#pragma once

#include "ghost_backward_kernel.cuh"
#include "ghost_forward_kernel.cuh"

namespace ghostkernels {
namespace cuda {

using KernelFn = void (*)(const KernelParams);

template <bool kBackward, typename T, bool kTF32, int KT, Act A, Layout L>
KernelFn kernel_instance() {
  if constexpr (kBackward)
    return ghost_backward_kernel<T, kTF32, KT, int(A), L>;
  else
    return ghost_forward_kernel<T, kTF32, KT, int(A), L>;
}

// One instantiation per activation, except for the NHWC fallback (any channel count, any alignment), which reads
// the activation at run time: it is rare enough not to be worth five copies of the code (and of the build time).
template <bool kBackward, typename T, bool kTF32, int KT, Layout L>
KernelFn kernel_for_act(Act a) {
  if constexpr (L == Layout::NHWC) {
    return kernel_instance<kBackward, T, kTF32, KT, kActRuntime, L>();
  } else {
    switch (a) {
      case Act::ReLU: return kernel_instance<kBackward, T, kTF32, KT, Act::ReLU, L>();
      case Act::ReLU6: return kernel_instance<kBackward, T, kTF32, KT, Act::ReLU6, L>();
      case Act::SiLU: return kernel_instance<kBackward, T, kTF32, KT, Act::SiLU, L>();
      case Act::HardSwish: return kernel_instance<kBackward, T, kTF32, KT, Act::HardSwish, L>();
      case Act::Identity:
      default: return kernel_instance<kBackward, T, kTF32, KT, Act::Identity, L>();
    }
  }
}

template <bool kBackward, typename T, bool kTF32, int KT>
KernelFn kernel_for_layout(Act a, Layout L) {
  switch (L) {
    case Layout::NHWCVec: return kernel_for_act<kBackward, T, kTF32, KT, Layout::NHWCVec>(a);
    case Layout::NHWC: return kernel_for_act<kBackward, T, kTF32, KT, Layout::NHWC>(a);
    case Layout::NCHW:
    default: return kernel_for_act<kBackward, T, kTF32, KT, Layout::NCHW>(a);
  }
}

// k = 3 has its own fully unrolled instantiations; k in {1, 5, 7} shares the run-time-k ones.
template <bool kBackward, typename T, bool kTF32>
KernelFn select_kernel(int K, Act a, Layout L) {
  return K == 3 ? kernel_for_layout<kBackward, T, kTF32, 3>(a, L) : kernel_for_layout<kBackward, T, kTF32, 0>(a, L);
}

}  // namespace cuda
}  // namespace ghostkernels
