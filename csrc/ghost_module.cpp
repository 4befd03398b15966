// The op contract, defined once for every backend. Kernels register themselves per dispatch key in
// cpu/ghost_module_cpu.cpp and cuda/ghost_module_cuda.cpp; fake kernels and autograd are registered from Python
// (ghostkernels/_registration.py), the way pytorch/extension-cpp does it.
#include <torch/library.h>

TORCH_LIBRARY(ghostkernels, m) {
  // out = cat(act(conv1x1(x, w_primary) + b_primary), act(dwconv_kxk(x1, w_cheap) + b_cheap))[:, :out_channels]
  m.def(
      "ghost_module(Tensor x, Tensor w_primary, Tensor b_primary, Tensor w_cheap, Tensor b_cheap, "
      "SymInt out_channels, str act) -> Tensor");
  // Gradients of x, w_primary, b_primary, w_cheap, b_cheap. Only x (and the weights) are needed: every
  // intermediate is recomputed from x, so nothing of the forward pass is kept alive for backward.
  m.def(
      "ghost_module_backward(Tensor grad_out, Tensor x, Tensor w_primary, Tensor b_primary, Tensor w_cheap, "
      "Tensor b_cheap, SymInt out_channels, str act) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
