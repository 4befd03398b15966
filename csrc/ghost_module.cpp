// The op contract, defined once for every backend. Kernels register themselves per dispatch key in
// cpu/op_*.cpp and cuda/ghost_module_cuda.cpp; fake kernels and autograd are registered from Python
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
  // GhostNet's bottleneck, inference only (no autograd; FusedGhostBottleneck runs it where nothing needs a
  // gradient), BatchNorms folded into the convolutions, CPU only:
  //   y = ghost_module(x, ghost1_*, mid_channels, act)
  //   y = conv2d(y, dw_w, dw_b, stride, padding k//2, groups=mid)                  when stride == 2
  //   y = y * hardsigmoid(conv1x1(relu(conv1x1(mean_hw(y), se_reduce_*)), se_expand_*))   when se_* are given
  //   out = ghost_module(y, ghost2_*, out_channels, "identity") + shortcut(x)
  //   shortcut(x) = x, or conv1x1(conv2d(x, shortcut_dw_*, stride, padding k//2, groups=C), shortcut_pw_*)
  m.def(
      "ghost_bottleneck(Tensor x, Tensor ghost1_w_primary, Tensor ghost1_b_primary, Tensor ghost1_w_cheap, "
      "Tensor ghost1_b_cheap, SymInt mid_channels, str act, Tensor? dw_w, Tensor? dw_b, int stride, "
      "Tensor? se_reduce_w, Tensor? se_reduce_b, Tensor? se_expand_w, Tensor? se_expand_b, "
      "Tensor ghost2_w_primary, Tensor ghost2_b_primary, Tensor ghost2_w_cheap, Tensor ghost2_b_cheap, "
      "SymInt out_channels, Tensor? shortcut_dw_w, Tensor? shortcut_dw_b, Tensor? shortcut_pw_w, "
      "Tensor? shortcut_pw_b) -> Tensor");
  // act(conv2d(x, w, b, stride, padding k//2)), groups 1, odd k, stride 1 or 2: a convolution with its BatchNorm
  // folded in, inference only (no autograd), CPU only. FusedStemConv and FusedConvBnAct run GhostNet's stem and last
  // ConvBnAct on it where nothing needs a gradient (ghostkernels/conv_bn_act.py).
  m.def("conv2d_act(Tensor x, Tensor w, Tensor b, int stride, str act) -> Tensor");
  // act(x @ w^T + b) for x [N, K], w [out, K]: inference only (no autograd), CPU only. FusedConvHead and
  // FusedClassifier run GhostNet's head on it where nothing needs a gradient (ghostkernels/head.py).
  m.def("linear_act(Tensor x, Tensor w, Tensor b, str act) -> Tensor");
  // A chain of the inference ops above in one call (inference only, no autograd, CPU only; ghostkernels.freeze()
  // runs a fused GhostNet's whole forward on it, ghostkernels/frozen.py). `program` is a list of steps, each an
  // opcode and its integers; each step takes its tensors from `tensors` in order and its input from the step before:
  //   0 conv2d_act        [0, stride, act]                               tensors w, b
  //   1 ghost_bottleneck  [1, mid_channels, act, stride, out_channels]   its 18 tensors in the order of its schema
  //                                                                      (None where that schema has Tensor? None)
  //   2 mean_hw           [2]                                            none: [N, C, H, W] -> [N, C], plane means
  //   3 linear_act        [3, act]                                       tensors w, b
  // act codes: 0 identity, 1 relu, 2 relu6, 3 silu, 4 hardswish. Each step computes exactly what its op computes.
  m.def("chain(Tensor x, Tensor?[] tensors, int[] program) -> Tensor");
  // Internal (the tests reach the CPU depthwise kernel through it): act(conv2d(x, w, b, stride, padding k//2,
  // groups=C)), contiguous output.
  m.def("_depthwise_conv2d(Tensor x, Tensor w, Tensor b, int stride, str act) -> Tensor");
}
