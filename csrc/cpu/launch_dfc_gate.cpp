// The CPU computation of ghostkernels::dfc_gate (dfc_gate_map in entry_points.h): the launcher of the AVX-512 kernel
// (kernel_dfc_gate_avx512.h, float32 and bfloat16 NCHW), and ATen's ops for everything else.
//
// Work: the pooling pass over x's planes, then (group of images, block of output channels) items for the map pass.
// A group is as many images as fit kGroupColumns pooled pixels (GhostNetV2's 3x3 maps: up to 14, its 7x7 ones 2,
// larger maps one each), side by side in the 1x1 conv's GEMM columns, so small maps fill the vector lanes. Where the
// groups alone would leave a thread idle (batch 1), a group's channels are split into at least as many blocks as
// there are threads (twice that, for balance), each block's 1x1-conv rows (a multiple of the GEMM's 6-row tile)
// sized to stay in L2 with its planes.
// Per-operator ATen headers only (ATen/ATen.h costs ~15 s of compile per file; the op library has
// ~30 of them): including ATen/Functions.h here is a compile error.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/avg_pool2d.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "../ghost_module_check.h"
#include "entry_points.h"
#include "kernel_dfc_gate_avx512.h"
#include "kernel_ghost_forward_avx512.h"  // avx512_column_masks
#include "util_bf16_widen.h"
#include "util_float_weights.h"
#include "util_kernel_choice.h"
#include "util_tensor_pool.h"
#include "util_work_plan.h"

