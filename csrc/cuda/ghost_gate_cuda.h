// Host API of the CUDA kernels of GhostNetV2's DFC attention map, ghostkernels::dfc_gate (the map is multiplied into
// the gated Ghost module's output by the forward kernel itself: ForwardArgs::gate, ghost_cuda.h). Torch-free like
// ghost_cuda.h: raw pointers, sizes, a stream; the binding is ghost_gate_cuda.cpp, the kernels dfc_gate_kernel.cuh.
//
// Layouts: x and the map are NCHW-contiguous, or NHWC-contiguous with channels_last, with the
// canonical strides of their sizes; weights are contiguous, in the tensors' dtype. The launchers enqueue on the
// given stream, allocate nothing and never synchronize (safe in CUDA graph capture), and return the launch's error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ghost_cuda.h"

namespace ghostkernels {
namespace cuda {

// map = sigmoid(dw_v(dw_h(conv1x1(avg_pool2x2(x))))) for x [N, C, H, W] -> map [N, O, Hg, Wg] = H / 2, W / 2.
struct DfcGateArgs {
  DType dtype = DType::Float32;
  bool channels_last = false;
  int64_t N = 0, C = 0, H = 0, W = 0, O = 0, Hg = 0, Wg = 0, KH = 0, KV = 0;
  const void* x = nullptr;
  const void* w1 = nullptr;  // [O, C]
  const void* b1 = nullptr;  // [O]
  const void* wh = nullptr;  // [O, KH]
  const void* bh = nullptr;  // [O]
  const void* wv = nullptr;  // [O, KV]
  const void* bv = nullptr;  // [O]
  float* z = nullptr;        // scratch [N, O, Hg * Wg] float32: the 1x1 conv's output, fully overwritten
  void* map = nullptr;       // [N, O, Hg, Wg], fully overwritten
};

cudaError_t launch_dfc_gate(const DfcGateArgs& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace ghostkernels
