// The autograd kernel of ghostkernels::ghost_module_bn_train, for every device (the Autograd alias key): a C++
// autograd function whose forward runs the op's own kernel below autograd (ghostkernels/ops/train_bn.py's, which
// Python registers for the CPU and CUDA) and whose backward is the op ghostkernels::ghost_module_bn_train_backward.
//
// Why C++: the same formula registered from Python (torch.library.register_autograd) cost every call its Python
// wrapper, setup_context and backward function, about 0.3 ms a training step on the 2-core CPU of the benchmarks:
// more than all five passes of a late GhostNet module at batch 1 (bench/NOTES.md entry 48). torch.compile and
// torch.export trace through it as through any ATen op's autograd kernel (the fake kernels stay in Python).
//
// On the CPU without a process group (group "") the function calls ghost_bn_train_local and its backward itself,
// as the op's Python kernels would (ghostkernels/ops/train_bn.py: native_forward, native_backward), so that such a
// training step runs no Python of ours at all; elsewhere it calls the op's kernel (the Python composition, which
// combines the statistics across processes).
//
// What is saved: x, the layers' tensors, the batch statistics and saved_z1 (z1 where the forward kept it, see
// train_bn.keep_z1); the statistics outputs are not differentiable (the running statistics are buffers).
// Double backward is not supported: with grad mode on (create_graph=True) the backward op is called through its own
// autograd kernel, whose backward raises saying so.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/core/SymInt.h>
#include <c10/util/string_view.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "ghost_module_check.h"

