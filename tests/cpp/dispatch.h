// The ghostkernels ops as a C++ application calls them: looked up by name in the dispatcher and called through a
// typed handle. No ghostkernels header or symbol is involved; the ops exist because libghostkernels is loaded
// (linked with --no-as-needed through the ghostkernels::ghostkernels target) and registered them at load time.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/Tensor.h>

#include <string_view>
#include <tuple>

namespace gktest {

using GhostGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// ghostkernels::ghost_module(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
inline at::Tensor ghost_module(const at::Tensor& x, const at::Tensor& w_primary, const at::Tensor& b_primary,
                               const at::Tensor& w_cheap, const at::Tensor& b_cheap, int64_t out_channels,
                               std::string_view act) {
  // The schema says SymInt and str, so the typed signature must use c10::SymInt and c10::string_view.
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("ghostkernels::ghost_module", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, c10::SymInt, c10::string_view)>();
  return op.call(x, w_primary, b_primary, w_cheap, b_cheap, c10::SymInt(out_channels), c10::string_view(act));
}

// ghostkernels::ghost_module_backward(grad_out, x, ...) -> grads of (x, w_primary, b_primary, w_cheap, b_cheap)
inline GhostGrads ghost_module_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w_primary,
                                        const at::Tensor& b_primary, const at::Tensor& w_cheap,
                                        const at::Tensor& b_cheap, int64_t out_channels, std::string_view act) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("ghostkernels::ghost_module_backward", "")
          .typed<GhostGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, c10::SymInt, c10::string_view)>();
  return op.call(grad_out, x, w_primary, b_primary, w_cheap, b_cheap, c10::SymInt(out_channels),
                 c10::string_view(act));
}

}  // namespace gktest
