// Runs the CUDA Ghost-module kernels (forward and fused backward) on the host, block by block, with every thread
// of a block a cooperative fiber (see cuda_host_emulation.h for what is emulated), and GhostNetV2's gate kernels
// (dfc_gate_kernel.cuh: no barriers, so each thread simply runs to completion in turn), and the gated forward. Used by
// tests/test_cuda_compile.py and tests/test_cuda_gate.py to check the kernels' results against a float64 reference
// without a GPU.
//
// Build: g++ -std=c++17 -O1 -I<cuda include> ghost_cuda_emulator.cpp -o ghost_cuda_emulator  (no CUDA library).
//
// Usage: ghost_cuda_emulator IN OUT [--reverse] | ghost_cuda_emulator --plan IN
//   IN : "GKEM", then 18 int64 (mode 0 forward / 1 backward / 3 gated forward, dtype 0 float32 / 1 float16 /
//        2 bfloat16, fp32_math 0 exact / 1 tf32, channels_last, act, N, C, H, W, I, M, K, OC, groups, blocks, rows, fmode,
//        stages), then float32 arrays: x [N,C,H,W], w1 [I,C], b1 [I], w2 [I*M,K*K], b2 [I*M], and for backward
//        grad_out [N,OC,H,W]; all NCHW, values exactly representable in the dtype.
//        groups: the backward's block groups. blocks: the forward's persistent grid (0: as the launcher sizes it
//        for the emulated H100, 132 SMs x 1 block). rows / fmode / stages: ForwardPlanRequest (0: the planner's
//        choice), so that tests can run every forward layout on the same inputs.
//   OUT: float32 arrays: forward out [N,OC,H,W]; backward grad_z1 [N,I,H,W] then the group-summed partials
//        [I*M, K*K+1]. NCHW whatever the kernel's layout. A line "plan th tw ..." goes to stdout.
//   Mode 2, dfc_gate (same header; fp32_math, act and groups unused), with I = O, M = KH, K = KV: inputs x
//        [N,C,H,W], w1 [O,C], b1, wh [O,KH], bh, wv [O,KV], bv; output the map [N,O,H/2,W/2].
//   Mode 3, the gated forward (ForwardArgs::gate): as mode 0, but the header is followed by two more int64, Hg and
//        Wg, and the arrays by the map [N,OC,Hg,Wg] (NCHW, converted to the kernel's layout like x); output as mode 0.
//   Train-mode BatchNorm modes 4 + BnPass (ghost_bn_cuda.h; groups, blocks and the plan request unused), inputs in
//        this order where the pass reads them: grad_out [N,OC,H,W], x [N,C,H,W], z1 [N,I,H,W], w1 [I,C], the
//        primary stage's mean, invstd, weight, bias (and, backward, mean_dy, mean_dy_xhat) [I], w2 [I*M,K*K], the
//        cheap stage's vectors [I*M]; outputs: the 4-D one (z1, out or grad_x) if any, then res0 and res1.
//   --reverse runs each block's threads in descending order (a missing barrier shows up as a different result).
//   --plan prints the plan of the header's shape (the arrays may be absent) and exits: what the planner would
//        choose on an H100 (shared memory per block, unit height, x resident, overlap, stages, units).
// Outputs are filled with NaN before the kernels run, so an element the kernels fail to write comes back as NaN.
#include "cuda_host_emulation.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../dfc_gate_kernel.cuh"
#include "../ghost_bn_kernels.cuh"
#include "../ghost_cuda_plan.cu"  // the host planner, compiled into this program
#include "../ghost_cuda_select.cuh"

// The planner's device query, answered as an H100 SXM would.
extern "C" cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = 227 * 1024; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = 228 * 1024; break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

// The planner also sets kernel attributes and asks for occupancy; the emulator launches blocks itself (with group
// counts chosen by its caller) and has no shared-memory limit, so these only need to answer.
extern "C" cudaError_t cudaFuncSetAttribute(const void* /*func*/, cudaFuncAttribute /*attr*/, int /*value*/) {
  return cudaSuccess;
}
extern "C" cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* num_blocks, const void* /*func*/,
                                                                     int /*block_size*/, size_t /*smem*/) {
  *num_blocks = 1;
  return cudaSuccess;
}

