// Device-side parameter block and small utilities shared by the forward and backward kernels.
//
// Tensor addressing: every 4-D tensor the kernels touch (x, out, grad_out, grad_z1) is NCHW- or NHWC-contiguous
// (the binding makes it so; the layout is a template parameter of the kernels), so an element's offset follows from
// its channel count Ct alone:
//   NCHW: n*Ct*HW + c*HW + lin,   NHWC: n*Ct*HW + lin*Ct + c,   with lin = y*W + x (int64 throughout).
// Using these canonical strides instead of the tensor's own also sidesteps the arbitrary strides PyTorch allows on
// size-1 dimensions of a "contiguous" tensor.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../activations.h"
#include "ghost_cuda.h"
#include "ghost_cuda_layout.h"

// A kernel's dynamic shared memory. The host emulator (emulation/) compiles the kernels as plain C++ and hands each
// emulated block its own buffer instead.
#if defined(GHOSTKERNELS_HOST_EMULATION)
#define GK_DYNAMIC_SHARED_MEMORY(name) unsigned char* name = ::ghostkernels::emulation::block_shared_memory()
#else
#define GK_DYNAMIC_SHARED_MEMORY(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace ghostkernels {
namespace cuda {

struct KernelParams {
  int C = 0, H = 0, W = 0;  // x
  int I = 0, M = 0, K = 0;  // init channels, ratio - 1, depthwise size
  int OC = 0;               // out_channels
  int PK = 0, CK = 0;       // primary / cheap channels kept after the slice
  long long N = 0, HW = 0;
  long long items = 0;      // N * tiles: (image, tile) work items
  long long groups = 0;     // backward: blocks per chunk, each looping over items
  // Forward: units = items * g.chunks (chunk fastest), split into contiguous runs over the grid's blocks: block b
  // runs units_per_block units (one more for b < units_rem) from b * units_per_block + min(b, units_rem).
  long long units = 0, units_per_block = 0, units_rem = 0;
  Act act = Act::Identity;  // read only by the instantiations compiled for a run-time activation (kActRuntime)
  Layout layout = Layout::NCHW;  // which instantiation runs (choose_layout); the kernels know it at compile time
  bool vec_x = false;       // x rows can be fetched as 16-byte vectors (NHWC, C*sizeof % 16 == 0, aligned)
  bool vec_w1 = false;      // same for the rows of W1
  bool gz1_vec = false;     // backward NHWCVec: grad_z1 pixels start 16-byte aligned (init a multiple of the vector)
  TileGeom g;
  SmemLayout L;
  const void* x = nullptr;
  const void* w1 = nullptr;
  const void* b1 = nullptr;
  const void* w2 = nullptr;
  const void* b2 = nullptr;
  void* out = nullptr;            // forward output
  // Forward, gated instantiations only (ForwardArgs::gate): the map, its size and nearest_scale(Hg, H) /
  // nearest_scale(Wg, W), computed on the host.
  const void* gate = nullptr;
  int Hg = 0, Wg = 0;
  float gate_sy = 0.f, gate_sx = 0.f;
  const void* grad_out = nullptr;  // backward
  void* grad_z1 = nullptr;
  float* partials = nullptr;
};

// The parameter block of a launch (sizes, tiling, flags, the input pointers); outputs are set by the launcher.
KernelParams make_kernel_params(const GhostShape& s, const TileGeom& g, const SmemLayout& L, const void* x,
                                const void* w1, const void* b1, const void* w2, const void* b2);

// Sets P's gate fields for the gated forward (map, sizes and the nearest-index scales, on the host: see
// csrc/nearest_index.h); gate = nullptr leaves P ungated.
void set_forward_gate(KernelParams& P, const void* gate, int64_t Hg, int64_t Wg);

// The layout instantiation for a call: NHWCVec where its conditions hold (see ghost_cuda_layout.h) for every tensor
// the kernel reads or writes per pixel (out and a gated call's map for the forward; grad_out and grad_z1 for the
// backward, grad_z1 only needing 8-byte alignment), else NHWC, or NCHW.
Layout choose_layout(const GhostShape& s, const void* per_pixel_a, const void* per_pixel_b);

// Template value of an instantiation that reads the activation from KernelParams::act at run time (the NHWC
// fallback, which is compiled once per dtype instead of once per activation). Not a valid Act at run time.
constexpr Act kActRuntime = static_cast<Act>(-1);

template <Act A>
__device__ __forceinline__ float act_fwd(const KernelParams& P, float z) {
  return act_forward(A == kActRuntime ? P.act : A, z);  // a compile-time A folds the switch away
}
template <Act A>
__device__ __forceinline__ float act_grad(const KernelParams& P, float z) {
  return act_derivative(A == kActRuntime ? P.act : A, z);
}

// Offset of element (n, c, lin) of an [N, Ct, H, W] tensor in the layout described above.
template <bool kCL>
__device__ __forceinline__ long long elem_offset(const KernelParams& P, long long n, int Ct, int c, long long lin) {
  const long long base = n * Ct * P.HW;
  return kCL ? base + lin * Ct + c : base + (long long)c * P.HW + lin;
}

template <typename T>
struct Elem;
template <>
struct Elem<float> {
  __device__ static __forceinline__ float load(const float* p) { return __ldg(p); }
  __device__ static __forceinline__ float from_float(float v) { return v; }
};
template <>
struct Elem<__half> {
  __device__ static __forceinline__ float load(const __half* p) { return __half2float(__ldg(p)); }
  __device__ static __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};
template <>
struct Elem<__nv_bfloat16> {
  __device__ static __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }
  __device__ static __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

// Bit copies between equally sized objects (the host emulator's compiler would otherwise be entitled to assume that
// a float4 read of float data aliases nothing; on the device these are register moves).
template <typename To, typename From>
__device__ __forceinline__ To bit_cast_gk(const From& v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast_gk: sizes differ");
  To r;
  memcpy(&r, &v, sizeof(To));
  return r;
}

// Four floats of shared memory at a 16-byte aligned address.
__device__ __forceinline__ float4 lds4(const float* p) {
#if defined(GHOSTKERNELS_HOST_EMULATION)
  float4 r;
  memcpy(&r, p, sizeof(r));
  return r;
#else
  return *reinterpret_cast<const float4*>(p);
#endif
}
__device__ __forceinline__ void sts4(float* p, float4 v) {
#if defined(GHOSTKERNELS_HOST_EMULATION)
  memcpy(p, &v, sizeof(v));
#else
  *reinterpret_cast<float4*>(p) = v;
#endif
}

// W consecutive channels of global memory as floats, in one access of W * sizeof(T) bytes (16 or 8; the address is
// aligned to that size): the vector path of the NHWCVec epilogues. W = 16 / sizeof(T) (a full vector) or 4.
template <typename T, int W>
struct VecIO {
  static_assert(W * sizeof(T) == 16 || W * sizeof(T) == 8, "VecIO moves 8 or 16 bytes");
  using Raw = typename std::conditional<W * sizeof(T) == 16, uint4, uint2>::type;
  static constexpr int kPairs = W / 2;  // 16-bit types: W / 2 two-element words

