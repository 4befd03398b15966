// A float32 view of a small weight or bias tensor for the AVX-512 kernels, which compute in float32 whatever the
// input dtype: the tensor's own memory when it is already contiguous float32, else a converted copy made by a plain
// loop. Not t.to(kFloat): at batch 1 the three or four ATen conversions per call (dispatch, allocation, a kernel
// launch each) were about a tenth of a bfloat16 Ghost module's time and made bfloat16 slower than float32 there.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <vector>

#include "util_bf16_bits.h"

namespace ghostkernels {
namespace cpu {

class FloatWeights {
 public:
  explicit FloatWeights(const at::Tensor& t) {
    if (t.scalar_type() == at::kFloat) {
      keep_ = t.contiguous();
      ptr_ = keep_.const_data_ptr<float>();
      return;
    }
    const at::Tensor c = t.contiguous();
    copy_.resize(c.numel());
    if (c.scalar_type() == at::kBFloat16) {
      // Raw words and a shift (util_bf16_bits.h), which vectorizes: c10::BFloat16's conversion did not, and the
      // DFC gate's 960 x 160 weights took ~0.05 ms per call that way (bench/NOTES.md entry 62).
      const uint16_t* src = reinterpret_cast<const uint16_t*>(c.const_data_ptr<c10::BFloat16>());
      float* dst = copy_.data();
      const int64_t n = static_cast<int64_t>(copy_.size());
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dst[i] = widen<float>(src[i]);
    } else {
      keep_ = c.to(at::kFloat);  // other dtypes never reach the AVX-512 kernels; correct, not fast
      ptr_ = keep_.const_data_ptr<float>();
      return;
    }
    ptr_ = copy_.data();
  }
  const float* data() const { return ptr_; }

 private:
  at::Tensor keep_;
  std::vector<float> copy_;
  const float* ptr_ = nullptr;
};

}  // namespace cpu
}  // namespace ghostkernels
