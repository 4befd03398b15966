// CUDA binding of the train-mode BatchNorm passes (ghost_bn_* in csrc/ghost_module.cpp): the shared checks of
// ghost_module_check.h (the CPU binding, cpu/op_ghost_bn.cpp, runs the same ones), CUDA tensors of float32, float16
// or bfloat16, the memory-format rule, allocation of the outputs and of the launchers' scratch, the device guard and
// the current stream, then the torch-free launchers of ghost_bn_cuda.h. Registering these kernels for the CUDA key
// is what makes ghostkernels.ops.bn_train_kernels_available("cuda") true.
//
// Only light c10/cuda headers, as in ghost_module_cuda.cpp, so this file syntax-checks against a CPU-only torch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <initializer_list>
#include <tuple>
#include <vector>

#include "../ghost_module_check.h"
#include "ghost_bn_cuda.h"
#include "ghost_cuda_dtype.h"

namespace ghostkernels {
namespace {

// The launch arguments every pass shares: dtype, layout (the memory-format rule of `like`) and sizes.
cuda::BnTrainArgs bn_args(const char* op, const at::Tensor& like, const GhostDims& d) {
  TORCH_CHECK_VALUE(like.is_cuda(), op, ": expected CUDA tensors, got ", like.device());
  cuda::BnTrainArgs a;
  a.dtype = cuda::cuda_dtype(op, like);
  a.channels_last = output_memory_format(like) == at::MemoryFormat::ChannelsLast;
  a.N = d.N, a.C = d.C, a.H = d.H, a.W = d.W, a.I = d.I, a.M = d.M, a.K = d.K, a.OC = d.oc;
  a.act = d.act;
  const char* why = cuda::bn_unsupported_reason(a);
  TORCH_CHECK_VALUE(why == nullptr, op, ": ", why);
  return a;
}

at::MemoryFormat format_of(const cuda::BnTrainArgs& a) {
  return a.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// A stage's vectors (already checked: [channels] float32 on the device), kept alive by `keep`.
cuda::BnStageArgs stage(std::vector<at::Tensor>& keep, std::initializer_list<const at::Tensor*> ts) {
  const float* p[6] = {};
  int k = 0;
  for (const at::Tensor* t : ts) {
    keep.push_back(t->contiguous());
    p[k++] = keep.back().const_data_ptr<float>();
  }
  cuda::BnStageArgs s;
  s.mean = p[0], s.invstd = p[1], s.weight = p[2], s.bias = p[3], s.mean_dy = p[4], s.mean_dy_xhat = p[5];
  return s;
}

// Allocates the pass's scratch (into `keep`) and runs its launcher on the current stream of `like`'s device.
void run(cuda::BnPass pass, cuda::BnTrainArgs& a, const at::Tensor& like, std::vector<at::Tensor>& keep,
         cudaError_t (*launcher)(const cuda::BnTrainArgs&, cudaStream_t)) {
  keep.push_back(at::empty({cuda::bn_scratch_bytes(pass, a)}, like.options().dtype(at::kByte)));
  a.scratch = keep.back().mutable_data_ptr();
  C10_CUDA_CHECK(launcher(a, c10::cuda::getCurrentCUDAStream(like.device().index())));
}

at::TensorOptions f32(const at::Tensor& like) { return like.options().dtype(at::kFloat); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv1x1_stats_cuda(const at::Tensor& x, const at::Tensor& w_primary) {
  constexpr const char* op = "ghostkernels::ghost_bn_conv1x1_stats (CUDA)";
  const GhostDims d = check_bn_conv1x1_inputs(op, x, w_primary);
  cuda::BnTrainArgs a = bn_args(op, x, d);
  const c10::cuda::CUDAGuard guard(x.device());
  std::vector<at::Tensor> keep{x.contiguous(format_of(a)), w_primary.contiguous()};
  at::Tensor z1 = at::empty({d.N, d.I, d.H, d.W}, x.options().memory_format(format_of(a)));
  at::Tensor mean = at::empty({d.I}, f32(x)), var = at::empty({d.I}, f32(x));
  a.x = keep[0].const_data_ptr(), a.w1 = keep[1].const_data_ptr<float>();
  a.z1_out = z1.mutable_data_ptr(), a.res0 = mean.mutable_data_ptr<float>(), a.res1 = var.mutable_data_ptr<float>();
  run(cuda::BnPass::Conv1x1Stats, a, x, keep, &cuda::launch_bn_conv1x1_stats);
  return {z1, mean, var};
}

std::tuple<at::Tensor, at::Tensor> cheap_stats_cuda(const at::Tensor& z1, const at::Tensor& mean1,
                                                    const at::Tensor& invstd1, const at::Tensor& weight1,
                                                    const at::Tensor& bias1, const at::Tensor& w_cheap,
                                                    c10::string_view act) {
  constexpr const char* op = "ghostkernels::ghost_bn_cheap_stats (CUDA)";
  const GhostDims d = check_bn_z1_inputs(
      op, z1, w_cheap, -1, act,
      {{&mean1, "mean_primary"}, {&invstd1, "invstd_primary"}, {&weight1, "weight_primary"}, {&bias1, "bias_primary"}},
      {});
  cuda::BnTrainArgs a = bn_args(op, z1, d);
  const c10::cuda::CUDAGuard guard(z1.device());
  std::vector<at::Tensor> keep{z1.contiguous(format_of(a)), w_cheap.contiguous()};
  a.z1 = keep[0].const_data_ptr(), a.w2 = keep[1].const_data_ptr<float>();
  a.primary = stage(keep, {&mean1, &invstd1, &weight1, &bias1});
  at::Tensor mean = at::empty({d.I * d.M}, f32(z1)), var = at::empty({d.I * d.M}, f32(z1));
  a.res0 = mean.mutable_data_ptr<float>(), a.res1 = var.mutable_data_ptr<float>();
  run(cuda::BnPass::CheapStats, a, z1, keep, &cuda::launch_bn_cheap_stats);
  return {mean, var};
}

at::Tensor forward_out_cuda(const at::Tensor& z1, const at::Tensor& mean1, const at::Tensor& invstd1,
                            const at::Tensor& weight1, const at::Tensor& bias1, const at::Tensor& w_cheap,
                            const at::Tensor& mean2, const at::Tensor& invstd2, const at::Tensor& weight2,
                            const at::Tensor& bias2, int64_t out_channels, c10::string_view act) {
  constexpr const char* op = "ghostkernels::ghost_bn_forward_out (CUDA)";
  const GhostDims d = check_bn_two_stage_inputs(op, z1, mean1, invstd1, weight1, bias1, w_cheap, mean2, invstd2,
                                                weight2, bias2, out_channels, act);
  cuda::BnTrainArgs a = bn_args(op, z1, d);
  const c10::cuda::CUDAGuard guard(z1.device());
  std::vector<at::Tensor> keep{z1.contiguous(format_of(a)), w_cheap.contiguous()};
  a.z1 = keep[0].const_data_ptr(), a.w2 = keep[1].const_data_ptr<float>();
  a.primary = stage(keep, {&mean1, &invstd1, &weight1, &bias1});
  a.cheap = stage(keep, {&mean2, &invstd2, &weight2, &bias2});
  at::Tensor out = at::empty({d.N, d.oc, d.H, d.W}, z1.options().memory_format(format_of(a)));
  a.out = out.mutable_data_ptr();
  run(cuda::BnPass::ForwardOut, a, z1, keep, &cuda::launch_bn_forward_out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_reduce_cuda(
    const at::Tensor& grad_out, const at::Tensor& z1, const at::Tensor& mean1, const at::Tensor& invstd1,
    const at::Tensor& weight1, const at::Tensor& bias1, const at::Tensor& w_cheap, const at::Tensor& mean2,
    const at::Tensor& invstd2, const at::Tensor& weight2, const at::Tensor& bias2, int64_t out_channels,
    c10::string_view act) {
  constexpr const char* op = "ghostkernels::ghost_bn_backward_reduce (CUDA)";
  const GhostDims d = check_bn_two_stage_inputs(op, z1, mean1, invstd1, weight1, bias1, w_cheap, mean2, invstd2,
                                                weight2, bias2, out_channels, act);
  check_bn_grad_out(op, grad_out, z1, d);
  cuda::BnTrainArgs a = bn_args(op, z1, d);
  const c10::cuda::CUDAGuard guard(z1.device());
  std::vector<at::Tensor> keep{z1.contiguous(format_of(a)), grad_out.contiguous(format_of(a)), w_cheap.contiguous()};
  a.z1 = keep[0].const_data_ptr(), a.grad_out = keep[1].const_data_ptr(), a.w2 = keep[2].const_data_ptr<float>();
  a.primary = stage(keep, {&mean1, &invstd1, &weight1, &bias1});
  a.cheap = stage(keep, {&mean2, &invstd2, &weight2, &bias2});
  at::Tensor sums_p = at::empty({2, d.I}, f32(z1)), sums_c = at::empty({8, d.I * d.M}, f32(z1));
  a.res0 = sums_p.mutable_data_ptr<float>(), a.res1 = sums_c.mutable_data_ptr<float>();
  run(cuda::BnPass::BackwardReduce, a, z1, keep, &cuda::launch_bn_backward_reduce);
  return {sums_p, sums_c};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& z1, const at::Tensor& w_primary,
    const at::Tensor& mean1, const at::Tensor& invstd1, const at::Tensor& weight1, const at::Tensor& bias1,
    const at::Tensor& mean_dy1, const at::Tensor& mean_dy_xhat1, const at::Tensor& w_cheap, const at::Tensor& mean2,
    const at::Tensor& invstd2, const at::Tensor& weight2, const at::Tensor& bias2, const at::Tensor& mean_dy2,
    const at::Tensor& mean_dy_xhat2, int64_t out_channels, c10::string_view act) {
  constexpr const char* op = "ghostkernels::ghost_bn_backward (CUDA)";
  const GhostDims d =
      check_bn_backward_inputs(op, grad_out, x, z1, w_primary, mean1, invstd1, weight1, bias1, mean_dy1, mean_dy_xhat1,
                               w_cheap, mean2, invstd2, weight2, bias2, mean_dy2, mean_dy_xhat2, out_channels, act);
  cuda::BnTrainArgs a = bn_args(op, x, d);  // grad_x follows x's memory format; z1 and grad_out are made to match
  const c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat fmt = format_of(a);
  std::vector<at::Tensor> keep{x.contiguous(fmt), z1.contiguous(fmt), grad_out.contiguous(fmt),
                               w_primary.contiguous(), w_cheap.contiguous()};
  a.x = keep[0].const_data_ptr(), a.z1 = keep[1].const_data_ptr(), a.grad_out = keep[2].const_data_ptr();
  a.w1 = keep[3].const_data_ptr<float>(), a.w2 = keep[4].const_data_ptr<float>();
  a.primary = stage(keep, {&mean1, &invstd1, &weight1, &bias1, &mean_dy1, &mean_dy_xhat1});
  a.cheap = stage(keep, {&mean2, &invstd2, &weight2, &bias2, &mean_dy2, &mean_dy_xhat2});
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor gw1 = at::empty(w_primary.sizes(), w_primary.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor gw2 = at::empty(w_cheap.sizes(), w_cheap.options().memory_format(at::MemoryFormat::Contiguous));
  a.out = grad_x.mutable_data_ptr(), a.res0 = gw1.mutable_data_ptr<float>(), a.res1 = gw2.mutable_data_ptr<float>();
  run(cuda::BnPass::Backward, a, x, keep, &cuda::launch_bn_backward);
  return {grad_x, gw1, gw2};
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CUDA, m) {
  m.impl("ghost_bn_conv1x1_stats", &conv1x1_stats_cuda);
  m.impl("ghost_bn_cheap_stats", &cheap_stats_cuda);
  m.impl("ghost_bn_forward_out", &forward_out_cuda);
  m.impl("ghost_bn_backward_reduce", &backward_reduce_cuda);
  m.impl("ghost_bn_backward", &backward_cuda);
}

}  // namespace ghostkernels
