// CUDA binding of ghostkernels::ghost_module, ghost_module_gated (GhostNetV2: the same forward kernel with the DFC
// map multiplied into both halves in its stores) and ghost_module_backward: validation, output allocation, the
// current stream and device guard, and the calls into the torch-free kernels of ghost_cuda.h. The gated op's
// backward is composed of other ops for every device (csrc/gated_backward.cpp).
//
// Backward = the fused kernel (dL/dz1 and the depthwise weight-gradient partials, recomputing everything from x)
// + cuDNN's 1x1-convolution backward through ATen for the two GEMMs (grad x = W1^T . g1, grad W1 = g1 . x^T,
// float32 accumulation, x's memory format) + float32 reductions for the bias gradients.
//
// Only the light c10/cuda headers are included (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE
// headers), so that this file also syntax-checks against a CPU-only torch plus the CUDA runtime headers.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>
#include <type_traits>

#include "../ghost_module_check.h"
#include "ghost_cuda.h"
#include "ghost_cuda_dtype.h"

// An opaque redeclaration, so that the detection below can name at::Float32Op even with a torch that predates it
// (redeclaring an already defined scoped enum with its default underlying type is allowed).
namespace at {
enum class Float32Op;
}  // namespace at

namespace ghostkernels {
namespace {

// Whether cuDNN convolutions may use TF32, by torch's per-operation precision setting
// (torch.backends.cudnn.conv.fp32_precision, or the legacy torch.backends.cudnn.allow_tf32 that also sets it),
// which is what at::convolution asks (allowTF32CuDNN(Float32Op::CONV)). The operation-specific query exists from the
// torch release that made Float32Op an enum with a CONV member; it is detected at compile time (the exact release
// number is not needed, and the headers of torch 2.11 and 2.13 both have it), and only a torch without it gets the
// legacy query, which raises when conv and rnn were given different settings through the new API.
template <typename Op, typename = void>
struct HasConvPrecision : std::false_type {};
template <typename Op>
struct HasConvPrecision<Op, std::void_t<decltype(Op::CONV)>> : std::true_type {};

template <typename Op>
bool conv_allows_tf32() {
  if constexpr (HasConvPrecision<Op>::value)
    return at::globalContext().allowTF32CuDNN(Op::CONV);
  else
    return at::globalContext().allowTF32CuDNN();
}

constexpr const char* kForwardOp = "ghostkernels::ghost_module (CUDA)";
constexpr const char* kGatedOp = "ghostkernels::ghost_module_gated (CUDA)";
constexpr const char* kBackwardOp = "ghostkernels::ghost_module_backward (CUDA)";

using cuda::cuda_dtype;

// The kernels' view of a validated call; raises for what the CUDA kernels cannot run.
cuda::GhostShape make_shape(const char* op, const GhostDims& d, const at::Tensor& x, bool backward) {
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": expected CUDA tensors, got ", x.device());
  cuda::GhostShape s;
  s.dtype = cuda_dtype(op, x);
  s.N = d.N;
  s.C = d.C;
  s.H = d.H;
  s.W = d.W;
  s.I = d.I;
  s.M = d.M;
  s.K = d.K;
  s.OC = d.oc;
  s.act = d.act;
  // float32 GEMMs may use TF32 exactly when cuDNN convolutions may, so the fused op and the eager module it
  // replaces round alike.
  s.fp32_math = s.dtype == cuda::DType::Float32 && conv_allows_tf32<at::Float32Op>() ? cuda::Fp32Math::TF32
                                                                                     : cuda::Fp32Math::Exact;
  s.channels_last = output_memory_format(x) == at::MemoryFormat::ChannelsLast;
  s.device = x.device().index();
  TORCH_CHECK_VALUE(d.K == 1 || d.K == 3 || d.K == 5 || d.K == 7, op,
                    ": the CUDA kernels support depthwise kernel sizes 1, 3, 5 and 7, got k=", d.K);
  // The kernels index within one dimension with 32-bit integers (offsets are 64-bit).
  TORCH_CHECK_VALUE(d.C <= INT_MAX && d.H <= INT_MAX && d.W <= INT_MAX && d.I * (d.M + 1) <= INT_MAX, op,
                    ": a dimension exceeds 2^31 - 1 (x shape ", x.sizes(), ", init*ratio=", d.I * (d.M + 1), ")");
  const char* why = cuda::unsupported_reason(s, backward);
  TORCH_CHECK(why == nullptr, op, ": ", why, " (x shape ", x.sizes(), ", init=", d.I, ", ratio=", d.M + 1,
              ", k=", d.K, ", device ", x.device(), ")");
  return s;
}

// The forward of a validated call, gated by `gate` ([N, OC, Hg, Wg], x's dtype and device) when it is defined.
at::Tensor forward(const char* op, const GhostDims& d, const at::Tensor& x, const at::Tensor& w_primary,
                   const at::Tensor& b_primary, const at::Tensor& w_cheap, const at::Tensor& b_cheap,
                   const at::Tensor& gate) {
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": expected CUDA tensors, got ", x.device());
  cuda_dtype(op, x);
  const at::MemoryFormat fmt = output_memory_format(x);
  at::Tensor out = at::empty({d.N, d.oc, d.H, d.W}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(x.device());
  const cuda::GhostShape s = make_shape(op, d, x, /*backward=*/false);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor w1 = w_primary.contiguous(), b1 = b_primary.contiguous();
  const at::Tensor w2 = w_cheap.contiguous(), b2 = b_cheap.contiguous();
  cuda::ForwardArgs a;
  a.shape = s;
  a.x = xc.const_data_ptr();
  a.w1 = w1.const_data_ptr();
  a.b1 = b1.const_data_ptr();
  a.w2 = w2.const_data_ptr();
  a.b2 = b2.const_data_ptr();
  a.out = out.mutable_data_ptr();
  at::Tensor map;  // kept alive until the launch is enqueued
  if (gate.defined()) {
    // The kernel indexes map pixels in 32 bits (ghost_forward_kernel.cuh, GateMap).
    TORCH_CHECK_VALUE(gate.size(0) * gate.size(2) * gate.size(3) <= INT_MAX, op, ": the gate map has 2^31 or more "
                      "pixels (N * Hg * Wg), more than the CUDA kernel indexes; gate shape ", gate.sizes());
    map = gate.contiguous(fmt);  // the output's layout: the kernel reads it as it writes out
    a.gate = map.const_data_ptr();
    a.Hg = map.size(2);
    a.Wg = map.size(3);
  }
  C10_CUDA_CHECK(cuda::launch_forward(a, c10::cuda::getCurrentCUDAStream(x.device().index())));
  return out;
}

at::Tensor ghost_module_cuda(const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
                             const at::Tensor& w_cheap, const at::Tensor& b_cheap, int64_t out_channels,
                             c10::string_view act) {
  const GhostDims d = check_ghost_inputs(kForwardOp, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act);
  return forward(kForwardOp, d, x, w_primary, b_primary, w_cheap, b_cheap, at::Tensor());
}

at::Tensor ghost_module_gated_cuda(const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
                                   const at::Tensor& w_cheap, const at::Tensor& b_cheap, int64_t out_channels,
                                   c10::string_view act, const at::Tensor& gate) {
  const GhostDims d =
      check_gated_inputs(kGatedOp, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act, gate);
  return forward(kGatedOp, d, x, w_primary, b_primary, w_cheap, b_cheap, gate);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ghost_module_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
    const at::Tensor& w_cheap, const at::Tensor& b_cheap, int64_t out_channels, c10::string_view act) {
  const GhostDims d =
      check_ghost_inputs(kBackwardOp, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act);
  TORCH_CHECK_VALUE(x.is_cuda(), kBackwardOp, ": expected CUDA tensors, got ", x.device());
  const auto dtype = x.scalar_type();
  cuda_dtype(kBackwardOp, x);
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == d.N && grad_out.size(1) == d.oc &&
                        grad_out.size(2) == d.H && grad_out.size(3) == d.W,
                    kBackwardOp, ": grad_out must be [", d.N, ", ", d.oc, ", ", d.H, ", ", d.W, "], got ",
                    grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == dtype, kBackwardOp, ": grad_out dtype ", grad_out.scalar_type(),
                   " differs from x dtype ", dtype);
  TORCH_CHECK_VALUE(grad_out.device() == x.device(), kBackwardOp, ": grad_out is on ", grad_out.device(),
                    " but x is on ", x.device());
  const at::MemoryFormat fmt = output_memory_format(x);
  if (d.N * d.H * d.W == 0) {
    return {at::zeros(x.sizes(), x.options().memory_format(fmt)), at::zeros(w_primary.sizes(), w_primary.options()),
            at::zeros(b_primary.sizes(), b_primary.options()), at::zeros(w_cheap.sizes(), w_cheap.options()),
            at::zeros(b_cheap.sizes(), b_cheap.options())};
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const cuda::GhostShape s = make_shape(kBackwardOp, d, x, /*backward=*/true);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor goc = grad_out.contiguous(fmt);
  const at::Tensor w1 = w_primary.contiguous(), b1 = b_primary.contiguous();
  const at::Tensor w2 = w_cheap.contiguous(), b2 = b_cheap.contiguous();
  const int64_t KK = d.K * d.K;

  at::Tensor grad_z1 = at::empty({d.N, d.I, d.H, d.W}, x.options().memory_format(fmt));
  const int64_t groups = cuda::backward_partial_groups(s);
  TORCH_CHECK(groups > 0, kBackwardOp, ": could not size the backward grid");
  at::Tensor partials = at::empty({groups, d.I * d.M, KK + 1}, x.options().dtype(at::kFloat));
  cuda::BackwardArgs a;
  a.shape = s;
  a.grad_out = goc.const_data_ptr();
  a.x = xc.const_data_ptr();
  a.w1 = w1.const_data_ptr();
  a.b1 = b1.const_data_ptr();
  a.w2 = w2.const_data_ptr();
  a.b2 = b2.const_data_ptr();
  a.grad_z1 = grad_z1.mutable_data_ptr();
  a.partials = partials.mutable_data_ptr<float>();
  a.groups = groups;
  C10_CUDA_CHECK(cuda::launch_backward(a, c10::cuda::getCurrentCUDAStream(x.device().index())));

  const at::Tensor sums = partials.sum(0);  // [I*M, K*K + 1], float32, fixed reduction order
  at::Tensor gw2 = sums.narrow(1, 0, KK).reshape(w_cheap.sizes()).to(dtype).contiguous();
  at::Tensor gb2 = sums.select(1, KK).to(dtype).contiguous();
  at::Tensor gb1 = grad_z1.sum({0, 2, 3}, /*keepdim=*/false, at::kFloat).to(dtype);
  at::Tensor grad_x, gw1;
  if (d.C > 0) {
    auto grads = at::convolution_backward(grad_z1, xc, w1, /*bias_sizes=*/std::nullopt, /*stride=*/{1, 1},
                                          /*padding=*/{0, 0}, /*dilation=*/{1, 1}, /*transposed=*/false,
                                          /*output_padding=*/{0, 0}, /*groups=*/1, {true, true, false});
    grad_x = std::get<0>(grads).contiguous(fmt);
    gw1 = std::get<1>(grads).contiguous();
  } else {  // no input channels: x and W1 are empty, and so are their gradients
    grad_x = at::empty(x.sizes(), x.options().memory_format(fmt));
    gw1 = at::zeros(w_primary.sizes(), w_primary.options());
  }
  return {grad_x, gw1, gb1, gw2, gb2};
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CUDA, m) {
  m.impl("ghost_module", &ghost_module_cuda);
  m.impl("ghost_module_gated", &ghost_module_gated_cuda);
  m.impl("ghost_module_backward", &ghost_module_backward_cuda);
}

}  // namespace ghostkernels
