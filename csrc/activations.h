// Activation functions and their derivatives, shared by every backend.
//
// This header includes no torch header so that the CUDA kernel files (which are compiled without torch) and the
// CPU kernels use exactly the same math. Derivatives follow PyTorch's own backward formulas at the kinks
// (relu'(0) = 0, relu6'(0) = relu6'(6) = 0, hardswish'(-3) = 0, hardswish'(3) = 1) so that gradients match eager.
#pragma once

#include <cmath>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define GK_HD __host__ __device__ __forceinline__
#else
#define GK_HD inline
#endif

namespace ghostkernels {

// The values are the activation codes, part of the ABI between the bindings and the kernels; the names are in
// op_layouts.h (kActNames), which checks that they agree.
enum class Act : int { Identity = 0, ReLU = 1, ReLU6 = 2, SiLU = 3, HardSwish = 4 };

GK_HD float gk_exp(float v) { return expf(v); }
GK_HD double gk_exp(double v) { return exp(v); }

// act(z)
template <typename T>
GK_HD T act_forward(Act a, T z) {
  switch (a) {
    case Act::ReLU:
      return z > T(0) ? z : T(0);
    case Act::ReLU6:
      return z > T(0) ? (z < T(6) ? z : T(6)) : T(0);
    case Act::SiLU:
      return z / (T(1) + gk_exp(-z));
    case Act::HardSwish: {
      T r = z + T(3);
      r = r > T(0) ? (r < T(6) ? r : T(6)) : T(0);
      return z * r / T(6);
    }
    case Act::Identity:
    default:
      return z;
  }
}

// d act(z) / dz, evaluated from the pre-activation z.
template <typename T>
GK_HD T act_derivative(Act a, T z) {
  switch (a) {
    case Act::ReLU:
      return z > T(0) ? T(1) : T(0);
    case Act::ReLU6:
      return (z > T(0) && z < T(6)) ? T(1) : T(0);
    case Act::SiLU: {
      T s = T(1) / (T(1) + gk_exp(-z));
      return s * (T(1) + z * (T(1) - s));
    }
    case Act::HardSwish:
      return z <= T(-3) ? T(0) : (z < T(3) ? z / T(3) + T(0.5) : T(1));
    case Act::Identity:
    default:
      return T(1);
  }
}

// Calls f(std::integral_constant<Act, a>{}) so that kernels can be instantiated per activation and the switch
// above folds away in their inner loops.
template <typename F>
inline void dispatch_act(Act a, F&& f) {
  switch (a) {
    case Act::ReLU: f(std::integral_constant<Act, Act::ReLU>{}); break;
    case Act::ReLU6: f(std::integral_constant<Act, Act::ReLU6>{}); break;
    case Act::SiLU: f(std::integral_constant<Act, Act::SiLU>{}); break;
    case Act::HardSwish: f(std::integral_constant<Act, Act::HardSwish>{}); break;
    case Act::Identity:
    default: f(std::integral_constant<Act, Act::Identity>{}); break;
  }
}

}  // namespace ghostkernels
