// Bad input raises c10::ValueError / c10::TypeError (Python's ValueError / TypeError) naming the problem, before
// any kernel runs.
#include <c10/util/Exception.h>

#include <functional>

#include "dispatch.h"
#include "harness.h"

namespace gktest {
namespace {

// A valid call: C=4, init=3, ratio 2 (mult 1), k=3, out_channels=6; each check breaks one thing.
struct ValidCall {
  at::Tensor x = at::randn({1, 4, 5, 5}, at::kDouble);
  at::Tensor w1 = at::randn({3, 4, 1, 1}, at::kDouble);
  at::Tensor b1 = at::randn({3}, at::kDouble);
  at::Tensor w2 = at::randn({3, 1, 3, 3}, at::kDouble);
  at::Tensor b2 = at::randn({3}, at::kDouble);
  int64_t out_channels = 6;
  std::string act = "relu";
  at::Tensor run() const { return ghost_module(x, w1, b1, w2, b2, out_channels, act); }
};

template <typename E>
void expect_error(const std::function<void(ValidCall&)>& breaks, const std::string& substring,
                  const std::string& what) {
  ValidCall call;
  breaks(call);
  check_throws<E>([&] { call.run(); }, substring, what);
}

}  // namespace

GK_TEST(bad_inputs_raise) {
  at::manual_seed(2);
  ValidCall ok;
  GK_CHECK(ok.run().sizes() == at::IntArrayRef({1, 6, 5, 5}), "the unbroken call must work");

  expect_error<c10::ValueError>([](ValidCall& c) { c.act = "gelu"; }, "unknown act 'gelu'", "unknown activation");
  expect_error<c10::ValueError>([](ValidCall& c) { c.x = c.x[0]; }, "x must be 4-D", "3-D input");
  expect_error<c10::ValueError>([](ValidCall& c) { c.x = at::randn({1, 5, 5, 5}, at::kDouble); },
                                "channel mismatch", "x channels != w_primary channels");
  expect_error<c10::ValueError>([](ValidCall& c) { c.w1 = at::randn({3, 4, 3, 3}, at::kDouble); },
                                "w_primary must be [init, C, 1, 1]", "non-1x1 primary weight");
  expect_error<c10::ValueError>([](ValidCall& c) { c.b1 = at::randn({4}, at::kDouble); }, "b_primary must be [3]",
                                "primary bias of the wrong length");
  expect_error<c10::ValueError>([](ValidCall& c) { c.w2 = at::randn({3, 2, 3, 3}, at::kDouble); },
                                "depthwise weight", "non-depthwise cheap weight");
  expect_error<c10::ValueError>(
      [](ValidCall& c) {
        c.w2 = at::randn({4, 1, 3, 3}, at::kDouble);
        c.b2 = at::randn({4}, at::kDouble);
      },
      "not a positive multiple of init=3", "cheap channels not a multiple of init");
  expect_error<c10::ValueError>([](ValidCall& c) { c.w2 = at::randn({3, 1, 2, 2}, at::kDouble); },
                                "must be odd", "even depthwise kernel");
  expect_error<c10::ValueError>([](ValidCall& c) { c.out_channels = 0; }, "out_channels=0 is outside [1, init*ratio=6]",
                                "out_channels = 0");
  expect_error<c10::ValueError>([](ValidCall& c) { c.out_channels = 7; }, "out_channels=7 is outside",
                                "out_channels > init * ratio");
  expect_error<c10::TypeError>([](ValidCall& c) { c.w2 = c.w2.to(at::kFloat); }, "dtype mismatch",
                               "weights of another dtype than x");
  expect_error<c10::TypeError>(
      [](ValidCall& c) {
        c.x = c.x.to(at::kInt);
        c.w1 = c.w1.to(at::kInt);
        c.b1 = c.b1.to(at::kInt);
        c.w2 = c.w2.to(at::kInt);
        c.b2 = c.b2.to(at::kInt);
      },
      "supported dtypes are", "integer tensors");

  // The backward op checks grad_out's shape against the forward arguments.
  check_throws<c10::ValueError>(
      [&] {
        ghost_module_backward(at::randn({1, 5, 5, 5}, at::kDouble), ok.x, ok.w1, ok.b1, ok.w2, ok.b2, ok.out_channels,
                              ok.act);
      },
      "grad_out must be [1, 6, 5, 5]", "grad_out of the wrong shape");
}

}  // namespace gktest
