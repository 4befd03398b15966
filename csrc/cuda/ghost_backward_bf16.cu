// The backward kernels for __nv_bfloat16, one instantiation per k class, activation and layout.
#include "ghost_cuda_kernels.h"
#include "ghost_cuda_select.cuh"

namespace ghostkernels {
namespace cuda {

KernelFn backward_kernel_bf16(int K, Act a, Layout L) { return select_kernel<true, __nv_bfloat16, false>(K, a, L); }

}  // namespace cuda
}  // namespace ghostkernels
