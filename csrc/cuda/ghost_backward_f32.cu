// The backward kernels for float with exact float32 FMAs, one instantiation per k class, activation and layout.
#include "ghost_cuda_kernels.h"
#include "ghost_cuda_select.cuh"

namespace ghostkernels {
namespace cuda {

KernelFn backward_kernel_f32(int K, Act a, Layout L) { return select_kernel<true, float, false>(K, a, L); }

}  // namespace cuda
}  // namespace ghostkernels
