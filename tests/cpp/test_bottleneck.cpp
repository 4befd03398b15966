// ghostkernels::ghost_bottleneck through the dispatcher against GhostNet's bottleneck written with ATen ops (two
// folded Ghost modules from reference.h, a strided depthwise conv, the squeeze-excite, the shortcut), in float64 and
// float32. The optional weight groups of the schema (Tensor?) are passed as std::optional.
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

#include "harness.h"
#include "reference.h"

namespace gktest {
namespace {

using Opt = std::optional<at::Tensor>;

at::Tensor ghost_bottleneck(const at::Tensor& x, const FoldedParams& g1, int64_t mid, const Opt& dw_w,
                            const Opt& dw_b, int64_t stride, const Opt& se_rw, const Opt& se_rb, const Opt& se_ew,
                            const Opt& se_eb, const FoldedParams& g2, int64_t out_channels, const Opt& sc_dw_w,
                            const Opt& sc_dw_b, const Opt& sc_pw_w, const Opt& sc_pw_b) {
  using T = const at::Tensor&;
  using O = const Opt&;
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ghostkernels::ghost_bottleneck", "")
                             .typed<at::Tensor(T, T, T, T, T, c10::SymInt, c10::string_view, O, O, int64_t, O, O, O,
                                               O, T, T, T, T, c10::SymInt, O, O, O, O)>();
  return op.call(x, g1.w_primary, g1.b_primary, g1.w_cheap, g1.b_cheap, c10::SymInt(mid), "relu", dw_w, dw_b, stride,
                 se_rw, se_rb, se_ew, se_eb, g2.w_primary, g2.b_primary, g2.w_cheap, g2.b_cheap,
                 c10::SymInt(out_channels), sc_dw_w, sc_dw_b, sc_pw_w, sc_pw_b);
}

FoldedParams random_ghost(int64_t inp, int64_t oup) {
  const int64_t init = (oup + 1) / 2;
  const auto o = at::TensorOptions().dtype(at::kDouble);
  return {at::randn({init, inp, 1, 1}, o) * (3.0 / std::sqrt(static_cast<double>(inp))), at::randn({init}, o),
          at::randn({init, 1, 3, 3}, o) * 0.4, at::randn({init}, o)};
}

at::Tensor depthwise(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride) {
  const int64_t k = w.size(2);
  return at::conv2d(x, w, b, {stride, stride}, {k / 2, k / 2}, {1, 1}, x.size(1));
}

struct BlockCase {
  int64_t N, C, H, W, mid, out, k, stride;
  bool se;
};

void check_block(const BlockCase& c, at::ScalarType dtype, double tol) {
  const auto o = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor x = at::randn({c.N, c.C, c.H, c.W}, o);
  const FoldedParams g1 = random_ghost(c.C, c.mid), g2 = random_ghost(c.mid, c.out);
  Opt dw_w, dw_b, se_rw, se_rb, se_ew, se_eb, sc_dw_w, sc_dw_b, sc_pw_w, sc_pw_b;
  if (c.stride == 2) dw_w = at::randn({c.mid, 1, c.k, c.k}, o) * (1.2 / c.k), dw_b = at::randn({c.mid}, o);
  const int64_t r = std::max<int64_t>(4, c.mid / 4);
  if (c.se) {
    se_rw = at::randn({r, c.mid, 1, 1}, o) * (2.0 / std::sqrt(static_cast<double>(c.mid)));
    se_rb = at::randn({r}, o), se_ew = at::randn({c.mid, r, 1, 1}, o) * 0.5, se_eb = at::randn({c.mid}, o);
  }
  if (c.C != c.out || c.stride != 1) {
    sc_dw_w = at::randn({c.C, 1, c.k, c.k}, o) * (1.2 / c.k), sc_dw_b = at::randn({c.C}, o);
    sc_pw_w = at::randn({c.out, c.C, 1, 1}, o) / std::sqrt(static_cast<double>(c.C)), sc_pw_b = at::randn({c.out}, o);
  }
  // Round everything to dtype; the reference sees exactly the rounded values.
  const auto cast = [&](const at::Tensor& t) { return t.to(dtype).to(at::kDouble); };
  const auto cast_opt = [&](const Opt& t) { return t ? Opt(cast(*t)) : Opt(); };
  const auto cast_ghost = [&](const FoldedParams& g) {
    return FoldedParams{cast(g.w_primary), cast(g.b_primary), cast(g.w_cheap), cast(g.b_cheap)};
  };
  const at::Tensor xr = cast(x);
  const FoldedParams g1r = cast_ghost(g1), g2r = cast_ghost(g2);
  Opt dw_wr = cast_opt(dw_w), dw_br = cast_opt(dw_b), se_rwr = cast_opt(se_rw), se_rbr = cast_opt(se_rb),
      se_ewr = cast_opt(se_ew), se_ebr = cast_opt(se_eb), sc_dw_wr = cast_opt(sc_dw_w), sc_dw_br = cast_opt(sc_dw_b),
      sc_pw_wr = cast_opt(sc_pw_w), sc_pw_br = cast_opt(sc_pw_b);

  at::Tensor y = ghost_reference_folded(xr, g1r, c.mid, "relu");
  if (dw_wr) y = depthwise(y, *dw_wr, *dw_br, c.stride);
  if (se_rwr) {
    const at::Tensor s = at::relu(at::conv2d(y.mean({2, 3}, /*keepdim=*/true), *se_rwr, *se_rbr));
    y = y * (at::conv2d(s, *se_ewr, *se_ebr) + 3.0).clamp(0.0, 6.0) / 6.0;
  }
  at::Tensor expected = ghost_reference_folded(y, g2r, c.out, "identity");
  expected = sc_dw_wr ? expected + at::conv2d(depthwise(xr, *sc_dw_wr, *sc_dw_br, c.stride), *sc_pw_wr, *sc_pw_br)
                      : expected + xr;

  const auto d = [&](const at::Tensor& t) { return t.to(dtype); };
  const auto d_opt = [&](const Opt& t) { return t ? Opt(d(*t)) : Opt(); };
  const auto d_ghost = [&](const FoldedParams& g) {
    return FoldedParams{d(g.w_primary), d(g.b_primary), d(g.w_cheap), d(g.b_cheap)};
  };
  const at::Tensor out = ghost_bottleneck(d(x), d_ghost(g1), c.mid, d_opt(dw_w), d_opt(dw_b), c.stride, d_opt(se_rw),
                                          d_opt(se_rb), d_opt(se_ew), d_opt(se_eb), d_ghost(g2), c.out,
                                          d_opt(sc_dw_w), d_opt(sc_dw_b), d_opt(sc_pw_w), d_opt(sc_pw_b));
  GK_CHECK(out.scalar_type() == dtype, "output dtype " << out.scalar_type());
  const double scale = std::max(1.0, expected.abs().max().item<double>());
  check_close(out, expected, tol, tol * scale,
              "bottleneck " + std::to_string(c.C) + "-" + std::to_string(c.mid) + "-" + std::to_string(c.out) +
                  " stride " + std::to_string(c.stride) + " " + std::string(c10::toString(dtype)));
}

const BlockCase kCases[] = {
    {2, 16, 15, 17, 48, 24, 3, 2, false},  // stride 2, shortcut
    {2, 24, 12, 9, 72, 40, 5, 2, true},    // stride 2, squeeze-excite, k = 5
    {3, 16, 8, 8, 32, 16, 3, 1, false},    // identity shortcut
    {2, 20, 7, 7, 60, 28, 3, 1, true},     // stride 1 with a shortcut and a squeeze-excite
};

}  // namespace

GK_TEST(bottleneck_matches_aten) {
  at::manual_seed(1);
  for (const BlockCase& c : kCases) {
    check_block(c, at::kDouble, 1e-10);
    check_block(c, at::kFloat, 1e-4);
  }
}

}  // namespace gktest
