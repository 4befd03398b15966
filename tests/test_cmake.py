"""The CMake build of the op library (CMakeLists.txt): C++ tests under ctest, the installed CMake package, and the
CMake-built library loaded from Python through GHOSTKERNELS_LIBRARY.

One configure + build + install of the project (two jobs, unoptimized: see ``_BUILD_TYPE``) serves every test of
the run, including the C++ AOTInductor runner of tests/test_aoti.py: ``cmake_install()`` and ``aoti_runner()`` below
build once per test run (across pytest-xdist workers too) and are shared through this module. Skipped, saying
which, where cmake or a C++ compiler is missing (or where torch has CUDA but no CUDA toolkit is installed: torch's
own CMake config then refuses to configure).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CPP_TESTS = ("forward_float64_matches_aten", "forward_float32_matches_aten", "forward_bfloat16_matches_aten",
             "backward_float64_matches_autograd", "bad_inputs_raise", "bottleneck_matches_aten",
             "cuda_float32_matches_aten",
             "all_cases_registered_with_ctest")


def toolchain_skip_reason() -> str | None:
    """Why the CMake build cannot run here, or None."""
    if shutil.which("cmake") is None:
        return "cmake is not installed (apt-get install cmake, or pip install cmake)"
    cxx = os.environ.get("CXX")
    if cxx and shutil.which(cxx) is None:
        return f"CXX={cxx!r} is not an executable"
    if not cxx and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler (c++, g++ or clang++) is installed"
    if torch.version.cuda is not None:
        from torch.utils.cpp_extension import CUDA_HOME

        if CUDA_HOME is None:
            return "torch has CUDA, and its CMake config needs a CUDA toolkit (nvcc), which was not found"
    return None


def run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    """Run a build step; on failure, fail the test with the step's last output lines."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-60:])
        pytest.fail(f"{what} failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n{tail}", pytrace=False)
    return proc


# These tests check the build system, the package and the C++ API, not the kernels' speed (every other test uses the
# -O3 JIT build). Unoptimized, the CMake build compiles ~10x faster (the AVX-512 kernel files take ~36 s each at -O3
# on the CI's cores and ~3 s at -O0), which is most of what this file and tests/test_aoti.py cost CI. No -g either:
# debug info only adds compile and link time here.
_BUILD_TYPE = ["-DCMAKE_BUILD_TYPE=Debug", "-DCMAKE_CXX_FLAGS_DEBUG=-O0"]


def _generator_args() -> list[str]:
    return ["-G", "Ninja"] if shutil.which("ninja") else []


@dataclasses.dataclass(frozen=True)
class CMakeInstall:
    build_dir: Path
    prefix: Path

    @property
    def library(self) -> Path:
        suffix = {"Darwin": ".dylib", "Windows": ".dll"}.get(platform.system(), ".so")
        return self.prefix / "lib" / f"libghostkernels{suffix}"


_built: dict[str, object] = {}  # what this process has built (or the failure it met), by step