namespace ghostkernels {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Outputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Gradients = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

using ForwardSig = Outputs(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, double,
                           const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, double, c10::SymInt,
                           c10::string_view, c10::string_view);
using BackwardSig = Gradients(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                              const OptTensor&, double, const Tensor&, const OptTensor&, const OptTensor&,
                              const OptTensor&, double, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              const Tensor&, const Tensor&, c10::SymInt, c10::string_view, c10::string_view);

// The op's 14 arguments: the nine tensors (some optional) sit at these positions, the others are eps_primary (5),
// eps_cheap (10), out_channels, act and group (11-13).
constexpr int kArguments = 14;

// train_bn.KEEP_Z1_MIN_CHANNELS (z1 is kept for backward when x has at least this many channels; train_bn.py says
// why). tests/test_train_bn_ops.py checks that the two agree.
constexpr int64_t kKeepZ1MinChannels = 32;

using LocalForwardSig = Outputs(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                                double, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, double,
                                c10::SymInt, c10::string_view, bool);
using LocalGradients = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using LocalBackwardSig = LocalGradients(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                        const OptTensor&, const OptTensor&, double, const Tensor&, const OptTensor&,
                                        const OptTensor&, const OptTensor&, double, const Tensor&, const Tensor&,
                                        const Tensor&, const Tensor&, const Tensor&, const Tensor&, c10::SymInt,
                                        c10::string_view);

// Whether the call runs ghost_bn_train_local (train_bn._local_cpu).
bool local_cpu(const Tensor& x, const std::string& group) { return group.empty() && x.device().is_cpu(); }

// A gradient in its parameter's dtype and strides (train_bn._like_param: DDP's buckets and optimizers expect the
// parameter's strides).
Tensor like_param(const Tensor& grad, const Tensor& param) {
  Tensor g = grad.to(param.scalar_type());
  if (g.strides() != param.strides()) g = at::empty_like(param).copy_(g);
  return g;
}
constexpr std::array<int, 9> kTensorPositions = {0, 1, 2, 3, 4, 6, 7, 8, 9};

OptTensor optional_of(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

struct BnTrainFunction : public torch::autograd::Function<BnTrainFunction> {
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& w_primary, const OptTensor& b_primary,
      const OptTensor& bn_weight_primary, const OptTensor& bn_bias_primary, double eps_primary, const Tensor& w_cheap,
      const OptTensor& b_cheap, const OptTensor& bn_weight_cheap, const OptTensor& bn_bias_cheap, double eps_cheap,
      const c10::SymInt& out_channels, const std::string& act, const std::string& group) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("ghostkernels::ghost_module_bn_train", "")
                               .typed<ForwardSig>();
    static const auto local_op = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("ghostkernels::ghost_bn_train_local", "")
                                     .typed<LocalForwardSig>();
    Outputs outs;
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      if (local_cpu(x, group)) {
        // train_bn.native_forward's checks: the activation, and nn.BatchNorm2d's own (F.batch_norm's message).
        (void)parse_act(act);
        TORCH_CHECK_VALUE(x.dim() != 4 || x.sym_size(0) * x.sym_size(2) * x.sym_size(3) != 1,
                          "Expected more than 1 value per channel when training, got input size ", x.sym_sizes());
        const bool keep_z1 = x.dim() == 4 && x.sym_size(1) >= kKeepZ1MinChannels;
        outs = local_op.call(x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, eps_primary, w_cheap,
                             b_cheap, bn_weight_cheap, bn_bias_cheap, eps_cheap, out_channels, act, keep_z1);
      } else {
        outs = op.call(x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, eps_primary, w_cheap, b_cheap,
                       bn_weight_cheap, bn_bias_cheap, eps_cheap, out_channels, act, group);
      }
    }
    auto& [out, mean1, var1, mean2, var2, count, saved_z1] = outs;
    const auto value = [](const OptTensor& t) { return t.has_value() ? *t : Tensor(); };
    ctx->save_for_backward({x, w_primary, value(b_primary), value(bn_weight_primary), value(bn_bias_primary), w_cheap,
                            value(b_cheap), value(bn_weight_cheap), value(bn_bias_cheap), mean1, var1, mean2, var2,
                            count, saved_z1});
    ctx->saved_data["eps_primary"] = eps_primary;
    ctx->saved_data["eps_cheap"] = eps_cheap;
    ctx->saved_data["out_channels"] = out_channels;
    ctx->saved_data["act"] = act;
    ctx->saved_data["group"] = group;
    ctx->mark_non_differentiable({mean1, var1, mean2, var2, count, saved_z1});
    return {out, mean1, var1, mean2, var2, count, saved_z1};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list result(kArguments);
    const Tensor& grad_out = grads[0];
    if (!grad_out.defined()) return result;  // only the (non-differentiable) statistics were used
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("ghostkernels::ghost_module_bn_train_backward", "")
                               .typed<BackwardSig>();
    const auto s = ctx->get_saved_variables();
    const std::string act = ctx->saved_data["act"].toStringRef(), group = ctx->saved_data["group"].toStringRef();
    const auto call = [&] {
      return op.call(grad_out, s[0], s[1], optional_of(s[2]), optional_of(s[3]), optional_of(s[4]),
                     ctx->saved_data["eps_primary"].toDouble(), s[5], optional_of(s[6]), optional_of(s[7]),
                     optional_of(s[8]), ctx->saved_data["eps_cheap"].toDouble(), s[9], s[10], s[11], s[12], s[13],
                     s[14], ctx->saved_data["out_channels"].toSymInt(), act, group);
    };
    std::array<Tensor, 9> computed;
    if (c10::GradMode::is_enabled()) {
      // create_graph: through the backward op's autograd kernel (a second backward raises: none is supported).
      computed = as_array(call());
    } else if (local_cpu(s[0], group)) {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      computed = local_backward(ctx, grad_out, s, act);
    } else {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;  // skips that kernel's Python wrapper
      computed = as_array(call());
    }
    // needs_input_grad counts the autograd edges, one per tensor argument that was given (a None has none).
    size_t edge = 0;
    for (size_t i = 0; i < kTensorPositions.size(); ++i) {
      if (!s[i].defined()) continue;
      if (ctx->needs_input_grad(edge++)) result[kTensorPositions[i]] = computed[i];
    }
    return result;
  }

  static std::array<Tensor, 9> as_array(const Gradients& g) {
    return {std::get<0>(g), std::get<1>(g), std::get<2>(g), std::get<3>(g), std::get<4>(g),
            std::get<5>(g), std::get<6>(g), std::get<7>(g), std::get<8>(g)};
  }

  // ghost_bn_train_local_backward, its gradients given their parameters' dtypes and strides and the conv biases'
  // zeros added (train_bn.native_backward and _gradients).
  static std::array<Tensor, 9> local_backward(torch::autograd::AutogradContext* ctx, const Tensor& grad_out,
                                              const torch::autograd::variable_list& s, const std::string& act) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("ghostkernels::ghost_bn_train_local_backward", "")
                               .typed<LocalBackwardSig>();
    const auto [grad_x, gw1, dgamma1, dbeta1, gw2, dgamma2, dbeta2] =
        op.call(grad_out, s[0], s[1], optional_of(s[2]), optional_of(s[3]), optional_of(s[4]),
                ctx->saved_data["eps_primary"].toDouble(), s[5], optional_of(s[6]), optional_of(s[7]),
                optional_of(s[8]), ctx->saved_data["eps_cheap"].toDouble(), s[9], s[10], s[11], s[12], s[13], s[14],
                ctx->saved_data["out_channels"].toSymInt(), act);
    // The conv biases' gradients are exactly zero (they cancel in the normalization).
    const auto bias_grad = [](const Tensor& b, const Tensor& w) {
      return b.defined() ? at::zeros({w.size(0)}, b.options()) : Tensor();
    };
    const auto param_grad = [](const Tensor& g, const Tensor& p) { return p.defined() ? like_param(g, p) : Tensor(); };
    return {grad_x,
            like_param(gw1, s[1]),
            bias_grad(s[2], s[1]),
            param_grad(dgamma1, s[3]),
            param_grad(dbeta1, s[4]),
            like_param(gw2, s[5]),
            bias_grad(s[6], s[5]),
            param_grad(dgamma2, s[7]),
            param_grad(dbeta2, s[8])};
  }
};

Outputs bn_train_autograd(const Tensor& x, const Tensor& w_primary, const OptTensor& b_primary,
                          const OptTensor& bn_weight_primary, const OptTensor& bn_bias_primary, double eps_primary,
                          const Tensor& w_cheap, const OptTensor& b_cheap, const OptTensor& bn_weight_cheap,
                          const OptTensor& bn_bias_cheap, double eps_cheap, c10::SymInt out_channels,
                          c10::string_view act, c10::string_view group) {
  const auto outs = BnTrainFunction::apply(x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, eps_primary,
                                           w_cheap, b_cheap, bn_weight_cheap, bn_bias_cheap, eps_cheap, out_channels,
                                           std::string(act), std::string(group));
  return {outs[0], outs[1], outs[2], outs[3], outs[4], outs[5], outs[6]};
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, Autograd, m) { m.impl("ghost_module_bn_train", &bn_train_autograd); }

}  // namespace ghostkernels
