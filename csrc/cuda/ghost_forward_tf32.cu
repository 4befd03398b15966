// The forward kernels for float with TF32 tensor cores, one instantiation per k class, activation and layout,
// and the gated ones (select_gated_forward).
#include "ghost_cuda_kernels.h"
#include "ghost_cuda_select.cuh"

namespace ghostkernels {
namespace cuda {

KernelFn forward_kernel_tf32(int K, Act a, Layout L, bool gated) {
  return select_forward<float, true>(K, a, L, gated);
}

}  // namespace cuda
}  // namespace ghostkernels
