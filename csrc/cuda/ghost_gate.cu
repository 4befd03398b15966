// The launcher of ghost_gate_cuda.h: one thread per element (dfc_gate_kernel.cuh), kThreads per block, the
// instantiation picked by dtype and layout.
#include "dfc_gate_kernel.cuh"
#include "ghost_gate_cuda.h"

namespace ghostkernels {
namespace cuda {
namespace {

using GateKernelFn = void (*)(const GateKernelParams);

template <template <typename, bool> class Pick>
GateKernelFn pick(DType dtype, bool channels_last) {
  switch (dtype) {
    case DType::Float16: return channels_last ? Pick<__half, true>::fn : Pick<__half, false>::fn;
    case DType::BFloat16:
      return channels_last ? Pick<__nv_bfloat16, true>::fn : Pick<__nv_bfloat16, false>::fn;
    case DType::Float32:
    default: return channels_last ? Pick<float, true>::fn : Pick<float, false>::fn;
  }
}

template <typename T, bool kCL>
struct Reduce {
  static constexpr GateKernelFn fn = &dfc_reduce_kernel<T, kCL>;
};
template <typename T, bool kCL>
struct Finish {
  static constexpr GateKernelFn fn = &dfc_finish_kernel<T, kCL>;
};

cudaError_t launch(GateKernelFn fn, long long elements, const GateKernelParams& P, cudaStream_t stream) {
  if (elements == 0) return cudaSuccess;
  const long long blocks = (elements + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  fn<<<unsigned(blocks), kThreads, 0, stream>>>(P);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_dfc_gate(const DfcGateArgs& a, cudaStream_t stream) {
  GateKernelParams P;
  P.N = int(a.N), P.C = int(a.C), P.H = int(a.H), P.W = int(a.W), P.O = int(a.O), P.Hg = int(a.Hg);
  P.Wg = int(a.Wg), P.KH = int(a.KH), P.KV = int(a.KV);
  P.x = a.x, P.w1 = a.w1, P.b1 = a.b1, P.wh = a.wh, P.bh = a.bh, P.wv = a.wv, P.bv = a.bv;
  P.z = a.z;
  P.map = a.map;
  const long long elements = a.N * a.O * a.Hg * a.Wg;
  cudaError_t err = launch(pick<Reduce>(a.dtype, a.channels_last), elements, P, stream);
  if (err != cudaSuccess) return err;
  return launch(pick<Finish>(a.dtype, a.channels_last), elements, P, stream);
}

}  // namespace cuda
}  // namespace ghostkernels
