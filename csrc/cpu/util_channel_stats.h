// Per-channel sums and moments for the train-mode BatchNorm passes (launch_bn_*.cpp): per-thread partials, combined
// in thread order at the end, so a call's result depends only on its inputs and the thread count.
//
// Moments: plain sums of z and z^2 in float32 lose the variance to cancellation once |mean| is large against the
// standard deviation (mean 1000, std 1: sum(z^2)/n - mean^2 is 1e6 - 1e6 in a 24-bit mantissa). Instead every
// block of values a kernel has in cache (a channel's rows of one work item) gets its exact two-pass moments (mean,
// then the sum of squared deviations from it), and the blocks are merged with Chan et al.'s pairwise update in
// float64, which is exact up to rounding whatever the mean.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace ghostkernels {
namespace cpu {

struct Moments {
  double n = 0, mean = 0, m2 = 0;  // count, mean, sum of squared deviations from the mean

  // Chan's update: merge a block of nb values with mean mb and sum of squared deviations m2b.
  void merge(double nb, double mb, double m2b) {
    if (nb == 0) return;
    const double total = n + nb, delta = mb - mean;
    mean += delta * (nb / total);
    m2 += m2b + delta * delta * (n * nb / total);
    n = total;
  }
  void merge(const Moments& o) { merge(o.n, o.mean, o.m2); }
};

// R sums over q in [0, n) of the R values f(q, v) stores in v, with 16 partial sums each so that the loop vectorizes
// (floating-point addition is not associative, so without -ffast-math a single running sum would stay scalar).
template <int R, typename acc_t, typename F>
inline std::array<acc_t, R> lane_sums(int64_t n, F&& f) {
  constexpr int kL = 16;
  acc_t part[R][kL] = {};
  int64_t q = 0;
  for (; q + kL <= n; q += kL) {
    for (int l = 0; l < kL; ++l) {
      acc_t v[R];
      f(q + l, v);
      for (int r = 0; r < R; ++r) part[r][l] += v[r];
    }
  }
  std::array<acc_t, R> s{};
  for (; q < n; ++q) {
    acc_t v[R];
    f(q, v);
    for (int r = 0; r < R; ++r) s[r] += v[r];
  }
  for (int r = 0; r < R; ++r) {
    for (int l = 0; l < kL; ++l) s[r] += part[r][l];
  }
  return s;
}

// The two-pass moments of v[0, n) merged into m. Both passes sum deviations, never raw values: the first from the
// block's first value (a sum of values near 1000 would carry the rounding of 1000 into the mean, 1e-3 of a unit
// standard deviation after a few thousand terms), the second from the block's mean.
template <typename acc_t>
inline void add_block_moments(Moments& m, const acc_t* v, int64_t n) {
  if (n <= 0) return;
  const acc_t pivot = v[0];
  const acc_t dev = lane_sums<1, acc_t>(n, [&](int64_t q, acc_t* o) { o[0] = v[q] - pivot; })[0];
  const double mb = static_cast<double>(pivot) + static_cast<double>(dev) / static_cast<double>(n);
  const acc_t c = static_cast<acc_t>(mb);
  const acc_t m2b = lane_sums<1, acc_t>(n, [&](int64_t q, acc_t* o) { o[0] = (v[q] - c) * (v[q] - c); })[0];
  m.merge(static_cast<double>(n), mb, static_cast<double>(m2b));
}

// Per-thread Moments of `channels` channels.
class ThreadMoments {
 public:
  explicit ThreadMoments(int64_t channels)
      : channels_(channels), parts_(static_cast<size_t>(at::get_num_threads() * channels)) {}
  Moments* of_thread(int64_t tid) { return parts_.data() + tid * channels_; }
  // (mean, biased variance) per channel, in dtype `dt`; a channel that saw no values gets NaN for both, as
  // torch's batch_norm does for an empty batch.
  std::tuple<at::Tensor, at::Tensor> finish(at::ScalarType dt) const {
    at::Tensor mean = at::empty({channels_}, at::TensorOptions().dtype(at::kDouble));
    at::Tensor var = at::empty({channels_}, at::TensorOptions().dtype(at::kDouble));
    double* mp = mean.data_ptr<double>();
    double* vp = var.data_ptr<double>();
    const int64_t threads = static_cast<int64_t>(parts_.size()) / (channels_ > 0 ? channels_ : 1);
    for (int64_t c = 0; c < channels_; ++c) {
      Moments all;
      for (int64_t t = 0; t < threads; ++t) all.merge(parts_[t * channels_ + c]);
      mp[c] = all.n > 0 ? all.mean : std::nan("");
      vp[c] = all.n > 0 ? all.m2 / all.n : std::nan("");
    }
    return {mean.to(dt), var.to(dt)};
  }

 private:
  int64_t channels_;
  std::vector<Moments> parts_;
};

// Per-thread float64 sums of `rows` x `cols` values (rows: the kinds of sum, cols: channels), added up in thread
// order by finish().
class ThreadSums {
 public:
  ThreadSums(int64_t rows, int64_t cols)
      : n_(rows * cols), rows_(rows), cols_(cols), parts_(static_cast<size_t>(at::get_num_threads() * n_), 0.0) {}
  // The thread's row r, cols_ sums.
  double* row(int64_t tid, int64_t r) { return parts_.data() + tid * n_ + r * cols_; }
  at::Tensor finish(at::ScalarType dt) const {
    at::Tensor out = at::zeros({rows_, cols_}, at::TensorOptions().dtype(at::kDouble));
    double* o = out.data_ptr<double>();
    const int64_t threads = n_ > 0 ? static_cast<int64_t>(parts_.size()) / n_ : 0;
    for (int64_t t = 0; t < threads; ++t) {
      for (int64_t k = 0; k < n_; ++k) o[k] += parts_[t * n_ + k];
    }
    return out.to(dt);
  }

 private:
  int64_t n_, rows_, cols_;
  std::vector<double> parts_;
};

}  // namespace cpu
}  // namespace ghostkernels