namespace ghostkernels {
namespace emulation {

uint3 thread_index;
uint3 block_index;

namespace {

constexpr int kT = cuda::kThreads;
constexpr size_t kStackBytes = 256 * 1024;

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

using KernelFn = void (*)(cuda::KernelParams);

struct Scheduler {
  ucontext_t main_ctx;
  ucontext_t ctx[kT];
  State state[kT];
  std::vector<char> stacks = std::vector<char>(kStackBytes * kT);
  std::vector<unsigned char> smem;
  float slots[kT];
  int current = 0;
  std::function<void()> body;  // one thread's run of the kernel
};
Scheduler* g = nullptr;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "emulator: block %u: %s\n", block_index.x, what.c_str());
  std::exit(3);
}

void fiber_entry() {
  g->body();
  g->state[g->current] = State::Done;  // then uc_link returns to the scheduler
}

void yield(State s) {
  const int t = g->current;
  g->state[t] = s;
  swapcontext(&g->ctx[t], &g->main_ctx);
}

// Runs one block of `body` (each thread's run of a kernel) with `smem_bytes` of dynamic shared memory to completion:
// every runnable fiber until it blocks, then release whole barriers.
void run_block_of(std::function<void()> body, size_t smem_bytes, unsigned block, bool reverse) {
  block_index = make_uint3(block, 0, 0);
  g->body = std::move(body);
  g->smem.assign(smem_bytes, 0xFF);  // all-ones bytes: NaN as float, float16 and bfloat16
  for (int t = 0; t < kT; ++t) {
    getcontext(&g->ctx[t]);
    g->ctx[t].uc_stack.ss_sp = g->stacks.data() + size_t(t) * kStackBytes;
    g->ctx[t].uc_stack.ss_size = kStackBytes;
    g->ctx[t].uc_link = &g->main_ctx;
    makecontext(&g->ctx[t], fiber_entry, 0);
    g->state[t] = State::Runnable;
  }
  for (;;) {
    for (int k = 0; k < kT; ++k) {
      const int t = reverse ? kT - 1 - k : k;
      if (g->state[t] != State::Runnable) continue;
      g->current = t;
      thread_index = make_uint3(unsigned(t), 0, 0);
      swapcontext(&g->main_ctx, &g->ctx[t]);
    }
    int done = 0, at_block = 0;
    for (int t = 0; t < kT; ++t) {
      done += g->state[t] == State::Done;
      at_block += g->state[t] == State::AtBlockBarrier;
    }
    if (done == kT) return;
    bool released = false;
    if (at_block > 0 && at_block + done == kT) {
      if (done > 0) fail("threads exited while others wait at __syncthreads (divergent barrier)");
      for (int t = 0; t < kT; ++t) g->state[t] = State::Runnable;
      released = true;
    }
    for (int w = 0; w < kT / 32; ++w) {
      int at_warp = 0, warp_done = 0;
      for (int l = 0; l < 32; ++l) {
        at_warp += g->state[w * 32 + l] == State::AtWarpBarrier;
        warp_done += g->state[w * 32 + l] == State::Done;
      }
      if (at_warp > 0 && at_warp + warp_done == 32) {
        if (warp_done > 0) fail("a warp shuffle with exited lanes");
        for (int l = 0; l < 32; ++l) g->state[w * 32 + l] = State::Runnable;
        released = true;
      }
    }
    if (!released) fail("deadlock: threads wait at different barriers");
  }
}

void run_block(KernelFn kernel, const cuda::KernelParams& P, unsigned block, bool reverse) {
  run_block_of([kernel, &P] { kernel(P); }, P.L.total, block, reverse);
}

}  // namespace

unsigned char* block_shared_memory() { return g->smem.data(); }

void block_barrier() { yield(State::AtBlockBarrier); }

float warp_shuffle_xor(float v, int lane_mask) {
  const int t = g->current;
  g->slots[t] = v;
  yield(State::AtWarpBarrier);  // every lane has published its value
  const float r = g->slots[(t & ~31) | ((t & 31) ^ lane_mask)];
  yield(State::AtWarpBarrier);  // every lane has read before the slots are reused
  return r;
}

}  // namespace emulation
}  // namespace ghostkernels

