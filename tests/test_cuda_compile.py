"""The CUDA backend on a machine without a GPU.

1. Every ``csrc/cuda/*.cu`` compiles with nvcc for sm_80 and sm_90 (one nvcc call per file, both architectures),
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

import pytest
import torch
import torch.nn.functional as F
from torch.utils import cpp_extension

from cuda_testing import (BINDINGS, CSRC, CU_FILES, CUDA_DIR, DTYPE_CODE, build_emulator, cuda_include_dir, cxx,
                          cxx_std, nvcc, run_emulator)

from ghostkernels.ops import build as _build
from ghostkernels.ops.reference import activation, ghost_module_reference


# ---------------------------------------------------------------------------------------------------------------
# 1. nvcc
# ---------------------------------------------------------------------------------------------------------------

def test_cuda_sources_exist():
    assert CU_FILES, "csrc/cuda has no .cu files"
    assert os.path.isfile(os.path.join(CUDA_DIR, "ghost_module_cuda.cpp"))


@pytest.mark.parametrize("path", CU_FILES, ids=os.path.basename)
def test_cu_file_compiles_for_sm80_and_sm90(path, tmp_path):
    compiler = nvcc()
    if compiler is None:
        pytest.skip("nvcc not found (no CUDA toolkit on PATH or in CUDA_HOME)")
    cmd = [compiler, f"-std={cxx_std()}", *_build.nvcc_flags(), *cpp_extension.COMMON_NVCC_FLAGS, "-I", CSRC,
           "--threads", "2",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           "-c", path, "-o", str(tmp_path / "out.o")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"nvcc failed on {os.path.basename(path)}:\n{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"


# ---------------------------------------------------------------------------------------------------------------
# 2. the binding
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", BINDINGS, ids=os.path.basename)
def test_binding_passes_syntax_check(path):
    compiler, inc = cxx(), cuda_include_dir()
    if compiler is None:
        pytest.skip("no C++ compiler found")
    if inc is None:
        pytest.skip("the CUDA runtime headers (cuda_runtime_api.h) were not found")
    torch_includes = cpp_extension.include_paths()
    if not any(os.path.isfile(os.path.join(d, "c10", "cuda", "CUDAGuard.h")) for d in torch_includes):
        pytest.skip("this torch build ships no c10/cuda headers")
    # A CPU-only torch lacks the generated c10/cuda/impl/cuda_cmake_macros.h; its only content is the DLL-export
    # switch, which a syntax check does not need.
    cmd = [compiler, f"-std={cxx_std()}", "-fsyntax-only", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
           "-DGHOSTKERNELS_WITH_CUDA", *[f"-I{d}" for d in torch_includes], f"-I{inc}", f"-I{CSRC}", path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"syntax check failed:\n{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"


# ---------------------------------------------------------------------------------------------------------------
# 3. the kernels under host emulation
# ---------------------------------------------------------------------------------------------------------------

_ACT_CODE = {"identity": 0, "relu": 1, "relu6": 2, "silu": 3, "hardswish": 4}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> str:
    return build_emulator(tmp_path_factory.mktemp("emulator"))


def _run_emulator(exe, tmp_path, backward, dtype, tf32, channels_last, act, inputs, oc, groups, grad_out, reverse):
    x, w1, b1, w2, b2 = inputs
    n, c, h, w = x.shape
    init, k = w1.shape[0], w2.shape[-1]
    m = w2.shape[0] // init
    header = (int(backward), DTYPE_CODE[dtype], int(tf32), int(channels_last), _ACT_CODE[act], n, c, h, w, init, m,
              k, oc, groups, 0)
    arrays = [x, w1, b1, w2, b2] + ([grad_out] if backward else [])
    data, stdout = run_emulator(exe, tmp_path / f"in{int(backward)}", tmp_path / f"out{int(backward)}", header,
                                arrays, reverse)
    layouts = [line.split()[1] for line in stdout.splitlines() if line.startswith("layout ")]
    want = _expected_layout(dtype, channels_last, m, oc, init)
    assert layouts == [want], f"the launcher chose layout {layouts}, expected {want} ({_LAYOUT_NAMES[want]})"
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
    "f16-nhwc-vec-tiles": (2, 24, 40, 37, 10, 2, 3, 20, "relu", torch.float16, False, True, 5, False),
    "f16-nhwc-vec-tiles-reversed": (2, 24, 40, 37, 10, 2, 3, 20, "relu", torch.float16, False, True, 5, True),
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

    out = _run_emulator(emulator, tmp_path, False, dtype, tf32, cl, act, inputs, oc, groups, grad_out, reverse)
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
