// ghostkernels::ghost_bn_update_running_stats (schema in ghost_module.cpp), for every device
// (CompositeExplicitAutograd): a BatchNorm's running statistics updated in place from the batch statistics of
// ghost_module_bn_train, as nn.BatchNorm2d updates them.
//
// Why an op: in Python the update of a Ghost module's two BNs was a dozen small tensor ops (foreach included), about
// 0.13 ms of a 1 ms training step of a late module at batch 1 on the benchmarks' 2-core CPU, where nn.BatchNorm2d
// does it inside its own kernel (bench/NOTES.md entry 48). On the CPU the update is one loop per BN, computed in
// double and rounded once into each buffer (nn.BatchNorm2d rounds each product in the buffer's precision; the two
// agree to rounding, which is what the tests hold them to); on other devices it is the same formula in ATen ops.
// The buffers need no autograd: they never require grad, and the statistics outputs are not differentiable.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <optional>

namespace ghostkernels {
namespace {

constexpr const char* kOp = "ghostkernels::ghost_bn_update_running_stats";

void check_inputs(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& tracked,
                  const at::Tensor& mean, const at::Tensor& var, const at::Tensor& count) {
  const int64_t c = running_mean.numel();
  TORCH_CHECK_VALUE(running_mean.dim() == 1 && running_var.dim() == 1 && mean.dim() == 1 && var.dim() == 1, kOp,
                    ": running_mean, running_var, mean and var must be 1-D (one value per channel)");
  TORCH_CHECK_VALUE(running_var.numel() == c && mean.numel() == c && var.numel() == c, kOp,
                    ": running_mean, running_var, mean and var must have the same number of channels, got ", c, ", ",
                    running_var.numel(), ", ", mean.numel(), " and ", var.numel());
  TORCH_CHECK_VALUE(tracked.numel() == 1 && tracked.scalar_type() == at::kLong, kOp,
                    ": num_batches_tracked must be one int64 value, got ", tracked.scalar_type(), " of shape ",
                    tracked.sizes());
  TORCH_CHECK_VALUE(count.numel() == 1, kOp, ": count must be one value, got shape ", count.sizes());
  for (const at::Tensor* t : {&running_mean, &running_var, &mean, &var, &count}) {
    TORCH_CHECK_TYPE(t->is_floating_point(), kOp, ": the statistics and buffers must be floating point, got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == running_mean.device(), kOp, ": every tensor must be on ",
                      running_mean.device(), ", got one on ", t->device());
  }
  TORCH_CHECK_VALUE(tracked.device() == running_mean.device(), kOp, ": num_batches_tracked must be on ",
                    running_mean.device(), ", got ", tracked.device());
}

template <typename buffer_t, typename stats_t>
void update_cpu(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean, const at::Tensor& var,
                double factor, double unbias) {
  buffer_t* rm = running_mean.mutable_data_ptr<buffer_t>();
  buffer_t* rv = running_var.mutable_data_ptr<buffer_t>();
  const stats_t* m = mean.const_data_ptr<stats_t>();
  const stats_t* v = var.const_data_ptr<stats_t>();
  for (const auto i : c10::irange(running_mean.numel())) {
    rm[i] = static_cast<buffer_t>((1.0 - factor) * static_cast<double>(rm[i]) + factor * static_cast<double>(m[i]));
    rv[i] = static_cast<buffer_t>((1.0 - factor) * static_cast<double>(rv[i]) +
                                  factor * static_cast<double>(v[i]) * unbias);
  }
}

void update_running_stats(at::Tensor& running_mean, at::Tensor& running_var, at::Tensor& num_batches_tracked,
                          const at::Tensor& mean, const at::Tensor& var, const at::Tensor& count,
                          std::optional<double> momentum) {
  check_inputs(running_mean, running_var, num_batches_tracked, mean, var, count);
  num_batches_tracked.add_(1);
  // momentum=None: a cumulative average, factor 1 / num_batches_tracked after the increment (nn.BatchNorm2d reads
  // the count on the host as well).
  const double factor = momentum.has_value() ? *momentum : 1.0 / static_cast<double>(num_batches_tracked.item<int64_t>());
  const bool plain = running_mean.device().is_cpu() && running_mean.is_contiguous() && running_var.is_contiguous() &&
                     running_mean.scalar_type() == running_var.scalar_type() && mean.scalar_type() == var.scalar_type() &&
                     (mean.scalar_type() == at::kFloat || mean.scalar_type() == at::kDouble);
  if (!plain) {
    // Other devices (and odd layouts): the same formula in ATen ops, in the buffers' precision.
    const at::Tensor unbiased = var.mul(count.div(count.sub(1)));
    running_mean.mul_(1.0 - factor).add_(mean.to(running_mean.scalar_type()), factor);
    running_var.mul_(1.0 - factor).add_(unbiased.to(running_var.scalar_type()), factor);
    return;
  }
  const double n = count.item<double>();
  const double unbias = n / (n - 1.0);  // n == 1 gives inf, as nn.BatchNorm2d's var * n / (n - 1) (it raises first)
  const at::Tensor m = mean.contiguous(), v = var.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, running_mean.scalar_type(), "ghost_bn_update", [&] {
    using buffer_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "ghost_bn_update", [&] {
      update_cpu<buffer_t, scalar_t>(running_mean, running_var, m, v, factor, unbias);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ghostkernels, CompositeExplicitAutograd, m) {
  m.impl("ghost_bn_update_running_stats", &update_running_stats);
}

}  // namespace ghostkernels
