"""The CUDA backend on a machine without a GPU.

1. Every ``csrc/cuda/*.cu`` compiles with nvcc for sm_80 and sm_90 (one nvcc call per file, both architectures:
   PTX for compute_80, SASS for sm_90; tests/cuda_toolchain.py says why sm_80 stops at PTX),
   with the flags torch's JIT build uses, so a kernel that does not build fails CI rather than a user's first call.
2. The torch bindings ``csrc/cuda/*.cpp`` pass ``c++ -fsyntax-only`` against torch's headers and the CUDA runtime
   headers (a CPU-only torch wheel ships the c10/cuda headers they use).
3. The kernels compute the right thing: ``csrc/cuda/emulation`` runs the unchanged kernel code on the host (a
   block's threads as fibers, barriers and warp shuffles emulated, shared memory pre-filled with NaN), and the
   results are compared with the float64 eager reference. This checks tiling, halos, image borders, channel chunks,
   the output slice, both memory layouts, both vector and element-wise load paths, every activation, k in
   {1, 3, 5, 7}, ratio > 2, the persistent backward grid and its partial sums, the 16-byte-vector NHWC epilogues
   (NHWCVec: channel groups with 4-channel edges, slices inside either half, tiny images, an empty batch) next to
   the one-element NHWC fallback, the layout each call is given, and -- by running the threads of each block in
   ascending and in descending order -- missing barriers. It cannot check what only a GPU shows
   (asynchronous copies, the real tensor-core fragment layouts, timing); that is bench/gpu/run_gpu_session.sh's job.

Each part is skipped, with the reason, only where its tool is missing (nvcc, a C++ compiler, the CUDA headers).
GhostNetV2's gate kernels have their own emulated tests (tests/test_cuda_gate.py).
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils import cpp_extension

import cuda_toolchain as tc
from ghostkernels.ops.reference import activation, ghost_module_reference

CUDA_DIR = tc.CUDA_DIR
CU_FILES = tc.CU_FILES
plan_report = tc.plan_report


# ---------------------------------------------------------------------------------------------------------------
# 1. nvcc
# ---------------------------------------------------------------------------------------------------------------

def test_cuda_sources_exist():
    assert CU_FILES, "csrc/cuda has no .cu files"
    assert os.path.isfile(os.path.join(CUDA_DIR, "ghost_module_cuda.cpp"))


@pytest.mark.parametrize("path", CU_FILES, ids=os.path.basename)
def test_cu_file_compiles_for_sm80_and_sm90(path, cuda_objects):
    """One nvcc call per file, both architectures (the session's objects: test_cuda_sass.py reads their sm_90 code)."""
    unit = cuda_objects.compile(os.path.basename(path))
    assert unit.returncode == 0 and unit.obj and os.path.isfile(unit.obj), unit.failure()


# ---------------------------------------------------------------------------------------------------------------
# 2. the binding
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", tc.BINDINGS, ids=os.path.basename)
def test_binding_passes_syntax_check(path):
    cxx, inc = tc.cxx(), tc.cuda_include_dir()
    if cxx is None:
        pytest.skip("no C++ compiler found")
    if inc is None:
        pytest.skip("the CUDA runtime headers (cuda_runtime_api.h) were not found")
    torch_includes = cpp_extension.include_paths()
    if not any(os.path.isfile(os.path.join(d, "c10", "cuda", "CUDAGuard.h")) for d in torch_includes):
        pytest.skip("this torch build ships no c10/cuda headers")
    # A CPU-only torch lacks the generated c10/cuda/impl/cuda_cmake_macros.h; its only content is the DLL-export
    # switch, which a syntax check does not need.
    cmd = [cxx, f"-std={tc.cxx_std()}", "-fsyntax-only", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
           "-DGHOSTKERNELS_WITH_CUDA", *[f"-I{d}" for d in torch_includes], f"-I{inc}", f"-I{tc.CSRC}",
           path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"syntax check failed:\n{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"


# ---------------------------------------------------------------------------------------------------------------
# 3. the kernels under host emulation
# ---------------------------------------------------------------------------------------------------------------

def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@pytest.fixture(scope="module")
def emulator() -> str:
    """The emulator binary, built once per hash of csrc/ (bench/gpu/plan_report.py, which reads plans with it)."""
    if tc.cxx() is None:
        pytest.skip("no C++ compiler found")
    if tc.cuda_include_dir() is None:
        pytest.skip("the CUDA headers (cuda_fp16.h, cuda_runtime_api.h) were not found")
    return tc.emulator()


def _run_emulator(exe, tmp_path, backward, dtype, tf32, channels_last, act, inputs, oc, groups, grad_out, reverse,
                  plan=(0, 0, 0, 0), want_plan=None):
    """Runs the kernels under emulation; returns the forward output, or (grad_z1, partial sums) for the backward.
    want_plan: {field: value} the emulator's "plan" line (and "grid" line: blocks=) must show, e.g. rows=128."""
    x, w1, b1, w2, b2 = inputs
    n, c, h, w = x.shape
    init, k = w1.shape[0], w2.shape[-1]
    m = w2.shape[0] // init
    header = plan_report.emulator_header(backward, _dtype_name(dtype), tf32, channels_last, act,
                                         (n, c, h, w, init, m, k), oc, groups, plan)
    arrays = [x, w1, b1, w2, b2] + ([grad_out] if backward else [])
    fin, fout = tmp_path / f"in{int(backward)}", tmp_path / f"out{int(backward)}"
    with open(fin, "wb") as f:
        f.write(header)
        for a in arrays:
            f.write(a.to(torch.float32).contiguous().numpy().astype("<f4").tobytes())
    cmd = [exe, str(fin), str(fout)] + (["--reverse"] if reverse else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"emulator failed:\n{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    layouts = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("layout ")]
    if want_plan:
        got = plan_report.plan_fields(r.stdout)
        grid = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("grid ")]
        got["blocks"] = int(grid[0]) if grid else None
        assert all(got.get(key) == v for key, v in want_plan.items()), f"plan {got}, wanted {want_plan}"
    want = _expected_layout(dtype, channels_last, m, oc, init)
    assert layouts == [want], f"the launcher chose layout {layouts}, expected {want} ({_LAYOUT_NAMES[want]})"
    data = torch.from_numpy(np.fromfile(fout, dtype="<f4").copy())
    if not backward:
        return data.reshape(n, oc, h, w)
    split = n * init * h * w
    return data[:split].reshape(n, init, h, w), data[split:].reshape(init * m, k * k + 1)


_LAYOUT_NAMES = {"0": "NCHW", "1": "NHWC, one element per access", "2": "NHWCVec, 16-byte vectors"}


def _expected_layout(dtype, channels_last, m, oc, init) -> str:
    """The rule of csrc/cuda/ghost_cuda_plan.cu choose_layout (the emulator's buffers are 16-byte aligned)."""
    if not channels_last:
        return "0"
    vec = 16 // torch.empty((), dtype=dtype).element_size()
    return "2" if m == 1 and oc % vec == 0 and init % 4 == 0 else "1"


def _reference_backward(inputs, oc, act, grad_out):
    """dL/dz1, dL/dw_cheap, dL/db_cheap in float64 eager autograd (z1 = the primary conv's pre-activation)."""
    x, w1, b1, w2, b2 = (t.double() for t in inputs)
    w2 = w2.clone().requires_grad_()
    b2 = b2.clone().requires_grad_()
    f = activation(act)
    z1 = F.conv2d(x, w1, b1).requires_grad_()
    x1 = f(z1)
    x2 = f(F.conv2d(x1, w2, b2, padding=w2.shape[-1] // 2, groups=w1.shape[0]))
    torch.cat([x1, x2], 1)[:, :oc].backward(grad_out.double())
    return z1.grad, w2.grad, b2.grad


def _rel_err(actual, expected):
    assert not torch.isnan(actual).any(), "NaN in the kernel's result: an element was never written"
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()


# (N, C, H, W, init, ratio, k, out_channels, act, dtype, tf32, channels_last, backward groups, reverse order)
# Relative errors measured when written (forward / backward): float32 ~1e-7, tf32 ~3e-4, float16 ~2e-4,
# bfloat16 ~2e-3; the limits leave a wide margin for accumulation order only.
_CASES = {
    # several tiles per image (init 10: the one-element NHWC path), threads in descending order (the ascending
    # order runs on the NHWCVec pair below and in most other cases)
    "f16-nhwc-tiles-reversed": (2, 24, 40, 37, 10, 2, 3, 20, "relu", torch.float16, False, True, 5, True),
    "f16-nchw-ratio4-k7": (1, 8, 9, 11, 3, 4, 7, 12, "silu", torch.float16, False, False, 2, True),
    "bf16-nhwc-scalar-chunks-slice": (1, 12, 23, 29, 70, 2, 3, 100, "relu6", torch.bfloat16, False, True, 2, False),
    "f32-nchw-k5-primary-only": (2, 33, 15, 15, 40, 3, 5, 35, "hardswish", torch.float32, False, False, 4, True),
    "f32-nhwc-k1": (1, 13, 6, 9, 5, 2, 1, 9, "relu", torch.float32, False, True, 1, False),
    "f16-nhwc-7x7-deep-pipeline": (3, 200, 7, 7, 40, 2, 3, 80, "relu", torch.float16, False, True, 2, True),
    "f32-nchw-7x7-deep-pipeline": (2, 150, 7, 7, 20, 2, 3, 40, "silu", torch.float32, False, False, 2, False),
    "tf32-nhwc-identity": (1, 40, 14, 14, 36, 2, 3, 70, "identity", torch.float32, True, True, 3, True),
    # NHWCVec (ratio 2, out_channels % 8 == 0, init % 4 == 0): 16-byte vectors of channels per thread.
    "f16-vec-tiles-halo": (2, 16, 20, 19, 16, 2, 3, 32, "relu", torch.float16, False, True, 3, False),
    "f16-vec-tiles-halo-reversed": (2, 16, 20, 19, 16, 2, 3, 32, "relu", torch.float16, False, True, 3, True),
    # init % 8 == 4: 4-channel groups at the chunk edges (8-byte accesses), grad_z1 pixels 8-byte aligned only
    "f16-vec-quads-two-chunks": (1, 24, 13, 17, 36, 2, 3, 72, "silu", torch.float16, False, True, 2, True),
    # a slice inside the cheap half (12 of 20 cheap channels kept), k = 5 on the run-time-k instantiation
    "bf16-vec-k5-cheap-slice": (1, 8, 11, 9, 20, 2, 5, 32, "hardswish", torch.bfloat16, False, True, 2, False),
    # out_channels < init: the primary half only (no cheap pass), k = 7
    "f16-vec-k7-primary-only": (1, 16, 9, 12, 40, 2, 7, 24, "relu6", torch.float16, False, True, 2, True),
    "f32-vec-k1": (2, 12, 5, 7, 12, 2, 1, 24, "identity", torch.float32, False, True, 2, False),
    "tf32-vec-two-chunks": (1, 40, 10, 11, 36, 2, 3, 72, "relu", torch.float32, True, True, 2, True),
    # images smaller than the window and the kVX pixels a thread computes
    "f16-vec-1x1-image": (2, 8, 1, 1, 8, 2, 3, 16, "relu6", torch.float16, False, True, 2, False),
    "f16-vec-2x3-image-k5": (1, 8, 2, 3, 12, 2, 5, 24, "silu", torch.float16, False, True, 1, True),
    "f16-vec-empty-batch": (0, 8, 6, 5, 8, 2, 3, 16, "relu", torch.float16, False, True, 1, False),
    # ratio 3 keeps the one-element NHWC path even with vector-friendly channel counts
    "f16-nhwc-ratio3-fallback": (1, 16, 9, 10, 8, 3, 3, 24, "hardswish", torch.float16, False, True, 2, False),
}
_LIMIT = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
_TF32_LIMIT = 3e-3


@pytest.mark.parametrize("name", list(_CASES))
def test_kernels_match_reference_under_host_emulation(name, emulator, tmp_path):
    n, c, h, w, init, ratio, k, oc, act, dtype, tf32, cl, groups, reverse = _CASES[name]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    x = torch.randn(n, c, h, w, generator=gen).to(dtype)
    w1 = (torch.randn(init, c, 1, 1, generator=gen) * 3 / c ** 0.5).to(dtype)
    b1 = (torch.randn(init, generator=gen) * 0.5).to(dtype)
    w2 = (torch.randn(init * (ratio - 1), 1, k, k, generator=gen) * 1.2 / k).to(dtype)
    b2 = (torch.randn(init * (ratio - 1), generator=gen) * 0.5).to(dtype)
    grad_out = torch.randn(n, oc, h, w, generator=gen).to(dtype)
    inputs = (x, w1, b1, w2, b2)
    limit = _TF32_LIMIT if tf32 else _LIMIT[dtype]

    # The forward on `groups` blocks too: each block then runs several units of the persistent loop.
    out = _run_emulator(emulator, tmp_path, False, dtype, tf32, cl, act, inputs, oc, groups, grad_out, reverse,
                        plan=(groups, 0, 0, 0))
    expected = ghost_module_reference(*(t.double() for t in inputs), oc, act)
    err = _rel_err(out, expected)
    assert err < limit, f"{name}: forward relative error {err:.2e} >= {limit:.0e}"

    g1, sums = _run_emulator(emulator, tmp_path, True, dtype, tf32, cl, act, inputs, oc, groups, grad_out, reverse)
    rg1, rgw2, rgb2 = _reference_backward(inputs, oc, act, grad_out)
    err = _rel_err(g1, rg1)
    assert err < limit, f"{name}: grad of z1 relative error {err:.2e} >= {limit:.0e}"
    if oc > init:  # some cheap channels are kept: their weight gradients are non-zero
        err_w = _rel_err(sums[:, : k * k].reshape(rgw2.shape), rgw2)
        err_b = _rel_err(sums[:, k * k], rgb2)
        assert max(err_w, err_b) < limit, f"{name}: grad w_cheap {err_w:.2e}, grad b_cheap {err_b:.2e}"
    else:  # every cheap channel is sliced away: exact zeros, written (not NaN)
        assert not torch.isnan(sums).any() and (sums == 0).all(), f"{name}: dropped cheap channels' grads not zero"


# ---------------------------------------------------------------------------------------------------------------
# 4. the forward's layouts: unit heights, x resident, overlapped copies, persistent runs
# ---------------------------------------------------------------------------------------------------------------
#
# The planner picks, per shape, 32/64/128-channel units, x resident across a tile's chunks (xres) and the next
# unit's copies overlapped with the epilogue (overlap); the emulator can force each choice (ForwardPlanRequest) and
# the grid size. Every layout runs the same fragments in the same k order for every z1 element, so all of them
# must give bit-identical outputs; the first one is also compared with the float64 reference.

# (N, C, H, W, init, ratio, k, out_channels, act, dtype, tf32, channels_last, the tallest unit that fits)
_LAYOUT_CASES = {
    # 7x7 with k = 3: 128-row units (two: 128 + 36, a 4-channel edge), C = 40 ends the resident X inside a slice;
    # two images, so that 3 blocks start a run inside a tile and runs cross an image
    "f16-vec-7x7-k3-two-tall-chunks": (2, 40, 7, 7, 164, 2, 3, 328, "relu", torch.float16, False, True, 128),
    # k = 5 on 7x7: 64-row units at most (11x11 rect, 128 columns); a slice inside the cheap half
    "bf16-vec-7x7-k5-slice": (2, 24, 7, 7, 76, 2, 5, 120, "hardswish", torch.bfloat16, False, True, 64),
    # NCHW 16-bit (element copies, no cp.async for x), k = 1, ratio 3
    "f16-nchw-6x7-k1-ratio3": (2, 20, 6, 7, 70, 3, 1, 150, "silu", torch.float16, False, False, 128),
    # TF32, channels_last one-element path (ratio 3), k = 7: 64-row units
    "tf32-nhwc-5x6-k7": (1, 36, 5, 6, 44, 3, 7, 100, "relu6", torch.float32, True, True, 64),
    # two tiles (40 rows > the 32-row tile limit), 64-row units across a tile change
    "f16-vec-40x3-two-tiles": (1, 16, 40, 3, 70, 2, 3, 140, "identity", torch.float16, False, True, 64),
    # exact float32: 32-row units, streamed x only (no resident X on the FMA path); several tiles
    "f32-nchw-exact-tiles": (2, 40, 35, 9, 40, 2, 3, 80, "relu", torch.float32, False, False, 32),
    # a 1x1 image, init 36 = 32 + 4 (a 4-channel last chunk at 32 rows)
    "f16-vec-1x1-image": (2, 8, 1, 1, 36, 2, 3, 72, "relu6", torch.float16, False, True, 128),
    # slices: out_channels < init (no cheap pass; the chunks past 24 channels do not exist)
    "bf16-vec-7x7-primary-only": (2, 48, 7, 7, 100, 2, 3, 24, "silu", torch.bfloat16, False, True, 128),
    "f16-vec-empty-batch": (0, 8, 7, 7, 40, 2, 3, 80, "relu", torch.float16, False, True, 128),
}
_MODES = {1: "streamed", 2: "streamed+overlap", 3: "resident", 4: "resident+overlap"}


def _layout_inputs(name):
    n, c, h, w, init, ratio, k, oc, act, dtype, tf32, cl, _ = _LAYOUT_CASES[name]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    x = torch.randn(n, c, h, w, generator=gen).to(dtype)
    w1 = (torch.randn(init, c, 1, 1, generator=gen) * 3 / c ** 0.5).to(dtype)
    b1 = (torch.randn(init, generator=gen) * 0.5).to(dtype)
    w2 = (torch.randn(init * (ratio - 1), 1, k, k, generator=gen) * 1.2 / k).to(dtype)
    b2 = (torch.randn(init * (ratio - 1), generator=gen) * 0.5).to(dtype)
    return x, w1, b1, w2, b2


def _forced_forward(exe, tmp_path, name, inputs, plan, reverse=False):
    """The output of a forward with plan = (blocks, rows, mode, stages) forced; the emulator's plan and grid lines
    must show what was asked (a request the planner ignored would compare a layout with itself)."""
    n, c, h, w, init, ratio, k, oc, act, dtype, tf32, cl, _ = _LAYOUT_CASES[name]
    blocks, rows, mode, stages = plan
    want = dict(rows=rows, xres=int(mode >= 3), overlap=int(mode % 2 == 0))
    if stages:
        want["stages"] = stages
    if blocks and n > 0:
        want["blocks"] = min(blocks, plan_report.plan_of(exe, (n, c, h, w, init, ratio - 1, k), oc,
                                                         _dtype_name(dtype), cl, tf32, act, plan)["units"])
    return _run_emulator(exe, tmp_path, False, dtype, tf32, cl, act, inputs, oc, 1, None, reverse, plan=plan,
                         want_plan=want)


@pytest.mark.parametrize("name", list(_LAYOUT_CASES))
def test_forward_layouts_are_bit_identical(name, emulator, tmp_path):
    n, c, h, w, init, ratio, k, oc, act, dtype, tf32, cl, tallest = _LAYOUT_CASES[name]
    inputs = _layout_inputs(name)
    tensor_cores = dtype != torch.float32 or tf32
    # The reference layout: 32-row units, x streamed, no overlap, one unit per block (the kernel before entry 37).
    base = _forced_forward(emulator, tmp_path, name, inputs, (1 << 20, 32, 1, 0))
    if n > 0:
        expected = ghost_module_reference(*(t.double() for t in inputs), oc, act)
        limit = _TF32_LIMIT if tf32 else _LIMIT[dtype]
        err = _rel_err(base, expected)
        assert err < limit, f"{name}: forward relative error {err:.2e} >= {limit:.0e}"
    combos = []
    for rows in sorted({32, tallest}):
        for mode in (_MODES if tensor_cores else (1, 2)):
            combos.append((rows, mode))
    for idx, (rows, mode) in enumerate(combos):
        blocks = (1, 2, 3, 0)[idx % 4]  # one block runs everything; 2 and 3 split runs inside tiles; the launcher's
        stages = (0, 2, 3, 4)[(idx // 2) % 4]
        plan = (blocks, rows, mode, stages)
        out = _forced_forward(emulator, tmp_path, name, inputs, plan, reverse=idx % 3 == 1)
        assert not torch.isnan(out).any(), f"{name} {plan} ({_MODES[mode]}): an element was never written"
        assert torch.equal(out, base), (f"{name}: rows={rows} {_MODES[mode]} blocks={blocks} stages={stages} "
                                        f"differs from the reference layout by {(out - base).abs().max():.3e}")


# The planner's choices for GhostNet 1.0x shapes at batch 256 on an H100 (the emulator answers the device queries
# as one): (N, C, H, W, init, M, k, out_channels) -> fields of the plan line. Shared memory stays within two blocks
# per SM (113 KB) wherever one of the new layouts is taken.
_GHOSTNET_PLANS = [
    ((256, 160, 7, 7, 480, 1, 3, 960), dict(rows=128, chunks=4, xres=1, overlap=1)),
    ((256, 960, 7, 7, 80, 1, 3, 160), dict(rows=128, chunks=1, xres=0, overlap=1)),
    ((256, 112, 14, 14, 336, 1, 3, 672), dict(rows=32, chunks=11, xres=1, overlap=1)),
    ((256, 80, 14, 14, 240, 1, 3, 480), dict(rows=32, chunks=8, xres=1, overlap=1)),
    ((256, 672, 14, 14, 56, 1, 3, 112), dict(rows=32, chunks=2, xres=0, overlap=1)),
    ((256, 16, 112, 112, 24, 1, 3, 48), dict(rows=32, chunks=1, xres=0, overlap=1)),
    ((256, 24, 56, 56, 36, 1, 3, 72), dict(rows=32, chunks=2, xres=1, overlap=1)),
    # a small batch keeps 32-row units (128-row ones would leave SMs idle)
    ((8, 160, 7, 7, 480, 1, 3, 960), dict(rows=32, chunks=15, xres=1, overlap=1)),
]


@pytest.mark.parametrize("shape,want", _GHOSTNET_PLANS, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else None)
def test_forward_plan_for_ghostnet_shapes(shape, want, emulator):
    got = plan_report.plan_of(emulator, shape[:7], shape[7])
    assert {key: got[key] for key in want} == want, f"plan {got}"
    assert got["smem"] <= 113 * 1024, f"{got['smem']} bytes of shared memory: fewer than two blocks per SM"