def _shared_root(tmp_path_factory) -> Path:
    """Where a build made once per test run goes. Under pytest-xdist every worker has its own basetemp inside one
    common directory: the build goes there, so that test_cmake.py and test_aoti.py on two workers share it."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _once(step: str, build, tmp_path_factory) -> Path:
    """build(directory) once per test run -- once per process, and once across pytest-xdist workers by a lock file
    beside the directory; returns the directory. A failed build fails every later caller the same way without
    building again."""
    if step not in _built:
        import fcntl

        root = _shared_root(tmp_path_factory)
        where, failed = root / step, root / f"{step}.failed"
        with open(root / f"{step}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if failed.exists():
                _built[step] = failed.read_text()
            elif (where / ".done").exists():
                _built[step] = where
            else:
                try:
                    build(where)
                    (where / ".done").touch()
                    _built[step] = where
                except BaseException as e:  # pytest.fail raises an OutcomeException (a BaseException)
                    _built[step] = f"{step}: {e}"
                    failed.write_text(_built[step])
    result = _built[step]
    if isinstance(result, str):
        pytest.fail(result, pytrace=False)
    return result


def cmake_install(tmp_path_factory) -> CMakeInstall:
    """Configure, build (-j2, unoptimized) and install the project into a temp dir of the run; returns where."""
    reason = toolchain_skip_reason()
    if reason:
        pytest.skip(reason)

    def build(root: Path) -> None:
        out = CMakeInstall(root / "build", root / "install")
        run(["cmake", "-S", str(REPO), "-B", str(out.build_dir), *_generator_args(), *_BUILD_TYPE,
             f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"], "CMake configure")
        run(["cmake", "--build", str(out.build_dir), "--parallel", "2"], "CMake build")
        run(["cmake", "--install", str(out.build_dir), "--prefix", str(out.prefix)], "CMake install")

    root = _once("cmake_install", build, tmp_path_factory)
    return CMakeInstall(root / "build", root / "install")


def aoti_runner(tmp_path_factory) -> Path:
    """examples/aoti_runner built as a separate project against the installed package (find_package(ghostkernels));
    returns the executable. On Linux it links with -Wl,--as-needed (Ubuntu's default), which would drop
    libghostkernels if the package's target did not keep it."""
    install = cmake_install(tmp_path_factory)

    def build(build_dir: Path) -> None:
        flags = ["-DCMAKE_EXE_LINKER_FLAGS=-Wl,--as-needed"] if platform.system() == "Linux" else []
        run(["cmake", "-S", str(REPO / "examples" / "aoti_runner"), "-B", str(build_dir), *_generator_args(),
             *_BUILD_TYPE, f"-DCMAKE_PREFIX_PATH={install.prefix}", *flags],
            "CMake configure of examples/aoti_runner")
        run(["cmake", "--build", str(build_dir), "--parallel", "2"], "CMake build of examples/aoti_runner")

    return _once("aoti_runner", build, tmp_path_factory) / "aoti_runner"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> CMakeInstall:
    return cmake_install(tmp_path_factory)


def test_ctest_runs_every_cpp_test(installed):
    proc = subprocess.run(["ctest", "--output-on-failure", "--timeout", "300"], cwd=installed.build_dir,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, f"ctest failed:\n{proc.stdout[-6000:]}"
    status = dict(re.findall(r"Test\s+#\d+:\s+(\S+)\s+\.*\**\s*(Passed|Skipped|Failed|\S+)", proc.stdout))
    assert set(status) == set(CPP_TESTS), f"ctest ran {sorted(status)}, expected {sorted(CPP_TESTS)}"
    for name in CPP_TESTS:
        # The CUDA test may skip (no GPU, CPU-only torch); nothing else may.
        allowed = ("Passed", "Skipped") if name.startswith("cuda_") else ("Passed",)
        assert status[name] in allowed, f"ctest {name}: {status[name]}\n{proc.stdout[-6000:]}"


def test_install_tree_has_library_headers_and_package(installed):
    cmake_dir = installed.prefix / "lib" / "cmake" / "ghostkernels"
    expected = [installed.library, installed.prefix / "include" / "ghostkernels" / "ghost_module_check.h",
                installed.prefix / "include" / "ghostkernels" / "activations.h",
                installed.prefix / "include" / "ghostkernels" / "op_layouts.h",
                cmake_dir / "ghostkernelsConfig.cmake", cmake_dir / "ghostkernelsConfigVersion.cmake",
                cmake_dir / "ghostkernelsTargets.cmake"]
    missing = [str(p) for p in expected if not p.exists()]
    assert not missing, f"not installed: {missing}"
    # The CMake library must not depend on Python (csrc/python_module.cpp is for the Python builds only).
    if shutil.which("readelf"):
        dynamic = subprocess.run(["readelf", "-d", str(installed.library)], stdout=subprocess.PIPE, text=True).stdout
        assert "libpython" not in dynamic and "torch_python" not in dynamic, dynamic


_PYTHON_CHECK = textwrap.dedent("""
    import json, torch, ghostkernels
    from ghostkernels.ops.reference import ghost_module_reference

    loaded_from = ghostkernels.load_library()
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(s, generator=g, dtype=torch.float64) for s in [(2, 4, 5, 6), (3, 4, 1, 1), (3,),
                                                                        (6, 1, 3, 3), (6,)]]
    out = torch.ops.ghostkernels.ghost_module(*args, 8, "relu6")
    err = (out - ghost_module_reference(*args, 8, "relu6")).abs().max().item()
    # The autograd formula registered from Python must be attached to the CMake-built op.
    leaves = [a.clone().requires_grad_() for a in args]
    grad_ok = torch.autograd.gradcheck(lambda *t: torch.ops.ghostkernels.ghost_module(*t, 8, "relu6"), leaves)
    # So must the fake kernel: torch.export traces the op without running it.
    class M(torch.nn.Module):
        def forward(self, x):
            return torch.ops.ghostkernels.ghost_module(x, *args[1:], 7, "silu")
    ep = torch.export.export(M(), (args[0],))
    exported = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    # Every shared library of ghostkernels in this process (the JIT build and setup.py's _C would show up here).
    maps = open("/proc/self/maps").read().split() if __import__("os").path.exists("/proc/self/maps") else []
    mapped = sorted({p for p in maps if "ghostkernels" in p and ".so" in p})
    print("RESULT " + json.dumps({"loaded_from": loaded_from, "err": err, "grad_ok": grad_ok,
                                  "exported": exported, "mapped": mapped}))
""")


def test_python_loads_the_cmake_library(installed):
    env = dict(os.environ, GHOSTKERNELS_LIBRARY=str(installed.library),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _PYTHON_CHECK], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["loaded_from"] == str(installed.library)
    if platform.system() == "Linux":
        assert result["mapped"] == [os.path.realpath(installed.library)], (
            f"expected only the CMake-built library in the process, found {result['mapped']}")
    assert result["err"] < 1e-12, result  # float64: the CPU kernel against the eager reference
    assert result["grad_ok"]
    assert result["exported"] == ["ghostkernels.ghost_module.default"], result["exported"]


def test_cpp_application_gets_the_ops_from_the_package(tmp_path_factory, tmp_path):
    """The runner checks that ghostkernels::ghost_module is registered before it opens the package: linked through
    ghostkernels::ghostkernels under --as-needed, it must get past that check and fail on the missing package."""
    runner = aoti_runner(tmp_path_factory)
    proc = subprocess.run([str(runner), str(tmp_path / "missing.pt2"), str(tmp_path / "in.pt"),
                           str(tmp_path / "out.pt")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 1, proc.stdout
    assert "not registered" not in proc.stdout, proc.stdout
    assert "missing.pt2" in proc.stdout, proc.stdout
    usage = subprocess.run([str(runner)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stdout
