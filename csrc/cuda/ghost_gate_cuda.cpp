// CUDA binding of GhostNetV2's DFC map op, ghostkernels::dfc_gate: validation (the shared checks of
// ghost_module_check.h), allocation, the device guard and the current stream, and the call into the torch-free
// launcher of ghost_gate_cuda.h. Its backward is composed of other ops for every device (csrc/gated_backward.cpp).
// ghostkernels::ghost_module_gated on CUDA is the Ghost module's forward kernel with the map multiplied in its
// stores (ghost_module_cuda.cpp).
//
// Only light c10/cuda headers, as in ghost_module_cuda.cpp, so this file syntax-checks against a CPU-only torch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>

#include "../ghost_module_check.h"
#include "ghost_cuda_dtype.h"
#include "ghost_gate_cuda.h"

namespace ghostkernels {
namespace {

constexpr const char* kGateOp = "ghostkernels::dfc_gate (CUDA)";

cuda::DType gate_dtype(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": expected CUDA tensors, got ", x.device());
  return cuda::cuda_dtype(op, x);
}

at::Tensor dfc_gate_cuda(const at::Tensor& x, const at::Tensor& w_reduce, const at::Tensor& b_reduce,
                         const at::Tensor& w_h, const at::Tensor& b_h, const at::Tensor& w_v, const at::Tensor& b_v) {
  const GateDims d = check_dfc_gate_inputs(kGateOp, x, w_reduce, b_reduce, w_h, b_h, w_v, b_v);
  cuda::DfcGateArgs a;
  a.dtype = gate_dtype(kGateOp, x);
  TORCH_CHECK_VALUE(d.N * d.O * d.Hg * d.Wg <= INT_MAX && d.C <= INT_MAX && d.H <= INT_MAX && d.W <= INT_MAX,
                    kGateOp, ": the map has more than 2^31 - 1 elements (x shape ", x.sizes(), ")");
  const at::MemoryFormat fmt = output_memory_format(x);
  at::Tensor map = at::empty({d.N, d.O, d.Hg, d.Wg}, x.options().memory_format(fmt));
  if (map.numel() == 0) return map;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor w1 = w_reduce.contiguous(), b1 = b_reduce.contiguous(), wh = w_h.contiguous();
  const at::Tensor bh = b_h.contiguous(), wv = w_v.contiguous(), bv = b_v.contiguous();
  at::Tensor z = at::empty({d.N * d.O * d.Hg * d.Wg}, x.options().dtype(at::kFloat));
  a.channels_last = fmt == at::MemoryFormat::ChannelsLast;
  a.N = d.N, a.C = d.C, a.H = d.H, a.W = d.W, a.O = d.O, a.Hg = d.Hg, a.Wg = d.Wg, a.KH = d.KH, a.KV = d.KV;
  a.x = xc.const_data_ptr();
  a.w1 = w1.const_data_ptr(), a.b1 = b1.const_data_ptr(), a.wh = wh.const_data_ptr(), a.bh = bh.const_data_ptr();
  a.wv = wv.const_data_ptr(), a.bv = bv.const_data_ptr();
  a.z = z.mutable_data_ptr<float>();
  a.map = map.mutable_data_ptr();
  C10_CUDA_CHECK(cuda::launch_dfc_gate(a, c10::cuda::getCurrentCUDAStream(x.device().index())));
  return map;
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CUDA, m) {
  m.impl("dfc_gate", &dfc_gate_cuda);
}

}  // namespace ghostkernels
