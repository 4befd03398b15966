"""What the tests of the CUDA backend without a GPU share (tests/test_cuda_compile.py, tests/test_cuda_gate.py):
finding nvcc, the CUDA headers and a host C++ compiler, and building the host emulator of csrc/cuda/emulation."""

from __future__ import annotations

import glob
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch
from torch.utils import cpp_extension

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(REPO, "csrc")
CUDA_DIR = os.path.join(CSRC, "cuda")
CU_FILES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))
BINDINGS = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cpp")))


def nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    home = cpp_extension.CUDA_HOME
    cand = os.path.join(home, "bin", "nvcc") if home else None
    return cand if cand and os.path.isfile(cand) else None


def cuda_include_dir() -> str | None:
    """The CUDA toolkit's include directory (the one holding cuda_runtime_api.h and cuda_fp16.h)."""
    roots = []
    found = nvcc()
    if found:
        roots.append(os.path.dirname(os.path.dirname(os.path.realpath(found))))
    if cpp_extension.CUDA_HOME:
        roots.append(cpp_extension.CUDA_HOME)
    roots.append("/usr/local/cuda")
    for root in roots:
        for inc in (os.path.join(root, "include"), os.path.join(root, "targets", "x86_64-linux", "include")):
            if os.path.isfile(os.path.join(inc, "cuda_runtime_api.h")) and os.path.isfile(os.path.join(inc, "cuda_fp16.h")):
                return inc
    return None


def cxx() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def cxx_std() -> str:
    """The C++ standard torch's own extension builds use (C++20 for recent torch, C++17 before)."""
    import inspect

    return "c++20" if "-std=c++20" in inspect.getsource(cpp_extension) else "c++17"


_BUILT: list[str] = []  # the emulator built in this session: both test files share one build (~30-60 s)


def build_emulator(directory) -> str:
    """The host emulator (csrc/cuda/emulation/ghost_cuda_emulator.cpp) built into ``directory``, or the one an
    earlier call of this session built (its directory lives until the session ends); skips the calling test where a
    compiler or the CUDA headers are missing."""
    if _BUILT and os.path.isfile(_BUILT[0]):
        return _BUILT[0]
    compiler, inc = cxx(), cuda_include_dir()
    if compiler is None:
        pytest.skip("no C++ compiler found")
    if inc is None:
        pytest.skip("the CUDA headers (cuda_fp16.h, cuda_runtime_api.h) were not found")
    exe = os.path.join(str(directory), "ghost_cuda_emulator")
    src = os.path.join(CUDA_DIR, "emulation", "ghost_cuda_emulator.cpp")
    cmd = [compiler, "-std=c++17", "-O1", "-Wno-attributes", f"-I{inc}", src, "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"building the emulator failed:\n{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    _BUILT[:] = [exe]
    return exe


DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def run_emulator(exe, in_path, out_path, header, arrays, reverse=False) -> tuple[torch.Tensor, str]:
    """Run the emulator on one call: ``header`` the 15 integers after the magic (see the emulator's usage),
    ``arrays`` the float32 inputs in order; returns (its float32 output, flat; its stdout)."""
    with open(in_path, "wb") as f:
        f.write(struct.pack("<4s15q", b"GKEM", *header))
        for a in arrays:
            f.write(a.to(torch.float32).contiguous().numpy().astype("<f4").tobytes())
    cmd = [exe, str(in_path), str(out_path)] + (["--reverse"] if reverse else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"emulator failed:\n{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    return torch.from_numpy(np.fromfile(out_path, dtype="<f4").copy()), r.stdout