namespace ghostkernels {
namespace cpu {
namespace {

// Floats of slack after a float map's last plane: the gated Ghost-module kernel's window loads read up to 31 floats
// past a plane's last used element (kernel_ghost_forward_avx512.h).
constexpr int64_t kMapSlack = 32;
// Pooled pixels per group of images at most (two 4-vector strips of the GEMM), unless one image has more.
constexpr int64_t kGroupColumns = 128;

at::Tensor map_aten(const at::Tensor& x, const at::Tensor& w_reduce, const at::Tensor& b_reduce,
                    const at::Tensor& w_h, const at::Tensor& b_h, const at::Tensor& w_v, const at::Tensor& b_v,
                    const GateDims& d) {
  at::Tensor z = conv2d_maybe_widened(at::avg_pool2d(x, {2, 2}, {2, 2}), w_reduce, b_reduce);
  z = conv2d_maybe_widened(z, w_h, b_h, at::IntArrayRef{1, 1}, at::IntArrayRef{0, d.KH / 2}, at::IntArrayRef{1, 1}, d.O);
  z = conv2d_maybe_widened(z, w_v, b_v, at::IntArrayRef{1, 1}, at::IntArrayRef{d.KV / 2, 0}, at::IntArrayRef{1, 1}, d.O);
  return at::sigmoid(z);
}

at::Tensor map_avx512(const at::Tensor& x, const at::Tensor& w_reduce, const at::Tensor& b_reduce,
                      const at::Tensor& w_h, const at::Tensor& b_h, const at::Tensor& w_v, const at::Tensor& b_v,
                      const GateDims& d, bool float_map) {
  const int64_t G = d.Hg * d.Wg;
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const at::TensorOptions f32 = x.options().dtype(at::kFloat);
  at::Tensor map;
  if (float_map) {
    map = pooled_empty({d.N * d.O * G + kMapSlack}, f32).narrow(0, 0, d.N * d.O * G).view({d.N, d.O, d.Hg, d.Wg});
  } else {
    map = pooled_empty({d.N, d.O, d.Hg, d.Wg}, x.options());
  }
  if (map.numel() == 0) return map;
  DfcGateAvx512Params p{};
  p.bf16 = bf16;
  // bfloat16 x on CPUs with AVX-512 BF16: the 1x1 conv on the bf16 dot product, its weights as pairs of input
  // channels (the bfloat16 tensor itself where C is even; zero-padded to an even C otherwise).
  p.bf16_dot = bf16 && avx512_forward_bf16_dot() && w_reduce.scalar_type() == at::kBFloat16;
  at::Tensor w1_pairs;
  if (p.bf16_dot) {
    w1_pairs = w_reduce.reshape({d.O, d.C});
    if (d.C % 2 == 1) w1_pairs = at::constant_pad_nd(w1_pairs, {0, 1});
    w1_pairs = w1_pairs.contiguous();
    p.w1_pairs = reinterpret_cast<const uint32_t*>(w1_pairs.const_data_ptr());
  }
  p.N = d.N, p.C = d.C, p.H = d.H, p.W = d.W, p.O = d.O, p.Hg = d.Hg, p.Wg = d.Wg, p.KH = d.KH, p.KV = d.KV;
  p.Gi = std::clamp<int64_t>(kGroupColumns / std::max<int64_t>(1, G), 1, d.N);
  p.groups = ceil_div(d.N, p.Gi);
  const int64_t pooled_rows = avx512_gate_pooled_rows(p);
  const at::Tensor pooled = pooled_empty({d.N * pooled_rows * G}, f32);  // floats, or words of two bfloat16
  const std::optional<FloatWeights> w1 = p.bf16_dot ? std::nullopt : std::optional<FloatWeights>(std::in_place, w_reduce);
  const FloatWeights b1(b_reduce), wh(w_h), bh(b_h), wv(w_v), bv(b_v);
  const std::vector<uint16_t> colmask = avx512_column_masks(d.KH, d.Wg, d.Hg);

  p.x = x.const_data_ptr();
  p.w1 = w1 ? w1->data() : nullptr;
  p.b1 = b1.data(), p.wh = wh.data(), p.bh = bh.data(), p.wv = wv.data(), p.bv = bv.data();
  p.pooled = pooled.mutable_data_ptr();
  p.map = map.mutable_data_ptr();
  p.map_f32 = float_map;
  const int64_t threads = at::get_num_threads();
  const int64_t want_blocks = threads > 1 ? ceil_div(2 * threads, p.groups) : 1;
  const int64_t l2_rows = std::max<int64_t>(6, (256 * 1024 / 4) / std::max<int64_t>(1, p.Gi * G));  // z in ~256 KiB
  int64_t ob = ceil_div(d.O, want_blocks);
  ob = std::min(ob, l2_rows);
  ob = std::min(d.O, ceil_div(ob, 6) * 6);
  p.Ob = ob;
  p.blocks = ceil_div(d.O, ob);
  p.colmask = colmask.data();

  const int64_t units = d.N * pooled_rows;  // planes, or pairs of planes
  const int64_t unit_grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, (p.bf16_dot ? 2 : 1) * d.H * d.W));
  at::parallel_for(0, units, unit_grain, [&](int64_t b, int64_t e) { avx512_gate_pool_planes(p, b, e); });
  const int64_t scratch_floats = avx512_gate_scratch_floats(p);
  at::parallel_for(0, p.groups * p.blocks, 1, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> scratch;  // per thread across calls: no page faults per call
    if (static_cast<int64_t>(scratch.size()) < scratch_floats) scratch.assign(scratch_floats, 0.f);
    avx512_gate_map_items(p, b, e, scratch.data());
  });
  return map;
}

}  // namespace

at::Tensor dfc_gate_map(const at::Tensor& x, const at::Tensor& w_reduce, const at::Tensor& b_reduce,
                        const at::Tensor& w_h, const at::Tensor& b_h, const at::Tensor& w_v, const at::Tensor& b_v,
                        const GateDims& d, bool float_map) {
  const at::MemoryFormat fmt = output_memory_format(x);
  const bool eligible = (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
                        fmt == at::MemoryFormat::Contiguous;
  if (eligible && use_avx512_kernel(cpu_kernel_knob(), avx512_dfc_gate_available(d.KH, d.KV), [&] {
        return std::string("this CPU lacks AVX-512 F/BW/VL/DQ, or the gate's kernels (1x") + std::to_string(d.KH) +
               ", " + std::to_string(d.KV) + "x1) are longer than 9";
      })) {
    return map_avx512(x.contiguous(), w_reduce, b_reduce, w_h, b_h, w_v, b_v, d, float_map);
  }
  const at::Tensor map = map_aten(x, w_reduce, b_reduce, w_h, b_h, w_v, b_v, d);
  return float_map ? map.to(at::kFloat).contiguous() : map.contiguous(fmt);
}

}  // namespace cpu
}  // namespace ghostkernels
