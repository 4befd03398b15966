// ghost_module_backward through the dispatcher against autograd through the folded ATen composition, in float64.
//
// The autograd formula of ghost_module is registered from Python, so a C++ caller of the forward op gets no
// gradient from it; C++ training code calls ghost_module_backward directly, as tested here.
#include "dispatch.h"
#include "harness.h"
#include "reference.h"
#include "test_cases.h"

namespace gktest {

GK_TEST(backward_float64_matches_autograd) {
  at::manual_seed(1);
  for (const GhostCase& c : ghost_cases()) {
    const FoldedParams f = fold(random_params(c, at::kDouble));
    const at::Tensor x = random_input(c, at::kDouble);
    const at::Tensor grad_out = at::randn({c.N, c.out_channels, c.H, c.W}, x.options());

    // Leaves for autograd: copies of the op's own arguments.
    at::Tensor xr = x.detach().clone().requires_grad_(true);
    FoldedParams fr{f.w_primary.detach().clone().requires_grad_(true),
                    f.b_primary.detach().clone().requires_grad_(true),
                    f.w_cheap.detach().clone().requires_grad_(true), f.b_cheap.detach().clone().requires_grad_(true)};
    ghost_reference_folded(xr, fr, c.out_channels, c.act).backward(grad_out);

    const auto [gx, gw1, gb1, gw2, gb2] =
        ghost_module_backward(grad_out, x, f.w_primary, f.b_primary, f.w_cheap, f.b_cheap, c.out_channels, c.act);
    // Weight gradients are sums over N*H*W positions; float64 keeps them exact to ~1e-14 relative.
    const double rtol = 1e-9, atol = 1e-9;
    check_close(gx, xr.grad(), rtol, atol, c.name() + ": grad x");
    check_close(gw1, fr.w_primary.grad(), rtol, atol, c.name() + ": grad w_primary");
    check_close(gb1, fr.b_primary.grad(), rtol, atol, c.name() + ": grad b_primary");
    check_close(gw2, fr.w_cheap.grad(), rtol, atol, c.name() + ": grad w_cheap");
    check_close(gb2, fr.b_cheap.grad(), rtol, atol, c.name() + ": grad b_cheap");
    if (c.channels_last) {
      GK_CHECK(gx.is_contiguous(at::MemoryFormat::ChannelsLast) && !gx.is_contiguous(),
               c.name() << ": grad x must be channels_last like x");
    }
  }
}

}  // namespace gktest
