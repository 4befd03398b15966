// The launchers of ghost_bn_cuda.h: the launch sequences of ghost_bn_kernels.cuh (shared with the host emulator)
// run with <<<>>> on the caller's stream, the instantiation picked by dtype. One .cu for all five passes: CI
// compiles each .cu for two architectures.
#include "ghost_bn_cuda.h"
#include "ghost_bn_kernels.cuh"

namespace ghostkernels {
namespace cuda {
namespace {

cudaError_t run(BnPass pass, const BnTrainArgs& a, cudaStream_t stream) {
  if (bn_unsupported(a) != nullptr) return cudaErrorInvalidValue;
  auto launch = [stream](BnKernelFn fn, long long blocks, unsigned smem, const BnParams& P) -> int {
    if (blocks == 0) return int(cudaSuccess);
    fn<<<unsigned(blocks), kThreads, smem, stream>>>(P);
    return int(cudaGetLastError());
  };
  int err = 0;
  switch (a.dtype) {
    case DType::Float16: err = bn_run<__half>(pass, a, launch); break;
    case DType::BFloat16: err = bn_run<__nv_bfloat16>(pass, a, launch); break;
    case DType::Float32:
    default: err = bn_run<float>(pass, a, launch); break;
  }
  return cudaError_t(err);
}

}  // namespace

const char* bn_unsupported_reason(const BnTrainArgs& a) { return bn_unsupported(a); }

int64_t bn_scratch_bytes(BnPass pass, const BnTrainArgs& a) { return bn_scratch(pass, a).total; }

cudaError_t launch_bn_conv1x1_stats(const BnTrainArgs& a, cudaStream_t s) { return run(BnPass::Conv1x1Stats, a, s); }
cudaError_t launch_bn_cheap_stats(const BnTrainArgs& a, cudaStream_t s) { return run(BnPass::CheapStats, a, s); }
cudaError_t launch_bn_forward_out(const BnTrainArgs& a, cudaStream_t s) { return run(BnPass::ForwardOut, a, s); }
cudaError_t launch_bn_backward_reduce(const BnTrainArgs& a, cudaStream_t s) {
  return run(BnPass::BackwardReduce, a, s);
}
cudaError_t launch_bn_backward(const BnTrainArgs& a, cudaStream_t s) { return run(BnPass::Backward, a, s); }

}  // namespace cuda
}  // namespace ghostkernels
