// Forward pass through the dispatcher against the unfolded ATen module (conv2d -> eval BatchNorm -> act, twice,
// then cat and slice), computed in float64.
#include "dispatch.h"
#include "harness.h"
#include "reference.h"
#include "test_cases.h"

namespace gktest {
namespace {

// Runs every case in `dtype` (inputs and parameters rounded from float64) against the float64 reference.
void check_forward(at::ScalarType dtype, double rtol, double atol) {
  at::manual_seed(0);
  for (const GhostCase& c : ghost_cases()) {
    const GhostParams p = random_params(c, at::kDouble);
    const at::Tensor x = random_input(c, at::kDouble);
    const FoldedParams f = fold(p);
    // Round x and the folded parameters to dtype; the reference sees exactly the rounded values.
    const at::Tensor xd = x.to(dtype), w1 = f.w_primary.to(dtype), b1 = f.b_primary.to(dtype),
                     w2 = f.w_cheap.to(dtype), b2 = f.b_cheap.to(dtype);
    const at::Tensor out = ghost_module(xd, w1, b1, w2, b2, c.out_channels, c.act);
    GK_CHECK(out.scalar_type() == dtype, c.name() << ": output dtype " << out.scalar_type());

    const FoldedParams rounded{w1.to(at::kDouble), b1.to(at::kDouble), w2.to(at::kDouble), b2.to(at::kDouble)};
    const at::Tensor expected = dtype == at::kDouble
                                    ? ghost_reference(x, p, c.out_channels, c.act)
                                    : ghost_reference_folded(xd.to(at::kDouble), rounded, c.out_channels, c.act);
    check_close(out, expected, rtol, atol, c.name() + " " + std::string(c10::toString(dtype)));

    // The op contract: the output keeps x's memory format.
    if (c.channels_last) {
      GK_CHECK(out.is_contiguous(at::MemoryFormat::ChannelsLast) && !out.is_contiguous(),
               c.name() << ": a channels_last input must give a channels_last output");
    } else {
      GK_CHECK(out.is_contiguous(), c.name() << ": a contiguous input must give a contiguous output");
    }
  }
}

}  // namespace

// float64: the unfolded and folded BatchNorm differ only by rounding (~1e-16 relative).
GK_TEST(forward_float64_matches_aten) { check_forward(at::kDouble, /*rtol=*/1e-10, /*atol=*/1e-10); }

// float32: accumulation order and float32 rounding over at most C + k*k terms.
GK_TEST(forward_float32_matches_aten) { check_forward(at::kFloat, /*rtol=*/1e-4, /*atol=*/1e-4); }

// bfloat16 (8 mantissa bits): the primary GEMM's result is rounded to bf16 before the depthwise conv reads it (as in
// eager bf16), so the cheap half carries absolute errors of ~2^-9 * sum_k |w_cheap| * |x1| on top of the final
// rounding; with x1 up to ~10 that is ~2e-2 (measured worst over 140 random cases: 2.8e-2 * (1 + |out|)).
GK_TEST(forward_bfloat16_matches_aten) { check_forward(at::kBFloat16, /*rtol=*/5e-2, /*atol=*/5e-2); }

}  // namespace gktest
