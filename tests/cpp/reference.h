// The Ghost module as GhostNet defines it, written with ATen ops: the reference the fused op is tested against.
//
//   x1  = act(BN1(conv1x1(x, w1)))
//   x2  = act(BN2(depthwise_conv_kxk(x1, w2, padding=k//2, groups=init)))
//   out = cat(x1, x2)[:, :out_channels]
//
// The fused op takes the BatchNorms folded into the convolutions (fold()): w' = w * s, b' = beta - mean * s with
// s = gamma / sqrt(var + eps) per output channel. Checking the op against the unfolded module tests the folding
// formula too; gradients are checked against autograd through the folded composition (the op's own parameters).
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace gktest {

// Sizes of one test configuration. ratio - 1 = mult; out_channels may cut into either half.
struct GhostCase {
  int64_t N, C, H, W;
  int64_t init, mult, k, out_channels;
  std::string act;
  bool channels_last;
  std::string name() const;
};

struct BatchNorm {
  at::Tensor gamma, beta, mean, var;
  double eps;
};

// Unfolded module parameters: bias-free convolutions followed by eval-mode BatchNorms.
struct GhostParams {
  at::Tensor w1, w2;  // [init, C, 1, 1], [init*mult, 1, k, k]
  BatchNorm bn1, bn2;
};

// The fused op's arguments: convolution weights with the BatchNorms folded in.
struct FoldedParams {
  at::Tensor w_primary, b_primary, w_cheap, b_cheap;
};

// Random, non-degenerate parameters (variances bounded away from 0) in `dtype`, from the global ATen generator.
GhostParams random_params(const GhostCase& c, at::ScalarType dtype);
// Random input, scaled so that pre-activations cross the activations' kinks (0, +-3, 6).
at::Tensor random_input(const GhostCase& c, at::ScalarType dtype);

FoldedParams fold(const GhostParams& p);
at::Tensor activation(const at::Tensor& z, const std::string& act);
at::Tensor ghost_reference(const at::Tensor& x, const GhostParams& p, int64_t out_channels, const std::string& act);
at::Tensor ghost_reference_folded(const at::Tensor& x, const FoldedParams& f, int64_t out_channels,
                                  const std::string& act);

}  // namespace gktest
