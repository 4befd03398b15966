// The CPU launcher of ghostkernels::ghost_bottleneck (ghost_bottleneck_forward in entry_points.h; its binding is
// op_ghost_bottleneck.cpp): GhostNet's whole bottleneck in one op call (inference only).
//
// Why one op: after the Ghost modules are fused, what is left of a bottleneck (the stride-2 depthwise conv, the
// squeeze-excite, the shortcut, the residual add, the BatchNorms) is a dozen small eager ops per block, each with
// its dispatcher and Python overhead, an output allocation and a pass over memory; end to end they cost more than
// the fused Ghost modules (bench/NOTES.md, entry 12). Here the block is one call: both Ghost modules on the fused
// kernel, the depthwise convs on launch_depthwise_conv.cpp's kernel, the squeeze-excite's mean taken from that kernel's
// output pass where a depthwise conv precedes it and applied in place, and the shortcut added in ghost2's output
// store (no separate add pass). GhostNetV2's gated block (ghost_bottleneck_gated) first computes ghost1's DFC map
// (launch_dfc_gate.cpp), which ghost1's kernel multiplies into both halves as it stores them. In float32 a stride-2
// block runs ghost1 and conv_dw as one pass (launch_ghost_dw_front.cpp), ghost1's output never in memory. The batch is processed
// in chunks whose ghost1 output fits in cache, and the kernels' intermediates come from, and go back to, the CPU
// block pool (util_tensor_pool.h).
//
// Numerics: each piece computes in float32 (bfloat16 inputs: float accumulation, bfloat16 intermediates, as
// eager does in bfloat16); float64 runs ATen's float64 ops around the generic Ghost-module kernel.
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/record_function.h>

#include <algorithm>

#include "../activations.h"
#include "../ghost_module_check.h"
#include "entry_points.h"
#include "util_image_split.h"
#include "util_tensor_pool.h"

