// Host API of the CUDA Ghost-module kernels: parameter structs and launchers.
//
// No torch header here (nor in any .cu/.cuh of this folder): the kernels see raw pointers and sizes, and the thin
// binding ghost_module_cuda.cpp translates tensors into these structs. That keeps the kernels buildable by plain
// nvcc (the CI compiles every .cu without torch or a GPU) and usable outside PyTorch.
//
// Memory layout contract: every 4-D tensor (x, out, grad_out, grad_z1) is NCHW-contiguous, or NHWC-contiguous
// when GhostShape::channels_last is set, with the canonical strides of its sizes; weights are contiguous. All
// pointers live on GhostShape::device, and all tensors of a call share GhostShape::dtype.
//
// Every launcher enqueues on the stream it is given, allocates nothing and never synchronizes, so the calls are
// safe inside CUDA graph capture. They return the launch's error code; cudaSuccess says nothing about the kernel's
// completion (errors of an asynchronous kernel surface at the next synchronizing call, as always in CUDA).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../activations.h"

namespace ghostkernels {
namespace cuda {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// How the 1x1-conv GEMM treats float32 inputs. 16-bit inputs always run on tensor cores with float32 accumulation.
// TF32 rounds both GEMM operands to 10 mantissa bits (relative error ~5e-4), as cuDNN does for float32 convolution
// when torch.backends.cudnn.allow_tf32 is set; Exact runs IEEE float32 FMAs.
enum class Fp32Math : int { Exact = 0, TF32 = 1 };

// Sizes and options of one call. I = init channels, M = ratio - 1, K = depthwise kernel size, OC = out_channels.
struct GhostShape {
  int64_t N = 0, C = 0, H = 0, W = 0;
  int64_t I = 0, M = 0, K = 0, OC = 0;
  Act act = Act::Identity;
  DType dtype = DType::Float32;
  Fp32Math fp32_math = Fp32Math::Exact;
  bool channels_last = false;
  int device = 0;  // CUDA device ordinal (for the shared-memory limit and the SM count)
};

struct ForwardArgs {
  GhostShape shape;
  const void* x = nullptr;   // [N, C, H, W]
  const void* w1 = nullptr;  // [I, C] (w_primary viewed as a matrix)
  const void* b1 = nullptr;  // [I]
  const void* w2 = nullptr;  // [I*M, K*K]
  const void* b2 = nullptr;  // [I*M]
  void* out = nullptr;       // [N, OC, H, W], fully overwritten
  // GhostNetV2's gate (ghostkernels::ghost_module_gated): nullptr for the plain Ghost module, else the DFC map
  // [N, OC, Hg, Wg] in out's layout and dtype, by which both halves are multiplied as they are stored:
  // out[n, c, h, w] = act(...) * gate[n, c, ih(h), iw(w)], ih / iw nearest upsampling's source index
  // (csrc/nearest_index.h; Hg, Wg >= 1, any size, N * Hg * Wg < 2^31). A channels_last map must be 16-byte
  // aligned for the vector path.
  const void* gate = nullptr;
  int64_t Hg = 0, Wg = 0;
};

struct BackwardArgs {
  GhostShape shape;
  const void* grad_out = nullptr;  // [N, OC, H, W]
  const void* x = nullptr;
  const void* w1 = nullptr;
  const void* b1 = nullptr;
  const void* w2 = nullptr;
  const void* b2 = nullptr;
  // [N, I, H, W], fully overwritten with dL/dz1, the gradient at the primary conv's pre-activation. The binding
  // feeds it to the two 1x1 GEMMs (grad x = W1^T . g1, grad W1 = g1 . x^T) and sums it for grad b_primary.
  void* grad_z1 = nullptr;
  // [groups, I*M, K*K + 1] float32, fully overwritten: per block group, the partial sums of grad w_cheap (K*K taps)
  // and grad b_cheap (last entry) of every cheap channel. The binding sums over groups (a fixed-order reduction,
  // so the gradient is deterministic).
  float* partials = nullptr;
  int64_t groups = 0;  // backward_partial_groups(shape)
};

// nullptr when the CUDA kernels can run this shape on its device, else a sentence saying why not (kernel size
// outside {1, 3, 5, 7}, compute capability below 8.0, a ratio so large that no tile fits in shared memory, more
// blocks than a grid holds). `backward` asks about the backward kernel, whose tiles need more shared memory.
// The binding raises the sentence as a Python exception.
const char* unsupported_reason(const GhostShape& s, bool backward);

cudaError_t launch_forward(const ForwardArgs& a, cudaStream_t stream);

// Number of block groups of the backward kernel (one resident wave of blocks split among the channel chunks),
// i.e. the leading size of BackwardArgs::partials. 0 when there is nothing to do.
int64_t backward_partial_groups(const GhostShape& s);

cudaError_t launch_backward(const BackwardArgs& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace ghostkernels
