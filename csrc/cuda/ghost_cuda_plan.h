// Host-side choice of the tiling of a launch (tile size, shared memory) for the forward and backward kernels.
// Torch-free; used by the launchers in ghost_forward.cu / ghost_backward.cu.
#pragma once

#include "ghost_cuda.h"
#include "ghost_cuda_layout.h"

namespace ghostkernels {
namespace cuda {

struct KernelParams;  // ghost_cuda_params.cuh

struct DeviceInfo {
  cudaError_t err = cudaSuccess;  // the attribute query's error, if any
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  int smem_optin = 0;   // largest dynamic shared memory one block may opt in to (bytes)
  int smem_per_sm = 0;  // shared memory of one SM (bytes)
};

// Attributes of a device, queried once per device and cached (cudaDeviceGetAttribute does not synchronize and is
// allowed during graph capture).
DeviceInfo device_info(int device);

struct Plan {
  TileGeom g;
  SmemLayout L;
  const char* why = nullptr;  // non-null: no tiling fits (the reason, for unsupported_reason)
};

// Tile choice: among tiles of up to 32 x 32 pixels whose GEMM rect fits kMaxGemmCols columns and whose shared
// memory fits the device, the one with the least modelled work, tiles x (GEMM columns + a fixed per-block cost).
// The halo makes small tiles expensive (a 8x8 tile with k = 3 computes 10x10 = 100 pixels of x1 for 64 outputs);
// big tiles cost shared memory. Whole-image tiles for 7x7 and 14x14 maps, 16x16 tiles for 56x56 and 112x112.
// Then the forward's unit and buffers (make_forward_layout), within the shared memory of two blocks per SM (the
// launch bounds' occupancy) where possible:
//   rows   128 or 64 x1 channels per unit on tensor cores when the rect is narrow enough (7x7 maps: one x read per
//          128 channels instead of per 32), the init channels fill more than half of it, and the batch still gives
//          at least three quarters of the resident blocks a unit; else 32;
//   xres   x resident across the chunks of a tile when there are several and it fits (x read once per tile);
//   overlap the next unit's copies issued before this unit's epilogue when the extra stages fit;
// in that order of preference, each with the deepest pipeline that fits; else the aliased layout of the backward's
// kind (stages inside Z, one pixel table per step), as before. `req` forces a choice (the host emulator's tests).
struct ForwardPlanRequest {
  int rows = 0;    // 0: the planner's choice; else 32, 64 or 128
  int mode = 0;    // 0: the planner's choice; 1 streamed, 2 streamed + overlap, 3 resident, 4 resident + overlap
  int stages = 0;  // 0: the planner's choice; else 2..4
};
Plan plan_forward(const GhostShape& s, const ForwardPlanRequest& req = ForwardPlanRequest());
// Same for the backward kernel, whose GEMM rect has a halo of 2p and which also keeps D (own pixels) and G2
// (ring-1 rect) in shared memory; prefers plans that leave room for two blocks per SM.
Plan plan_backward(const GhostShape& s);

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) for `kernel` on `device`, done once per (kernel, device) and size.
// The attribute applies to the current device, so the caller must have made `device` current.
cudaError_t allow_dynamic_smem(const void* kernel, int device, unsigned bytes);

// The forward's persistent grid: min(units, resident blocks) blocks, each a contiguous run of units (sets
// P.units, P.units_per_block, P.units_rem); `max_blocks` <= 0 means no limit besides the units. Returns the
// block count (0 when there is no unit).
long long set_forward_grid(KernelParams& P, long long max_blocks);

// How many blocks of `kernel` (kThreads threads, `smem_bytes` of dynamic shared memory) one SM holds at once;
// cached. Sizes the persistent grid of the backward kernel.
int resident_blocks_per_sm(const void* kernel, int device, unsigned smem_bytes);

}  // namespace cuda
}  // namespace ghostkernels
