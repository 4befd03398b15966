// Host API of the CUDA kernels of the train-mode BatchNorm passes (ghost_bn_* in csrc/ghost_module.cpp, composed by
// ghostkernels/ops/train_bn.py): one params struct and one launcher per pass. Torch-free like ghost_cuda.h: raw
// pointers, sizes, a stream; the binding is ghost_bn_cuda.cpp, the kernels and their launch sequences
// ghost_bn_kernels.cuh, the launchers ghost_bn.cu.
//
// Layouts: x, z1, grad_out, out and grad_x are NCHW-contiguous, or NHWC-contiguous with channels_last, with the
// canonical strides of their sizes, in `dtype`; every per-channel vector, conv weight, statistic and sum is float32
// (the stats dtype of the three CUDA dtypes). The launchers enqueue on the given stream, allocate nothing (the
// caller passes `scratch` of bn_scratch_bytes(pass, args) bytes, 8-byte aligned, contents irrelevant) and never
// synchronize, so they are safe in CUDA graph capture. Reductions are deterministic: per-block partials combined
// in a fixed order (moments with Chan's update), no atomics.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ghost_cuda.h"

namespace ghostkernels {
namespace cuda {

enum class BnPass : int { Conv1x1Stats = 0, CheapStats = 1, ForwardOut = 2, BackwardReduce = 3, Backward = 4 };

// One BN stage as torch's batch_norm_elemt takes it (xhat = (z - mean) * invstd, y = weight * xhat + bias), and for
// the backward the means of dL/dy and dL/dy * xhat over the batch. Each [channels] float32.
struct BnStageArgs {
  const float* mean = nullptr;
  const float* invstd = nullptr;
  const float* weight = nullptr;
  const float* bias = nullptr;
  const float* mean_dy = nullptr;       // Backward only
  const float* mean_dy_xhat = nullptr;  // Backward only
};

// Sizes as in GhostShape (I = init, M = ratio - 1, K = depthwise size, OC = out_channels; C is x's channels and
// only used by the passes that read x). What each pass reads and writes:
//   Conv1x1Stats:   x, w1 -> z1_out [N, I, H, W], res0 = mean [I], res1 = biased var [I]
//   CheapStats:     z1, primary, w2 -> res0 = mean [I*M], res1 = var [I*M] (of z2 = dwconv(act(BN1(z1))))
//   ForwardOut:     z1, primary, w2, cheap -> out [N, OC, H, W]
//   BackwardReduce: grad_out, z1, primary, w2, cheap -> res0 = sums_primary [2, I], res1 = sums_cheap [8, I*M]
//   Backward:       grad_out, x, z1, w1, primary, w2, cheap -> out = grad_x [N, C, H, W], res0 = grad_w1 [I, C],
//                   res1 = grad_w2 [I*M, K*K]
// Every output is fully overwritten.
struct BnTrainArgs {
  DType dtype = DType::Float32;
  bool channels_last = false;
  int64_t N = 0, C = 0, H = 0, W = 0, I = 0, M = 0, K = 0, OC = 0;
  Act act = Act::Identity;
  const void* x = nullptr;
  const float* w1 = nullptr;  // [I, C]
  const void* z1 = nullptr;
  void* z1_out = nullptr;
  const float* w2 = nullptr;  // [I*M, K*K]
  BnStageArgs primary, cheap;
  const void* grad_out = nullptr;
  void* out = nullptr;
  float* res0 = nullptr;
  float* res1 = nullptr;
  void* scratch = nullptr;
};

// nullptr when the kernels can run the call, else a sentence saying why not (the binding raises it): a depthwise
// size above 7, or sizes past the kernels' 32-bit indexing.
const char* bn_unsupported_reason(const BnTrainArgs& a);

// Bytes of scratch the pass needs for these sizes (partials of the reductions; the backward's dz1 and dz2).
int64_t bn_scratch_bytes(BnPass pass, const BnTrainArgs& a);

cudaError_t launch_bn_conv1x1_stats(const BnTrainArgs& a, cudaStream_t stream);
cudaError_t launch_bn_cheap_stats(const BnTrainArgs& a, cudaStream_t stream);
cudaError_t launch_bn_forward_out(const BnTrainArgs& a, cudaStream_t stream);
cudaError_t launch_bn_backward_reduce(const BnTrainArgs& a, cudaStream_t stream);
cudaError_t launch_bn_backward(const BnTrainArgs& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace ghostkernels