namespace {

using namespace ghostkernels;
using namespace ghostkernels::cuda;

struct Header {
  int64_t mode, dtype, fp32_math, channels_last, act, N, C, H, W, I, M, K, OC, groups, blocks, rows, fmode, stages;
};

template <typename T>
T from_float(float v);
template <>
float from_float<float>(float v) {
  return v;
}
template <>
__half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
float as_float(float v) { return v; }
float as_float(__half v) { return __half2float(v); }
float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// An [N, Ct, H, W] NCHW float array in dtype T and the kernel's layout.
template <typename T>
std::vector<T> to_layout(const std::vector<float>& v, int64_t N, int64_t Ct, int64_t HW, bool cl) {
  std::vector<T> r(v.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < Ct; ++c)
      for (int64_t q = 0; q < HW; ++q)
        r[cl ? (n * HW + q) * Ct + c : (n * Ct + c) * HW + q] = from_float<T>(v[(n * Ct + c) * HW + q]);
  return r;
}
template <typename T>
std::vector<float> from_layout(const std::vector<T>& v, int64_t N, int64_t Ct, int64_t HW, bool cl) {
  std::vector<float> r(v.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < Ct; ++c)
      for (int64_t q = 0; q < HW; ++q)
        r[(n * Ct + c) * HW + q] = as_float(v[cl ? (n * HW + q) * Ct + c : (n * Ct + c) * HW + q]);
  return r;
}
template <typename T>
std::vector<T> convert(const std::vector<float>& v) {
  std::vector<T> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = from_float<T>(v[i]);
  return r;
}

std::vector<float> read_floats(FILE* f, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  if (n > 0 && std::fread(v.data(), sizeof(float), size_t(n), f) != size_t(n)) throw std::runtime_error("short input");
  return v;
}

GhostShape shape_of(const Header& h) {
  GhostShape s;
  s.N = h.N;
  s.C = h.C;
  s.H = h.H;
  s.W = h.W;
  s.I = h.I;
  s.M = h.M;
  s.K = h.K;
  s.OC = h.OC;
  s.act = Act(h.act);
  s.dtype = DType(h.dtype);
  s.fp32_math = Fp32Math(h.fp32_math);
  s.channels_last = h.channels_last != 0;
  return s;
}

ForwardPlanRequest request_of(const Header& h) {
  ForwardPlanRequest r;
  r.rows = int(h.rows);
  r.mode = int(h.fmode);
  r.stages = int(h.stages);
  return r;
}

Plan plan_of(const Header& h) {
  const GhostShape s = shape_of(h);
  return h.mode == 1 ? plan_backward(s) : plan_forward(s, request_of(h));
}

void print_plan(const Header& h, const Plan& pl) {
  const long long units = h.N * pl.g.ntiles() * pl.g.chunks;
  std::printf("plan th=%d tw=%d tiles=%dx%d halo=%d rect=%dx%d cols=%d gcols=%d chunks=%d smem=%u rows=%d "
              "xres=%d overlap=%d stages=%d units=%lld\n",
              pl.g.th, pl.g.tw, pl.g.tiles_y, pl.g.tiles_x, pl.g.halo, pl.g.rh, pl.g.rw, pl.L.cols, pl.L.gcols,
              pl.g.chunks, pl.L.total, pl.L.rows, int(pl.L.xres), int(pl.L.overlap), pl.L.stages, units);
}

// Hg and Wg of the gated forward's map (mode 3).
struct GateSize {
  int64_t Hg = 0, Wg = 0;
};

template <typename T, bool kTF32>
void run(const Header& h, const GateSize& gs, FILE* in, FILE* out, bool reverse) {
  const GhostShape s = shape_of(h);
  const bool backward = h.mode == 1, gated = h.mode == 3, cl = s.channels_last;
  const int64_t HW = h.H * h.W, KK = h.K * h.K;
  if (const char* why = unsupported_reason(s, backward)) throw std::runtime_error(why);
  const Plan pl = plan_of(h);
  if (pl.why != nullptr) throw std::runtime_error(pl.why);

  const std::vector<T> x = to_layout<T>(read_floats(in, h.N * h.C * HW), h.N, h.C, HW, cl);
  const std::vector<T> w1 = convert<T>(read_floats(in, h.I * h.C));
  const std::vector<T> b1 = convert<T>(read_floats(in, h.I));
  const std::vector<T> w2 = convert<T>(read_floats(in, h.I * h.M * KK));
  const std::vector<T> b2 = convert<T>(read_floats(in, h.I * h.M));
  const std::vector<T> gate =
      gated ? to_layout<T>(read_floats(in, h.N * h.OC * gs.Hg * gs.Wg), h.N, h.OC, gs.Hg * gs.Wg, cl)
            : std::vector<T>();
  print_plan(h, pl);
  KernelParams P = make_kernel_params(s, pl.g, pl.L, x.data(), w1.data(), b1.data(), w2.data(), b2.data());
  emulation::Scheduler sched;
  emulation::g = &sched;
  const T nan_t = from_float<T>(std::nanf(""));

  if (!backward) {
    std::vector<T> o(size_t(h.N * h.OC * HW), nan_t);
    P.out = o.data();
    set_forward_gate(P, gated ? gate.data() : nullptr, gs.Hg, gs.Wg);
    P.layout = choose_layout(s, o.data(), P.gate);
    std::printf("layout %d\n", int(P.layout));
    const KernelFn k = select_forward<T, kTF32>(int(h.K), s.act, P.layout, gated);
    // The launcher's grid: one resident block per emulated SM, unless the test asks for another size.
    const long long blocks = set_forward_grid(P, h.blocks > 0 ? h.blocks : 132);
    std::printf("grid %lld blocks, %lld units\n", blocks, P.units);
    for (long long b = 0; b < blocks; ++b) emulation::run_block(k, P, unsigned(b), reverse);
    const std::vector<float> r = from_layout(o, h.N, h.OC, HW, cl);
    std::fwrite(r.data(), sizeof(float), r.size(), out);
    return;
  }
  const std::vector<T> gout = to_layout<T>(read_floats(in, h.N * h.OC * HW), h.N, h.OC, HW, cl);
  std::vector<T> gz1(size_t(h.N * h.I * HW), nan_t);
  const int64_t groups = std::min<int64_t>(h.groups, P.items);
  std::vector<float> partials(size_t(groups * h.I * h.M * (KK + 1)), std::nanf(""));
  P.grad_out = gout.data();
  P.grad_z1 = gz1.data();
  P.partials = partials.data();
  P.groups = groups;
  P.layout = choose_layout(s, gout.data(), gz1.data());
  P.gz1_vec = P.layout == Layout::NHWCVec && s.I % (s.dtype == DType::Float32 ? 4 : 8) == 0;
  std::printf("layout %d\n", int(P.layout));
  const KernelFn k = select_kernel<true, T, kTF32>(int(h.K), s.act, P.layout);
  const long long blocks = (long long)pl.g.chunks * groups;
  for (long long b = 0; b < blocks; ++b) emulation::run_block(k, P, unsigned(b), reverse);
  const std::vector<float> r = from_layout(gz1, h.N, h.I, HW, cl);
  std::fwrite(r.data(), sizeof(float), r.size(), out);
  const int64_t row = h.I * h.M * (KK + 1);
  std::vector<float> sums(size_t(row), 0.f);
  for (int64_t gi = 0; gi < groups; ++gi)
    for (int64_t e = 0; e < row; ++e) sums[size_t(e)] += partials[size_t(gi * row + e)];
  std::fwrite(sums.data(), sizeof(float), sums.size(), out);
}

// A barrier-free kernel over `elements` threads: block by block, each thread run to completion in turn (descending
// order within a block with `reverse`).
template <typename P>
void run_threads(void (*kernel)(const P), const P& params, long long elements, bool reverse) {
  const long long blocks = (elements + kThreads - 1) / kThreads;
  for (long long b = 0; b < blocks; ++b) {
    emulation::block_index = make_uint3(unsigned(b), 0, 0);
    for (int k = 0; k < kThreads; ++k) {
      emulation::thread_index = make_uint3(unsigned(reverse ? kThreads - 1 - k : k), 0, 0);
      kernel(params);
    }
  }
}

// Mode 2: the DFC map (dfc_gate_kernel.cuh's two kernels).
template <typename T>
void run_gate(const Header& h, FILE* in, FILE* out, bool reverse) {
  const bool cl = h.channels_last != 0;
  const int64_t O = h.I, KH = h.M, KV = h.K, Hg = h.H / 2, Wg = h.W / 2, G = Hg * Wg;
  const std::vector<T> x = to_layout<T>(read_floats(in, h.N * h.C * h.H * h.W), h.N, h.C, h.H * h.W, cl);
  const std::vector<T> w1 = convert<T>(read_floats(in, O * h.C)), b1 = convert<T>(read_floats(in, O));
  const std::vector<T> wh = convert<T>(read_floats(in, O * KH)), bh = convert<T>(read_floats(in, O));
  const std::vector<T> wv = convert<T>(read_floats(in, O * KV)), bv = convert<T>(read_floats(in, O));
  std::vector<float> z(size_t(h.N * O * G), std::nanf(""));
  std::vector<T> map(size_t(h.N * O * G), from_float<T>(std::nanf("")));
  GateKernelParams P;
  P.N = int(h.N), P.C = int(h.C), P.H = int(h.H), P.W = int(h.W), P.O = int(O), P.Hg = int(Hg), P.Wg = int(Wg);
  P.KH = int(KH), P.KV = int(KV);
  P.x = x.data(), P.w1 = w1.data(), P.b1 = b1.data(), P.wh = wh.data(), P.bh = bh.data(), P.wv = wv.data();
  P.bv = bv.data(), P.z = z.data(), P.map = map.data();
  run_threads(cl ? &dfc_reduce_kernel<T, true> : &dfc_reduce_kernel<T, false>, P, h.N * O * G, reverse);
  run_threads(cl ? &dfc_finish_kernel<T, true> : &dfc_finish_kernel<T, false>, P, h.N * O * G, reverse);
  const std::vector<float> result = from_layout(map, h.N, O, G, cl);
  std::fwrite(result.data(), sizeof(float), result.size(), out);
}

// The train-mode BatchNorm passes (ghost_bn_kernels.cuh), mode 4 + BnPass, through the launchers' own launch
// sequence (bn_run) with every block run under the fiber scheduler; outputs and scratch start as NaN.
template <typename T>
void run_bn(const Header& h, FILE* in, FILE* out, bool reverse) {
  const BnPass pass = BnPass(h.mode - 4);
  const bool cl = h.channels_last != 0;
  const int64_t HW = h.H * h.W, I = h.I, IM = h.I * h.M, KK = h.K * h.K;
  BnTrainArgs a;
  a.dtype = DType(h.dtype), a.channels_last = cl, a.act = Act(h.act);
  a.N = h.N, a.C = h.C, a.H = h.H, a.W = h.W, a.I = h.I, a.M = h.M, a.K = h.K, a.OC = h.OC;
  if (const char* why = bn_unsupported(a)) throw std::runtime_error(why);
  const bool backward = pass == BnPass::Backward, reads_z1 = pass != BnPass::Conv1x1Stats;
  const bool reads_go = pass == BnPass::BackwardReduce || backward;
  const T nan_t = from_float<T>(std::nanf(""));
  std::vector<T> go, x, z1;
  std::vector<float> w1, w2, stage1[6], stage2[6];
  if (reads_go) go = to_layout<T>(read_floats(in, h.N * h.OC * HW), h.N, h.OC, HW, cl);
  if (!reads_z1 || backward) x = to_layout<T>(read_floats(in, h.N * h.C * HW), h.N, h.C, HW, cl);
  if (reads_z1) z1 = to_layout<T>(read_floats(in, h.N * I * HW), h.N, I, HW, cl);
  if (!reads_z1 || backward) w1 = read_floats(in, I * h.C);
  if (reads_z1) {
    for (int k = 0; k < (backward ? 6 : 4); ++k) stage1[k] = read_floats(in, I);
    w2 = read_floats(in, IM * KK);
    if (pass != BnPass::CheapStats)
      for (int k = 0; k < (backward ? 6 : 4); ++k) stage2[k] = read_floats(in, IM);
  }
  auto stage = [](std::vector<float>* v) {
    BnStageArgs s;
    s.mean = v[0].data(), s.invstd = v[1].data(), s.weight = v[2].data(), s.bias = v[3].data();
    s.mean_dy = v[4].data(), s.mean_dy_xhat = v[5].data();
    return s;
  };
  a.x = x.data(), a.w1 = w1.data(), a.z1 = z1.data(), a.w2 = w2.data(), a.grad_out = go.data();
  a.primary = stage(stage1), a.cheap = stage(stage2);
  // Outputs (NaN-filled) and their sizes, as ghost_bn_cuda.h lists them.
  int64_t out_ch = 0, n0 = 0, n1 = 0;
  switch (pass) {
    case BnPass::Conv1x1Stats: out_ch = I, n0 = I, n1 = I; break;
    case BnPass::CheapStats: n0 = IM, n1 = IM; break;
    case BnPass::ForwardOut: out_ch = h.OC; break;
    case BnPass::BackwardReduce: n0 = 2 * I, n1 = 8 * IM; break;
    case BnPass::Backward: out_ch = h.C, n0 = I * h.C, n1 = IM * KK; break;
  }
  std::vector<T> o(size_t(h.N * out_ch * HW), nan_t);
  std::vector<float> r0(size_t(n0), std::nanf("")), r1(size_t(n1), std::nanf(""));
  std::vector<double> scratch(size_t(bn_scratch(pass, a).total / 8 + 1), std::nan(""));
  (pass == BnPass::Conv1x1Stats ? a.z1_out : a.out) = o.data();
  a.res0 = r0.data(), a.res1 = r1.data(), a.scratch = scratch.data();
  emulation::Scheduler sched;
  emulation::g = &sched;
  long long launches = 0, blocks_run = 0;
  auto launch = [&](BnKernelFn fn, long long blocks, unsigned smem, const BnParams& P) -> int {
    ++launches;
    for (long long b = 0; b < blocks; ++b, ++blocks_run)
      emulation::run_block_of([fn, &P] { fn(P); }, smem, unsigned(b), reverse);
    return 0;
  };
  if (bn_run<T>(pass, a, launch) != 0) throw std::runtime_error("a launch failed");
  std::printf("bn pass %d: %lld launches, %lld blocks\n", int(pass), launches, blocks_run);
  if (out_ch > 0) {
    const std::vector<float> r = from_layout(o, h.N, out_ch, HW, cl);
    std::fwrite(r.data(), sizeof(float), r.size(), out);
  }
  std::fwrite(r0.data(), sizeof(float), r0.size(), out);
  std::fwrite(r1.data(), sizeof(float), r1.size(), out);
}

}  // namespace

