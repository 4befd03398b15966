// Launcher of the fused forward kernel (ghost_forward_kernel.cuh): tiling plan, kernel choice, launch.
#include "ghost_cuda.h"
#include "ghost_forward_kernel.cuh"
#include "ghost_cuda_plan.h"

namespace ghostkernels {
namespace cuda {
namespace {

using ForwardKernel = void (*)(const KernelParams);

template <typename T, bool kTF32>
ForwardKernel pick_k(int K) {
  return K == 3 ? ghost_forward_kernel<T, kTF32, 3> : ghost_forward_kernel<T, kTF32, 0>;
}

ForwardKernel pick_kernel(const GhostShape& s) {
  switch (s.dtype) {
    case DType::Float16: return pick_k<__half, false>(int(s.K));
    case DType::BFloat16: return pick_k<__nv_bfloat16, false>(int(s.K));
    case DType::Float32:
    default:
      return s.fp32_math == Fp32Math::TF32 ? pick_k<float, true>(int(s.K)) : pick_k<float, false>(int(s.K));
  }
}

}  // namespace

cudaError_t launch_forward(const ForwardArgs& a, cudaStream_t stream) {
  const GhostShape& s = a.shape;
  const Plan pl = plan_forward(s);
  if (pl.why != nullptr) return cudaErrorInvalidConfiguration;  // the binding checks unsupported_reason() first
  KernelParams P = make_kernel_params(s, pl.g, pl.L, a.x, a.w1, a.b1, a.w2, a.b2);
  P.out = a.out;
  const long long blocks = (long long)pl.g.chunks * P.items;
  if (blocks == 0) return cudaSuccess;
  const ForwardKernel k = pick_kernel(s);
  const cudaError_t e = allow_dynamic_smem(reinterpret_cast<const void*>(k), s.device, pl.L.total);
  if (e != cudaSuccess) return e;
  k<<<unsigned(blocks), kThreads, pl.L.total, stream>>>(P);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ghostkernels
