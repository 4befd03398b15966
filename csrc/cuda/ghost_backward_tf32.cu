// The backward kernels for float with TF32 tensor cores, one instantiation per k class, activation and layout.
#include "ghost_cuda_kernels.h"
#include "ghost_cuda_select.cuh"

namespace ghostkernels {
namespace cuda {

KernelFn backward_kernel_tf32(int K, Act a, Layout L) { return select_kernel<true, float, true>(K, a, L); }

}  // namespace cuda
}  // namespace ghostkernels