  __device__ static __forceinline__ void load(float (&v)[W], const T* p) {
    const Raw raw = __ldg(reinterpret_cast<const Raw*>(p));
    if constexpr (sizeof(T) == 4) {
      const float* f = reinterpret_cast<const float*>(&raw);
#pragma unroll
      for (int c = 0; c < W; ++c) v[c] = f[c];
    } else {
      unsigned words[kPairs];
      memcpy(words, &raw, sizeof(raw));
#pragma unroll
      for (int c = 0; c < kPairs; ++c) {
        const float2 f = unpack2(words[c]);
        v[2 * c] = f.x;
        v[2 * c + 1] = f.y;
      }
    }
  }
  __device__ static __forceinline__ void store(T* p, const float (&v)[W]) {
    Raw raw;
    if constexpr (sizeof(T) == 4) {
      memcpy(&raw, v, sizeof(raw));
    } else {
      unsigned words[kPairs];
#pragma unroll
      for (int c = 0; c < kPairs; ++c) words[c] = pack2(v[2 * c], v[2 * c + 1]);
      memcpy(&raw, words, sizeof(raw));
    }
    *reinterpret_cast<Raw*>(p) = raw;
  }

 private:
  __device__ static __forceinline__ float2 unpack2(unsigned w) {
    if constexpr (std::is_same<T, __half>::value)
      return __half22float2(bit_cast_gk<__half2>(w));
    else
      return __bfloat1622float2(bit_cast_gk<__nv_bfloat162>(w));
  }
  __device__ static __forceinline__ unsigned pack2(float a, float b) {
    if constexpr (std::is_same<T, __half>::value)
      return bit_cast_gk<unsigned>(__floats2half2_rn(a, b));
    else
      return bit_cast_gk<unsigned>(__floats2bfloat162_rn(a, b));
  }
};

// A block's threads split as lanes x rows for a loop over `groups` channel groups of many pixels: the lane (the
// group) is fixed for the whole loop, so per-group values stay in registers and no index needs a division.
// groups <= 32; lanes with g >= groups idle.
struct GroupSplit {
  int g, r0, step;
};
__device__ __forceinline__ GroupSplit split_by_groups(int groups) {
  int lg = 0;
  while ((1 << lg) < groups) ++lg;
  return {int(threadIdx.x) & ((1 << lg) - 1), int(threadIdx.x) >> lg, kThreads >> lg};
}

// e / d and e % d for small non-negative e through a float reciprocal, corrected to the exact quotient. Replaces
// the ~20-instruction integer division in the per-element index arithmetic of the epilogues.
struct FastDiv {
  int d = 1;
  float inv = 1.f;
  __device__ __forceinline__ explicit FastDiv(int divisor) : d(divisor), inv(1.f / float(divisor)) {}
  __device__ __forceinline__ int div(int e) const {
    int q = __float2int_rz(float(e) * inv);
    int r = e - q * d;
    while (r < 0) {
      --q;
      r += d;
    }
    while (r >= d) {
      ++q;
      r -= d;
    }
    return q;
  }
};

// The pixel table of the GEMM rect: for rect pixel q, -1 when it lies outside the image (or in the padding columns
// past the rect), else 2*lin + own, own = 1 for the tile's own pixels. Built once per work item so that the stage
// loaders and the epilogues need no division by the rect width.
__device__ __forceinline__ void build_pixel_table(const KernelParams& P, long long* pix, int ty0, int tx0, int tha,
                                                  int twa) {
  const int rw = P.g.rw, rect = P.g.rh * P.g.rw, halo = P.g.halo;
  const FastDiv rwd(rw);
  for (int q = threadIdx.x; q < P.L.cols; q += kThreads) {
    long long v = -1;
    if (q < rect) {
      const int ry = rwd.div(q), rx = q - ry * rw;
      const int gy = ty0 - halo + ry, gx = tx0 - halo + rx;
      if (gy >= 0 && gy < P.H && gx >= 0 && gx < P.W) {
        const bool own = ry >= halo && ry < halo + tha && rx >= halo && rx < halo + twa;
        v = 2 * ((long long)gy * P.W + gx) + (own ? 1 : 0);
      }
    }
    pix[q] = v;
  }
}

// The unit's depthwise weights and biases as float in shared memory (zero past the last channel), L.rows x1
// channels from c0 (and their L.cheap = rows * M cheap channels).
template <typename T>
__device__ __forceinline__ void load_chunk_weights(const KernelParams& P, unsigned char* smem, int c0) {
  const int KK = P.K * P.K, cheap = P.L.cheap;
  const long long j0 = (long long)c0 * P.M, nj = (long long)P.I * P.M;
  float* w2s = reinterpret_cast<float*>(smem + P.L.w2);
  float* b2s = reinterpret_cast<float*>(smem + P.L.bias2);
  float* b1s = reinterpret_cast<float*>(smem + P.L.bias1);
  const T* w2 = static_cast<const T*>(P.w2);
  const T* b2 = static_cast<const T*>(P.b2);
  const T* b1 = static_cast<const T*>(P.b1);
  // Tap-major, w2s[tap * cheap + jl]: a tap's weights of consecutive channels are adjacent, so the NHWCVec epilogues
  // read a vector of channels' weights with one 16-byte shared load.
  for (int e = threadIdx.x; e < cheap * KK; e += kThreads) {
    const long long j = j0 + e / KK;
    w2s[(e % KK) * cheap + e / KK] = j < nj ? Elem<T>::load(w2 + j0 * KK + e) : 0.f;
  }
  for (int e = threadIdx.x; e < cheap; e += kThreads) b2s[e] = j0 + e < nj ? Elem<T>::load(b2 + j0 + e) : 0.f;
  for (int e = threadIdx.x; e < P.L.rows; e += kThreads) b1s[e] = c0 + e < P.I ? Elem<T>::load(b1 + c0 + e) : 0.f;
}

}  // namespace cuda
}  // namespace ghostkernels
