// The AVX-512 Ghost-module forward's parameters for one call (kernel_ghost_forward_avx512.h) and the buffers they
// point into: the weights as the kernel reads them and the gated module's float map with its index table. Shared
// by the Ghost-module launcher (launch_ghost_forward.cpp, which defines the constructor) and the fused bottleneck
// front (launch_ghost_dw_front.cpp); each fills in the output, the work plan and the column masks itself.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "../ghost_module_check.h"
#include "kernel_ghost_forward_avx512.h"
#include "util_float_weights.h"

namespace ghostkernels {
namespace cpu {

class ForwardAvx512Call {
 public:
  // x float32 or bfloat16, contiguous NCHW; the weights contiguous; gate undefined, or the gated module's DFC map
  // [N, OC, Hg, Wg] (any floating dtype; converted to float32 where it is not).
  ForwardAvx512Call(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                    const at::Tensor& b2, const GhostDims& d, const at::Tensor& gate);
  ForwardAvx512Call(const ForwardAvx512Call&) = delete;
  ForwardAvx512Call& operator=(const ForwardAvx512Call&) = delete;

  // Everything but out, residual, the work plan (G, Ib, B, groups, blocks, bands), colmask and the output addressing.
  ForwardAvx512Params prm{};

 private:
  at::Tensor w1k_, gatef_;
  std::optional<FloatWeights> w1f_;
  FloatWeights b1f_, w2f_, b2f_;
  std::vector<int32_t> gate_index_;
};

}  // namespace cpu
}  // namespace ghostkernels
