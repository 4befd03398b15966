// The CUDA kernels through the dispatcher, in float32, against the float64 ATen reference on the CPU. Skipped (not
// passed) when the library was built without CUDA kernels or no GPU is visible; a CUDA build that finds a GPU but
// has no CUDA kernel registered fails.
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "dispatch.h"
#include "harness.h"
#include "reference.h"
#include "test_cases.h"

namespace gktest {

GK_TEST(cuda_float32_matches_aten) {
#ifndef GHOSTKERNELS_WITH_CUDA
  throw Skip("the library was built without CUDA kernels");
#endif
  if (!at::hasCUDA()) throw Skip("no CUDA device is visible");
  const auto handle = c10::Dispatcher::singleton().findSchemaOrThrow("ghostkernels::ghost_module", "");
  GK_CHECK(handle.hasKernelForDispatchKey(c10::DispatchKey::CUDA), "a CUDA build must register a CUDA kernel");

  at::manual_seed(3);
  for (const GhostCase& c : ghost_cases()) {
    const FoldedParams f = fold(random_params(c, at::kDouble));
    const at::Tensor x = random_input(c, at::kDouble);
    const at::Tensor grad_out = at::randn({c.N, c.out_channels, c.H, c.W}, x.options());
    auto gpu = [](const at::Tensor& t) { return t.to(at::kCUDA, at::kFloat); };
    // Round to float32 first so that the reference sees exactly the kernel's inputs.
    auto rounded = [](const at::Tensor& t) { return t.to(at::kFloat).to(at::kDouble); };

    const at::Tensor out = ghost_module(gpu(x), gpu(f.w_primary), gpu(f.b_primary), gpu(f.w_cheap), gpu(f.b_cheap),
                                        c.out_channels, c.act);
    const FoldedParams fr{rounded(f.w_primary).requires_grad_(true), rounded(f.b_primary).requires_grad_(true),
                          rounded(f.w_cheap).requires_grad_(true), rounded(f.b_cheap).requires_grad_(true)};
    at::Tensor xr = rounded(x).requires_grad_(true);
    const at::Tensor expected = ghost_reference_folded(xr, fr, c.out_channels, c.act);
    // float32 with float accumulation over at most C + k*k terms.
    check_close(out.cpu(), expected.detach(), 1e-4, 1e-4, c.name() + ": CUDA forward");

    expected.backward(grad_out);
    const auto [gx, gw1, gb1, gw2, gb2] =
        ghost_module_backward(gpu(grad_out), gpu(x), gpu(f.w_primary), gpu(f.b_primary), gpu(f.w_cheap),
                              gpu(f.b_cheap), c.out_channels, c.act);
    // Weight gradients sum N*H*W float32 products (parallel reductions in any order): 1e-3 leaves ample room.
    check_close(gx.cpu(), xr.grad(), 1e-3, 1e-3, c.name() + ": CUDA grad x");
    check_close(gw1.cpu(), fr.w_primary.grad(), 1e-3, 1e-3, c.name() + ": CUDA grad w_primary");
    check_close(gb1.cpu(), fr.b_primary.grad(), 1e-3, 1e-3, c.name() + ": CUDA grad b_primary");
    check_close(gw2.cpu(), fr.w_cheap.grad(), 1e-3, 1e-3, c.name() + ": CUDA grad w_cheap");
    check_close(gb2.cpu(), fr.b_cheap.grad(), 1e-3, 1e-3, c.name() + ": CUDA grad b_cheap");
  }
}

}  // namespace gktest
