// Launcher of the fused forward kernel (ghost_forward_kernel.cuh), gated or not: tiling plan, kernel choice,
// persistent grid, launch. The kernel instantiations live in ghost_forward_{f16,bf16,f32,tf32}.cu.
#include "ghost_cuda.h"
#include "ghost_cuda_kernels.h"
#include "ghost_cuda_plan.h"

namespace ghostkernels {
namespace cuda {

cudaError_t launch_forward(const ForwardArgs& a, cudaStream_t stream) {
  const GhostShape& s = a.shape;
  const Plan pl = plan_forward(s);
  if (pl.why != nullptr) return cudaErrorInvalidConfiguration;  // the binding checks unsupported_reason() first
  KernelParams P = make_kernel_params(s, pl.g, pl.L, a.x, a.w1, a.b1, a.w2, a.b2);
  P.out = a.out;
  set_forward_gate(P, a.gate, a.Hg, a.Wg);
  P.layout = choose_layout(s, a.out, a.gate);  // a channels_last map is read in the output's vectors
  if (P.items == 0) return cudaSuccess;
  const KernelFn k = pick_kernel(/*backward=*/false, s, P.layout, /*gated=*/a.gate != nullptr);
  const cudaError_t e = allow_dynamic_smem(reinterpret_cast<const void*>(k), s.device, pl.L.total);
  if (e != cudaSuccess) return e;
  // A persistent grid: every block resident at once, each running a contiguous run of units.
  const long long resident = (long long)resident_blocks_per_sm(reinterpret_cast<const void*>(k), s.device,
                                                               pl.L.total) * device_info(s.device).sm_count;
  const long long blocks = set_forward_grid(P, resident);
  if (blocks == 0) return cudaSuccess;
  k<<<unsigned(blocks), kThreads, pl.L.total, stream>>>(P);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ghostkernels
