// The table from a call's run-time choices (k, activation, layout, gated or not) to a compiled kernel
// instantiation. Each
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
    return ghost_forward_kernel<T, kTF32, KT, int(A), L, false>;
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

// The gated forward (GhostNetV2's ghost_module_gated) is compiled for 5 of the 22 combinations only, so that the
// forward translation units grow by a quarter rather than double: GhostNetV2's own (k = 3, ReLU: every gated
// Ghost module of timm's GhostNetV2 and V3) in NCHW and NHWCVec, as fast as the ungated kernels; every other call
// (another activation or k, the one-element NHWC layout) on the run-time-k, run-time-activation instantiation of
// its layout (run-time k covers k = 3 too, its window loops predicated instead of unrolled).
template <typename T, bool kTF32>
KernelFn select_gated_forward(int K, Act a, Layout L) {
  constexpr int kRelu = int(Act::ReLU), kRt = int(kActRuntime);
  if (K == 3 && a == Act::ReLU && L == Layout::NHWCVec)
    return ghost_forward_kernel<T, kTF32, 3, kRelu, Layout::NHWCVec, true>;
  if (K == 3 && a == Act::ReLU && L == Layout::NCHW)
    return ghost_forward_kernel<T, kTF32, 3, kRelu, Layout::NCHW, true>;
  switch (L) {
    case Layout::NHWCVec: return ghost_forward_kernel<T, kTF32, 0, kRt, Layout::NHWCVec, true>;
    case Layout::NHWC: return ghost_forward_kernel<T, kTF32, 0, kRt, Layout::NHWC, true>;
    case Layout::NCHW:
    default: return ghost_forward_kernel<T, kTF32, 0, kRt, Layout::NCHW, true>;
  }
}

// The forward kernel of a call, gated or not (what ghost_forward_{f16,bf16,f32,tf32}.cu export).
template <typename T, bool kTF32>
KernelFn select_forward(int K, Act a, Layout L, bool gated) {
  return gated ? select_gated_forward<T, kTF32>(K, a, L) : select_kernel<false, T, kTF32>(K, a, L);
}

}  // namespace cuda
}  // namespace ghostkernels
