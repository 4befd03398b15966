#include "reference.h"

#include <cmath>
#include <sstream>
#include <stdexcept>

namespace gktest {

std::string GhostCase::name() const {
  std::ostringstream s;
  s << "N" << N << " C" << C << " " << H << "x" << W << " init" << init << " ratio" << (mult + 1) << " k" << k
    << " out" << out_channels << " " << act << (channels_last ? " channels_last" : "");
  return s.str();
}

namespace {

BatchNorm random_bn(int64_t channels, at::ScalarType dtype) {
  const auto opt = at::TensorOptions().dtype(dtype);
  return BatchNorm{at::rand({channels}, opt) + 0.5, at::randn({channels}, opt), at::randn({channels}, opt) * 0.5,
                   at::rand({channels}, opt) * 1.5 + 0.5, 1e-5};
}

// Per-channel scale s = gamma / sqrt(var + eps) and shift beta - mean * s of an eval-mode BatchNorm.
std::pair<at::Tensor, at::Tensor> bn_affine(const BatchNorm& bn) {
  const at::Tensor s = bn.gamma / at::sqrt(bn.var + bn.eps);
  return {s, bn.beta - bn.mean * s};
}

at::Tensor eval_bn(const at::Tensor& z, const BatchNorm& bn) {
  return at::batch_norm(z, bn.gamma, bn.beta, bn.mean, bn.var, /*training=*/false, /*momentum=*/0.0, bn.eps,
                        /*cudnn_enabled=*/false);
}

at::Tensor cat_and_slice(const at::Tensor& x1, const at::Tensor& x2, int64_t out_channels) {
  return at::cat({x1, x2}, 1).slice(/*dim=*/1, 0, out_channels);
}

}  // namespace

GhostParams random_params(const GhostCase& c, at::ScalarType dtype) {
  const auto opt = at::TensorOptions().dtype(dtype);
  // Kaiming-like scales keep the pre-activations O(1) whatever C and k are.
  GhostParams p;
  p.w1 = at::randn({c.init, c.C, 1, 1}, opt) / std::sqrt(static_cast<double>(c.C));
  p.w2 = at::randn({c.init * c.mult, 1, c.k, c.k}, opt) / static_cast<double>(c.k);
  p.bn1 = random_bn(c.init, dtype);
  p.bn2 = random_bn(c.init * c.mult, dtype);
  return p;
}

at::Tensor random_input(const GhostCase& c, at::ScalarType dtype) {
  at::Tensor x = at::randn({c.N, c.C, c.H, c.W}, at::TensorOptions().dtype(dtype)) * 3.0;
  return c.channels_last ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
}

FoldedParams fold(const GhostParams& p) {
  const auto [s1, t1] = bn_affine(p.bn1);
  const auto [s2, t2] = bn_affine(p.bn2);
  return FoldedParams{p.w1 * s1.view({-1, 1, 1, 1}), t1, p.w2 * s2.view({-1, 1, 1, 1}), t2};
}

at::Tensor activation(const at::Tensor& z, const std::string& act) {
  if (act == "identity") return z;
  if (act == "relu") return at::relu(z);
  if (act == "relu6") return at::hardtanh(z, 0.0, 6.0);
  if (act == "silu") return at::silu(z);
  if (act == "hardswish") return at::hardswish(z);
  throw std::invalid_argument("reference: unknown act " + act);
}

at::Tensor ghost_reference(const at::Tensor& x, const GhostParams& p, int64_t out_channels, const std::string& act) {
  const int64_t init = p.w1.size(0), k = p.w2.size(-1);
  const at::Tensor x1 = activation(eval_bn(at::conv2d(x, p.w1), p.bn1), act);
  const at::Tensor z2 = at::conv2d(x1, p.w2, /*bias=*/{}, /*stride=*/1, /*padding=*/k / 2, /*dilation=*/1, init);
  const at::Tensor x2 = activation(eval_bn(z2, p.bn2), act);
  return cat_and_slice(x1, x2, out_channels);
}

at::Tensor ghost_reference_folded(const at::Tensor& x, const FoldedParams& f, int64_t out_channels,
                                  const std::string& act) {
  const int64_t init = f.w_primary.size(0), k = f.w_cheap.size(-1);
  const at::Tensor x1 = activation(at::conv2d(x, f.w_primary, f.b_primary), act);
  const at::Tensor x2 = activation(at::conv2d(x1, f.w_cheap, f.b_cheap, 1, k / 2, 1, init), act);
  return cat_and_slice(x1, x2, out_channels);
}

}  // namespace gktest
