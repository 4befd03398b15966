// The CPU kernels of the inference ops, callable from C++ without the dispatcher: ghostkernels::chain
// (op_chain.cpp) runs a whole network as one op call and calls them directly. Each validates its arguments
// exactly as the op does; the op registrations (TORCH_LIBRARY_IMPL) bind these same functions.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

namespace ghostkernels {
namespace cpu {

// ghostkernels::ghost_bottleneck (op_ghost_bottleneck.cpp); the schema is in csrc/ghost_module.cpp.
at::Tensor ghost_bottleneck_cpu(const at::Tensor& x, const at::Tensor& g1w1, const at::Tensor& g1b1,
                                const at::Tensor& g1w2, const at::Tensor& g1b2, int64_t mid, c10::string_view act,
                                const std::optional<at::Tensor>& dw_w, const std::optional<at::Tensor>& dw_b,
                                int64_t stride, const std::optional<at::Tensor>& se_rw,
                                const std::optional<at::Tensor>& se_rb, const std::optional<at::Tensor>& se_ew,
                                const std::optional<at::Tensor>& se_eb, const at::Tensor& g2w1,
                                const at::Tensor& g2b1, const at::Tensor& g2w2, const at::Tensor& g2b2,
                                int64_t out_channels, const std::optional<at::Tensor>& sc_dw_w,
                                const std::optional<at::Tensor>& sc_dw_b, const std::optional<at::Tensor>& sc_pw_w,
                                const std::optional<at::Tensor>& sc_pw_b);

// ghostkernels::conv2d_act (op_conv2d_act.cpp).
at::Tensor conv2d_act_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                          c10::string_view act);

// ghostkernels::linear_act (op_linear_act.cpp).
at::Tensor linear_act_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, c10::string_view act);

}  // namespace cpu
}  // namespace ghostkernels