int main(int argc, char** argv) {
  const bool plan_only = argc == 3 && std::string(argv[1]) == "--plan";
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s IN OUT [--reverse] | %s --plan IN\n", argv[0], argv[0]);
    return 2;
  }
  const bool reverse = argc > 3 && std::string(argv[3]) == "--reverse";
  FILE* in = std::fopen(argv[plan_only ? 2 : 1], "rb");
  FILE* out = plan_only ? nullptr : std::fopen(argv[2], "wb");
  if (!in || (!plan_only && !out)) {
    std::fprintf(stderr, "emulator: cannot open %s or %s\n", argv[1], argv[2]);
    return 2;
  }
  char magic[4];
  Header h;
  GateSize gs;
  if (std::fread(magic, 1, 4, in) != 4 || std::memcmp(magic, "GKEM", 4) != 0 || std::fread(&h, sizeof(h), 1, in) != 1 ||
      (h.mode == 3 && (std::fread(&gs, sizeof(gs), 1, in) != 1 || gs.Hg < 1 || gs.Wg < 1))) {
    std::fprintf(stderr, "emulator: bad input header\n");
    return 2;
  }
  try {
    if (plan_only) {
      const GhostShape s = shape_of(h);
      if (const char* why = unsupported_reason(s, h.mode == 1)) throw std::runtime_error(why);
      const Plan pl = plan_of(h);
      if (pl.why != nullptr) throw std::runtime_error(pl.why);
      print_plan(h, pl);
      return 0;
    }
    if (h.mode >= 4) {
      if (h.dtype == 1)
        run_bn<__half>(h, in, out, reverse);
      else if (h.dtype == 2)
        run_bn<__nv_bfloat16>(h, in, out, reverse);
      else
        run_bn<float>(h, in, out, reverse);
    } else if (h.mode == 2) {
      if (h.dtype == 1)
        run_gate<__half>(h, in, out, reverse);
      else if (h.dtype == 2)
        run_gate<__nv_bfloat16>(h, in, out, reverse);
      else
        run_gate<float>(h, in, out, reverse);
    } else if (h.dtype == 1)
      run<__half, false>(h, gs, in, out, reverse);
    else if (h.dtype == 2)
      run<__nv_bfloat16, false>(h, gs, in, out, reverse);
    else if (h.fp32_math == 1)
      run<float, true>(h, gs, in, out, reverse);
    else
      run<float, false>(h, gs, in, out, reverse);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "emulator: %s\n", e.what());
    return 4;
  }
  std::fclose(out);
  return 0;
}
