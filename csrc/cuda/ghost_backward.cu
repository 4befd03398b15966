// Launchers of the fused backward kernel (ghost_backward_kernel.cuh): tiling plan, persistent-grid size, launch.
#include "ghost_cuda.h"
#include "ghost_backward_kernel.cuh"
#include "ghost_cuda_plan.h"

#include <climits>

namespace ghostkernels {
namespace cuda {
namespace {

using BackwardKernel = void (*)(const KernelParams);

template <typename T, bool kTF32>
BackwardKernel pick_k(int K) {
  return K == 3 ? ghost_backward_kernel<T, kTF32, 3> : ghost_backward_kernel<T, kTF32, 0>;
}

BackwardKernel pick_kernel(const GhostShape& s) {
  switch (s.dtype) {
    case DType::Float16: return pick_k<__half, false>(int(s.K));
    case DType::BFloat16: return pick_k<__nv_bfloat16, false>(int(s.K));
    case DType::Float32:
    default:
      return s.fp32_math == Fp32Math::TF32 ? pick_k<float, true>(int(s.K)) : pick_k<float, false>(int(s.K));
  }
}

}  // namespace

int64_t backward_partial_groups(const GhostShape& s) {
  const Plan pl = plan_backward(s);
  if (pl.why != nullptr) return 0;
  const long long items = s.N * pl.g.ntiles();
  if (items == 0) return 0;
  // One resident wave: as many blocks as fit on the device at once, split among the chunks.
  const int per_sm = resident_blocks_per_sm(reinterpret_cast<const void*>(pick_kernel(s)), s.device, pl.L.total);
  const long long resident = (long long)per_sm * device_info(s.device).sm_count;
  long long groups = resident / pl.g.chunks;
  if (groups < 1) groups = 1;
  if (groups > items) groups = items;
  if (groups * pl.g.chunks > INT_MAX) groups = INT_MAX / pl.g.chunks;
  return groups;
}

cudaError_t launch_backward(const BackwardArgs& a, cudaStream_t stream) {
  const GhostShape& s = a.shape;
  const Plan pl = plan_backward(s);
  if (pl.why != nullptr || a.groups < 1) return cudaErrorInvalidConfiguration;
  KernelParams P = make_kernel_params(s, pl.g, pl.L, a.x, a.w1, a.b1, a.w2, a.b2);
  P.grad_out = a.grad_out;
  P.grad_z1 = a.grad_z1;
  P.partials = a.partials;
  P.groups = a.groups;
  const long long blocks = (long long)pl.g.chunks * a.groups;
  if (P.items == 0) return cudaSuccess;
  if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  const BackwardKernel k = pick_kernel(s);
  const cudaError_t e = allow_dynamic_smem(reinterpret_cast<const void*>(k), s.device, pl.L.total);
  if (e != cudaSuccess) return e;
  k<<<unsigned(blocks), kThreads, pl.L.total, stream>>>(P);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ghostkernels
