// Launchers of the fused backward kernel (ghost_backward_kernel.cuh): tiling plan, persistent-grid size, launch. The
// kernel instantiations live in ghost_backward_{f16,bf16,f32,tf32}.cu.
#include "ghost_cuda.h"
#include "ghost_cuda_kernels.h"
#include "ghost_cuda_plan.h"

#include <climits>

namespace ghostkernels {
namespace cuda {

int64_t backward_partial_groups(const GhostShape& s) {
  const Plan pl = plan_backward(s);
  if (pl.why != nullptr) return 0;
  const long long items = s.N * pl.g.ntiles();
  if (items == 0) return 0;
  // One resident wave: as many blocks as fit on the device at once, split among the chunks.
  // The pointers (and so the NHWCVec choice) are not known yet; the scalar instantiation of the same layout family
  // has the same launch bounds and shared memory, which are what limit the blocks per SM here.
  const Layout L = s.channels_last ? Layout::NHWC : Layout::NCHW;
  const int per_sm =
      resident_blocks_per_sm(reinterpret_cast<const void*>(pick_kernel(true, s, L)), s.device, pl.L.total);
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
  P.layout = choose_layout(s, a.grad_out, a.grad_z1);
  P.gz1_vec = P.layout == Layout::NHWCVec && s.I % (s.dtype == DType::Float32 ? 4 : 8) == 0;
  const long long blocks = (long long)pl.g.chunks * a.groups;
  if (P.items == 0) return cudaSuccess;
  if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  const KernelFn k = pick_kernel(/*backward=*/true, s, P.layout);
  const cudaError_t e = allow_dynamic_smem(reinterpret_cast<const void*>(k), s.device, pl.L.total);
  if (e != cudaSuccess) return e;
  k<<<unsigned(blocks), kThreads, pl.L.total, stream>>>(P);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ghostkernels
