// The CUDA kernels of GhostNetV2's gate (host API in ghost_gate_cuda.h), templated on the element type T and the
// layout (kCL: NHWC, else NCHW). One thread per output element and no shared memory or barrier in any of them: the
// map is a quarter-resolution tensor whose work is small next to the Ghost module it gates, and kernels of this
// shape run unchanged, thread by thread, under the host emulator (emulation/).
//   dfc_reduce_kernel:   z[n, o, p] = b1[o] + sum_c w1[o, c] * mean of x[n, c]'s 2x2 window at map pixel p;
//   dfc_finish_kernel:   map[n, o, p] = sigmoid(bv + sum_dy wv[dy] * (bh + sum_dx wh[dx] * z[row + dy - KV/2,
//                        col + dx - KH/2])), zero padding of z along the row and of the (1, KH) conv's output along
//                        the column.
// (The gated Ghost module multiplies the map into its output inside the forward kernel's stores,
// ghost_forward_kernel.cuh.)
// Float32 arithmetic throughout; only the stores round to T.
#pragma once

#include "ghost_cuda_params.cuh"

namespace ghostkernels {
namespace cuda {

struct GateKernelParams {
  int N = 0, C = 0, H = 0, W = 0, O = 0, Hg = 0, Wg = 0, KH = 0, KV = 0;
  const void* x = nullptr;
  const void* w1 = nullptr;
  const void* b1 = nullptr;
  const void* wh = nullptr;
  const void* bh = nullptr;
  const void* wv = nullptr;
  const void* bv = nullptr;
  float* z = nullptr;
  void* map = nullptr;  // dfc_finish_kernel's output
};

// Element (n, c, y, x) of an [N, Ct, Ht, Wt] tensor in the layout.
template <bool kCL>
__device__ __forceinline__ long long offset4(long long n, int c, int y, int x, int Ct, int Ht, int Wt) {
  return kCL ? ((n * Ht + y) * Wt + x) * Ct + c : ((n * Ct + c) * Ht + y) * (long long)Wt + x;
}

template <typename T, bool kCL>
__global__ void __launch_bounds__(kThreads) dfc_reduce_kernel(const GateKernelParams P) {
  const long long G = (long long)P.Hg * P.Wg;
  const long long e = (long long)blockIdx.x * kThreads + threadIdx.x;  // [N][O][G], map pixel fastest
  if (e >= P.N * (long long)P.O * G) return;
  const int p = int(e % G), o = int((e / G) % P.O);
  const long long n = e / (G * P.O);
  const int y = 2 * (p / P.Wg), x = 2 * (p % P.Wg);
  const T* xs = static_cast<const T*>(P.x);
  const T* w = static_cast<const T*>(P.w1) + (long long)o * P.C;
  float acc = Elem<T>::load(static_cast<const T*>(P.b1) + o);
  for (int c = 0; c < P.C; ++c) {
    const float s = (Elem<T>::load(xs + offset4<kCL>(n, c, y, x, P.C, P.H, P.W)) +
                     Elem<T>::load(xs + offset4<kCL>(n, c, y, x + 1, P.C, P.H, P.W))) +
                    (Elem<T>::load(xs + offset4<kCL>(n, c, y + 1, x, P.C, P.H, P.W)) +
                     Elem<T>::load(xs + offset4<kCL>(n, c, y + 1, x + 1, P.C, P.H, P.W)));
    acc = fmaf(Elem<T>::load(w + c), 0.25f * s, acc);
  }
  P.z[e] = acc;
}

template <typename T, bool kCL>
__global__ void __launch_bounds__(kThreads) dfc_finish_kernel(const GateKernelParams P) {
  const long long G = (long long)P.Hg * P.Wg;
  const long long e = (long long)blockIdx.x * kThreads + threadIdx.x;  // [N][O][G]
  if (e >= P.N * (long long)P.O * G) return;
  const int p = int(e % G), o = int((e / G) % P.O);
  const long long n = e / (G * P.O);
  const int gy = p / P.Wg, gx = p % P.Wg;
  const float* zp = P.z + (e - p);  // the channel's plane
  const T* wh = static_cast<const T*>(P.wh) + (long long)o * P.KH;
  const T* wv = static_cast<const T*>(P.wv) + (long long)o * P.KV;
  const float bh = Elem<T>::load(static_cast<const T*>(P.bh) + o);
  float acc = Elem<T>::load(static_cast<const T*>(P.bv) + o);
  for (int dy = 0; dy < P.KV; ++dy) {
    const int r = gy + dy - P.KV / 2;
    if (r < 0 || r >= P.Hg) continue;  // the (1, KH) conv's output is zero-padded above and below
    float t = bh;
    for (int dx = 0; dx < P.KH; ++dx) {
      const int c = gx + dx - P.KH / 2;
      if (c >= 0 && c < P.Wg) t = fmaf(Elem<T>::load(wh + dx), zp[(long long)r * P.Wg + c], t);
    }
    acc = fmaf(Elem<T>::load(wv + dy), t, acc);
  }
  const float g = 1.f / (1.f + expf(-acc));
  static_cast<T*>(P.map)[offset4<kCL>(n, o, gy, gx, P.O, P.Hg, P.Wg)] = Elem<T>::from_float(g);
}

}  // namespace cuda
}  // namespace ghostkernels
