"""The CUDA toolchain of the GPU-less CUDA tests (test_cuda_compile.py, test_cuda_sass.py), shared so that each
``csrc/cuda/*.cu`` is compiled once per test session (CI's most expensive step was compiling them twice).

- Finding the tools: nvcc, the CUDA headers, a C++ compiler, cuobjdump/nvdisasm (bench/gpu/sass_report.py looks
  for those, also inside the triton wheel).
- ``CudaObjects``: every .cu compiled on first request, with the JIT build's flags (ghostkernels.ops.build and
  torch's COMMON_NVCC_FLAGS) for compute_80 (PTX) and sm_90 (SASS) in one nvcc call; the SASS tests take the sm_90 cubin out of that
  object (cuobjdump -xelf) instead of compiling again. Objects are kept under GHOSTKERNELS_SASS_CACHE (default a
  folder in the system temp dir), named by a hash of every csrc/cuda source, the flags and nvcc's version, so a
  rerun with unchanged sources reuses them; a failed compile is never kept.
- The host emulator (csrc/cuda/emulation), built once per source hash by bench/gpu/plan_report.py.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import glob
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import threading

import numpy as np
import torch
from torch.utils import cpp_extension

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(REPO, "csrc")
CUDA_DIR = os.path.join(CSRC, "cuda")
CU_FILES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))
BINDINGS = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cpp")))  # the thin torch bindings (syntax-checked)
ARCHS = (80, 90)


def _bench_module(name: str):
    """bench/gpu/<name>.py, imported once (the bench folder is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "bench", "gpu", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


sass = _bench_module("sass_report")
plan_report = _bench_module("plan_report")


def nvcc() -> str | None:
    found = sass.find_nvcc()
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


def nvcc_flags() -> list[str]:
    """The JIT build's nvcc flags (tests/test_cuda_sass.py checks sass_report.NVCC_FLAGS against them)."""
    from ghostkernels.ops import build

    return [f"-std={cxx_std()}", *build.nvcc_flags(), *cpp_extension.COMMON_NVCC_FLAGS, "-I", CSRC]


@dataclasses.dataclass
class CompiledUnit:
    source: str       # csrc/cuda/<name>.cu
    cmd: list         # the nvcc command line
    returncode: int
    output: str       # nvcc's stdout + stderr
    obj: str | None   # the object file (sm_80 and sm_90 code), None when nvcc failed

    def failure(self) -> str:
        return f"nvcc failed on {os.path.basename(self.source)}:\n{' '.join(self.cmd)}\n{self.output}"


class CudaObjects:
    """Each .cu compiled at most once, when first asked for (so each test's duration shows its own file)."""

    def __init__(self, nvcc_path: str, cache_dir: str):
        self.nvcc = nvcc_path
        self.dir = cache_dir
        self.flags = [*nvcc_flags(), "--threads", str(len(ARCHS))]  # the two architectures' passes run in parallel
        # sm_90 to SASS (the SASS tests read it); sm_80 to PTX only: cicc, which parses, instantiates and optimizes
        # every kernel for compute_80 (so an arch-guarded path or an sm_90-only intrinsic fails here), runs for
        # both; ptxas, a third of nvcc's time on these files (bench/NOTES.md entry 38), only for sm_90. The
        # resource limits ptxas checks are the same on both (64K registers, 255 per thread); the shared-memory
        # plan, the one that differs (164 against 227 KiB), is chosen at run time per device.
        self.flags += ["-gencode", "arch=compute_80,code=compute_80", "-gencode", "arch=compute_90,code=sm_90"]
        version = subprocess.run([nvcc_path, "--version"], capture_output=True, text=True).stdout
        self._key = (nvcc_path, version, self.flags)
        self._units: dict[str, CompiledUnit] = {}
        self._lock = threading.Lock()

    def compile(self, name: str) -> CompiledUnit:
        """csrc/cuda/<name> (a .cu file name) compiled, or the record of its failure."""
        with self._lock:
            if name not in self._units:
                self._units[name] = self._compile(os.path.join(CUDA_DIR, name))
            return self._units[name]

    def _compile(self, src: str) -> CompiledUnit:
        base = os.path.splitext(os.path.basename(src))[0]
        obj = os.path.join(self.dir, f"{base}-{sass.sources_hash(repr(self._key))}.o")
        cmd = [self.nvcc, *self.flags, "-c", src, "-o", obj]
        # One compile per object across processes too (pytest-xdist workers run test_cuda_compile.py and
        # test_cuda_sass.py side by side): the second waits for the first's object instead of compiling it again.
        with open(f"{obj}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if os.path.isfile(obj):
                return CompiledUnit(src, cmd, 0, "(unchanged sources: the object of an earlier compile)", obj)
            tmp = f"{obj}.tmp{os.getpid()}"
            r = subprocess.run([*cmd[:-1], tmp], capture_output=True, text=True)
            if r.returncode != 0:
                return CompiledUnit(src, cmd, r.returncode, r.stdout + r.stderr, None)
            os.replace(tmp, obj)
            return CompiledUnit(src, cmd, 0, r.stdout + r.stderr, obj)

    def cubin(self, name: str, arch: int = 90) -> str:
        """The sm_<arch> cubin inside the object of csrc/cuda/<name> (extracted once)."""
        unit = self.compile(name)
        assert unit.obj is not None, unit.failure()
        return sass.extract_cubin(unit.obj, arch)


@functools.lru_cache(maxsize=1)
def emulator() -> str:
    """The host emulator's binary (bench/gpu/plan_report.py builds it once per hash of csrc/)."""
    return plan_report.build_emulator(cxx(), cuda_include_dir())


def emulator_or_skip() -> str:
    """emulator(), skipping the calling test where a C++ compiler or the CUDA headers are missing."""
    import pytest

    if cxx() is None:
        pytest.skip("no C++ compiler found")
    if cuda_include_dir() is None:
        pytest.skip("the CUDA headers (cuda_fp16.h, cuda_runtime_api.h) were not found")
    return emulator()


DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # the emulator header's dtype field


def run_emulator(exe: str, in_path, out_path, header: tuple, arrays, reverse: bool = False, plan=(0, 0, 0),
                 gate_size=None):
    """Run the emulator on one call: ``header`` the 15 integers after the magic up to the forward plan request
    (mode, dtype, tf32, channels_last, act, N, C, H, W, I, M, K, OC, groups, blocks), ``plan`` the request's rows,
    mode and stages (0: the planner's choice), ``gate_size`` (Hg, Wg) for the gated forward (mode 3), ``arrays``
    the float32 inputs in order; returns (its float32 output, flat; its stdout)."""
    assert (gate_size is not None) == (header[0] == 3), "the gated forward (mode 3) and only it has a map size"
    with open(in_path, "wb") as f:
        f.write(struct.pack("<4s18q", b"GKEM", *header, *plan))
        if gate_size is not None:
            f.write(struct.pack("<2q", *gate_size))
        for a in arrays:
            f.write(a.to(torch.float32).contiguous().numpy().astype("<f4").tobytes())
    cmd = [exe, str(in_path), str(out_path)] + (["--reverse"] if reverse else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"emulator failed:\n{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    return torch.from_numpy(np.fromfile(out_path, dtype="<f4").copy()), r.stdout
