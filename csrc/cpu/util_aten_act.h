// y = act(y) in place with ATen's ops: how the launchers' fallback paths (ATen's convolution or addmm, where no
// kernel of ours applies: float64, CPUs without AVX-512) apply the activation after the op ATen ran.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/hardswish.h>
#include <ATen/ops/silu.h>

#include "../activations.h"

namespace ghostkernels {
namespace cpu {

inline void apply_act_(at::Tensor& y, Act act) {
  switch (act) {
    case Act::ReLU: y.relu_(); break;
    case Act::ReLU6: y.clamp_(0, 6); break;
    case Act::SiLU: at::silu_(y); break;
    case Act::HardSwish: at::hardswish_(y); break;
    case Act::Identity:
    default: break;
  }
}

}  // namespace cpu
}  // namespace ghostkernels
