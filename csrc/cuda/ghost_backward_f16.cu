// The backward kernels for __half, one instantiation per k class, activation and layout.
#include "ghost_cuda_kernels.h"
#include "ghost_cuda_select.cuh"

namespace ghostkernels {
namespace cuda {

KernelFn backward_kernel_f16(int K, Act a, Layout L) { return select_kernel<true, __half, false>(K, a, L); }

}  // namespace cuda
}  // namespace ghostkernels