namespace ghostkernels {
namespace cpu {
namespace {

// The block for a chunk of gn images of x, written into `out` (that chunk of the op's output).
void block_forward(const BottleneckArgs& a, const BottleneckDims& d, int64_t gn, const at::Tensor& x,
                   const at::Tensor& out) {
  const at::MemoryFormat fmt = output_memory_format(x);
  GhostDims d1 = d.ghost1, d2 = d.ghost2;
  d1.N = d2.N = gn;
  // Each piece is a user scope in torch.profiler's trace (a flag test when no profiler runs): a profile of a frozen
  // network shows the block's parts, as an eager one shows its layers.
  // The shortcut first, while x is still in cache from the block before; ghost2 adds it in its output store.
  at::Tensor residual = x;
  if (d.has_shortcut) {
    RECORD_USER_SCOPE("ghostkernels::ghost_bottleneck/shortcut");
    const at::Tensor s = cpu::depthwise_conv(x.contiguous(fmt), *a.sc_dw_w, *a.sc_dw_b, a.stride, Act::Identity);
    residual = cpu::pointwise_conv(s, *a.sc_pw_w, *a.sc_pw_b, Act::Identity);
  }
  // GhostNetV2's block: ghost1's DFC map first (float32, for the Ghost-module kernel to multiply into its stores).
  at::Tensor gate;
  if (d.gated) {
    RECORD_USER_SCOPE("ghostkernels::ghost_bottleneck/dfc_gate");
    GateDims dg = d.gate;
    dg.N = gn;
    gate = cpu::dfc_gate_map(x, *a.gate[0], *a.gate[1], *a.gate[2], *a.gate[3], *a.gate[4], *a.gate[5], dg,
                             /*float_map=*/true);
  }
  at::Tensor y, sums;
  if (d.has_dw && cpu::ghost_dw_front_applies(x, d1, a.dw_w->size(2), a.stride)) {
    // ghost1 and conv_dw in one pass, ghost1's output never in memory (launch_ghost_dw_front.cpp).
    RECORD_USER_SCOPE("ghostkernels::ghost_bottleneck/ghost1_dw");
    y = cpu::ghost_dw_front(x, a.g1w1, a.g1b1, a.g1w2, a.g1b2, d1, gate, *a.dw_w, *a.dw_b, a.stride,
                            d.has_se ? &sums : nullptr);
  } else {
    {
      RECORD_USER_SCOPE("ghostkernels::ghost_bottleneck/ghost1");
      y = cpu::ghost_forward(x, a.g1w1, a.g1b1, a.g1w2, a.g1b2, d1, at::Tensor(), at::Tensor(), gate);
    }
    if (d.has_dw) {
      RECORD_USER_SCOPE("ghostkernels::ghost_bottleneck/conv_dw");
      y = cpu::depthwise_conv(y, *a.dw_w, *a.dw_b, a.stride, Act::Identity, d.has_se ? &sums : nullptr);
    }
  }
  if (d.has_se) {
    RECORD_USER_SCOPE("ghostkernels::ghost_bottleneck/se");
    if (!y.is_contiguous()) y = y.contiguous();  // channels_last inputs: the SE works on NCHW planes
    cpu::squeeze_excite_(y, sums, *a.se_rw, *a.se_rb, *a.se_ew, *a.se_eb);
  }
  RECORD_USER_SCOPE("ghostkernels::ghost_bottleneck/ghost2");
  cpu::ghost_forward(y, a.g2w1, a.g2b1, a.g2w2, a.g2b2, d2, residual.contiguous(output_memory_format(y)), out);
}

// Images per chunk: the block runs on chunks of the batch whose largest intermediate (ghost1's output) fits in
// kChunkBytes, so that the depthwise conv and ghost2 read it from cache rather than from memory. At batch 8, the
// 112x112 block's ghost1 output is 19 MB for the batch and 2.4 MB per image; run whole, reading it back from memory
// took longer than computing it (bench/NOTES.md, entry 12).
int64_t images_per_chunk(const BottleneckDims& d, int64_t element_size) {
  constexpr int64_t kChunkBytes = 2 << 20;
  const int64_t per_image = d.ghost1.oc * d.ghost1.H * d.ghost1.W * element_size;
  return std::max<int64_t>(1, std::min<int64_t>(d.ghost1.N, kChunkBytes / std::max<int64_t>(1, per_image)));
}

}  // namespace

at::Tensor ghost_bottleneck_forward(const BottleneckArgs& a, const BottleneckDims& d) {
  const at::Tensor& x = a.x;
  const at::MemoryFormat fmt = output_memory_format(x);
  const int64_t N = d.ghost1.N, g = images_per_chunk(d, x.element_size());
  at::Tensor out = cpu::pooled_empty({N, a.out_channels, d.Ho, d.Wo}, x.options(), fmt);
  // Every other tensor allocated below dies inside this call, so it may take a larger idle pool block: fewer
  // distinct blocks per forward of a network (util_tensor_pool.h; bench/NOTES.md, entry 28).
  const cpu::TransientAllocationScope transient;
  // A fused but not frozen network calls this op per block: from 2 images per thread, one slice of the batch per
  // thread, each running the whole block on its images (util_image_split.h). Inside the frozen chain's slices this
  // runs on one thread already.
  const auto run = [&](int64_t first, int64_t count) {
    for (int64_t n0 = first; n0 < first + count; n0 += g) {
      const int64_t gn = std::min(g, first + count - n0);
      block_forward(a, d, gn, x.narrow(0, n0, gn), out.narrow(0, n0, gn));
    }
  };
  const int64_t slices = cpu::image_slices(N, "ghostkernels::ghost_bottleneck (CPU)");
  if (slices == 1) {
    run(0, N);
  } else {
    cpu::for_each_image_slice(N, slices, [&](int64_t, int64_t n0, int64_t n) {
      const cpu::TransientAllocationScope slice_transient;  // the scope is per thread
      run(n0, n);
    });
  }
  return out;
}

}  // namespace cpu
}  // namespace ghostkernels
