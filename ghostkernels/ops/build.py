"""Finding or building the C++/CUDA op library.

Order of preference:
  1. ``GHOSTKERNELS_LIBRARY=/path/to/libghostkernels.so``: a library built by CMake (docs/deployment.md).
  2. ``ghostkernels/_C*.so``: built ahead of time by ``GHOSTKERNELS_BUILD_AOT=1 pip install .``.
  3. A JIT build of ``csrc/`` with ninja through ``torch.utils.cpp_extension.load`` into a cache directory. The build
     directory's name carries a hash of the sources and flags, so a changed source gets a fresh build; a finished
     build is marked (built.ok) and later processes load it directly; an flock keeps two processes from building
     into it at once (and, unlike torch's own lock file, cannot be left behind by a killed build).

Build knobs (environment variables, read when the library is first needed):
  GHOSTKERNELS_CACHE        cache directory (default ``~/.cache/ghostkernels``)
  GHOSTKERNELS_NO_CUDA=1    never compile the CUDA sources, even when torch has CUDA
  GHOSTKERNELS_NATIVE=0     do not pass ``-march=native`` to the C++ compiler (default on: the JIT library is built
                            on, and for, the machine that runs it)
  GHOSTKERNELS_VERBOSE=1    show the compiler's command lines
  MAX_JOBS                  parallel compile jobs (torch's knob)
  TORCH_CUDA_ARCH_LIST      CUDA architectures (torch's knob; default: the GPUs present)
"""

from __future__ import annotations

import glob
import hashlib
import os
import platform
import shutil
import sys
import threading

import torch

# The package directory (ghostkernels/): the AOT library (_C*.so) and an installed package's csrc/ sit there.
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_lock = threading.Lock()
_loaded_from: str | None = None


def csrc_dir() -> str:
    """The C++/CUDA sources: ``ghostkernels/csrc`` in an installed package, ``../csrc`` in a source checkout."""
    for cand in (os.path.join(_PKG_DIR, "csrc"), os.path.join(os.path.dirname(_PKG_DIR), "csrc")):
        if os.path.isfile(os.path.join(cand, "ghost_module.cpp")):
            return cand
    raise RuntimeError(
        "ghostkernels: cannot find the C++ sources (csrc/ghost_module.cpp) next to the package; "
        "reinstall ghostkernels or set GHOSTKERNELS_LIBRARY to a prebuilt library"
    )


def cuda_wanted() -> bool:
    return torch.version.cuda is not None and os.environ.get("GHOSTKERNELS_NO_CUDA", "0") != "1"


# The C++ sources that take longest to compile (about 20-45 s each at -O3 on one quiet core; the others 2-10 s),
# listed first so that ninja, which starts jobs in the order the sources are given, starts them first: in
# alphabetical order the longest one started 40 s into a two-core build and finished alone, 35 s after the rest.
_SLOW_SOURCES = ("cpu/kernel_ghost_forward_avx512.cpp", "cpu/launch_ghost_backward.cpp",
                 "cpu/kernel_depthwise_avx512.cpp", "cpu/launch_ghost_forward.cpp", "bn_train_autograd.cpp",
                 "cpu/launch_bn_z1_passes.cpp")


def sources(with_cuda: bool) -> list[str]:
    """Every source of the Python build: the schema, the Python module stub, one file per backend; the slowest to
    compile first (_SLOW_SOURCES)."""
    root = csrc_dir()
    srcs = sorted(glob.glob(os.path.join(root, "*.cpp")))  # the schema, shared checks, device-generic ops, stub
    srcs += sorted(glob.glob(os.path.join(root, "cpu", "*.cpp")))
    if with_cuda:
        srcs += sorted(glob.glob(os.path.join(root, "cuda", "*.cpp")))
        srcs += sorted(glob.glob(os.path.join(root, "cuda", "*.cu")))
    slow = {os.path.join(root, *name.split("/")): rank for rank, name in enumerate(_SLOW_SOURCES)}
    return sorted(srcs, key=lambda path: slow.get(path, len(slow)))  # stable: the rest keep their order


def cxx_flags() -> list[str]:
    # -fopenmp: at::parallel_for is a header template that is an OpenMP loop in torch's OpenMP builds; compiled
    # without it, the pragma is dropped and every call runs on one thread. Nothing is linked for it: the GOMP
    # symbols resolve to the OpenMP runtime torch itself loaded, so there is one thread pool per process.
    flags = ["-O3", "-fopenmp"]  # the C++ standard is torch's choice (its headers need C++17 or later)
    if os.environ.get("GHOSTKERNELS_NATIVE", "1") != "0" and platform.machine() in ("x86_64", "AMD64"):
        flags.append("-march=native")
    return flags


def nvcc_flags() -> list[str]:
    return ["-O3", "--use_fast_math", "-lineinfo"]


def _fingerprint(srcs: list[str], with_cuda: bool) -> str:
    """Hash of everything that decides the binary: sources and headers, flags, torch and Python versions."""
    h = hashlib.sha256()
    root = csrc_dir()
    headers = sorted(glob.glob(os.path.join(root, "**", "*.h"), recursive=True)
                     + glob.glob(os.path.join(root, "**", "*.cuh"), recursive=True))
    for path in sorted(srcs) + headers:
        h.update(os.path.relpath(path, root).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(repr((cxx_flags(), nvcc_flags() if with_cuda else None, torch.__version__, torch.version.cuda,
                   sys.version_info[:2], platform.machine(), os.environ.get("TORCH_CUDA_ARCH_LIST"))).encode())
    return h.hexdigest()[:16]


def _check_toolchain(with_cuda: bool) -> None:
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        raise RuntimeError(
            "ghostkernels: building the C++ op library needs ninja, which was not found. "
            "Install it with `pip install ninja` (or your system's package manager)."
        )
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise RuntimeError(
            f"ghostkernels: building the C++ op library needs a C++ compiler, but `{cxx}` was not found. "
            "Install g++ or clang++ (or set CXX to one)."
        )
    if with_cuda and cpp_extension.CUDA_HOME is None:
        raise RuntimeError(
            "ghostkernels: torch has CUDA but no CUDA toolkit (nvcc) was found; set CUDA_HOME to a toolkit, "
            "or set GHOSTKERNELS_NO_CUDA=1 to build the CPU kernels only."
        )


def _prebuilt() -> str | None:
    env = os.environ.get("GHOSTKERNELS_LIBRARY")
    if env:
        if not os.path.isfile(env):
            raise RuntimeError(f"ghostkernels: GHOSTKERNELS_LIBRARY={env!r} is not a file")
        return env
    found = sorted(glob.glob(os.path.join(_PKG_DIR, "_C*.so")) + glob.glob(os.path.join(_PKG_DIR, "_C*.pyd")))
    return found[0] if found else None


# Written into the build directory after a build succeeded: its presence (with the fingerprint inside) means the
# library next to it is complete, so a later process loads it without going through cpp_extension.load at all.
_DONE = "built.ok"
# Our own lock around a build. torch's build lock (a file named "lock" that cpp_extension.load creates and waits
# on) is a plain file: a process killed mid-build leaves it behind and every later load waits on it forever. An
# flock is released by the kernel when its holder dies; holding it, a leftover torch lock can only be stale.
_FLOCK = "ghostkernels.flock"


def _jit_build() -> str:
    from torch.utils import cpp_extension

    with_cuda = cuda_wanted()
    srcs = sources(with_cuda)
    cache = os.environ.get("GHOSTKERNELS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ghostkernels")
    fp = _fingerprint(srcs, with_cuda)
    build_dir = os.path.join(cache, f"{'cuda' if with_cuda else 'cpu'}-{fp}")
    so_path = os.path.join(build_dir, "ghostkernels_C.so")
    if _built(build_dir, fp):
        torch.ops.load_library(so_path)
        return so_path
    _check_toolchain(with_cuda)
    os.makedirs(build_dir, exist_ok=True)
    with _build_lock(build_dir):
        if not _built(build_dir, fp):  # another process may have built it while we waited
            kind = "C++ and CUDA" if with_cuda else "C++"
            print(f"ghostkernels: building the {kind} op library (first use; cached in {build_dir})",
                  file=sys.stderr, flush=True)
            stale = os.path.join(build_dir, "lock")
            if os.path.exists(stale):
                os.remove(stale)
            cpp_extension.load(
                name="ghostkernels_C",
                sources=srcs,
                extra_cflags=cxx_flags() + (["-DGHOSTKERNELS_WITH_CUDA"] if with_cuda else []),
                extra_cuda_cflags=nvcc_flags(),
                extra_include_paths=[csrc_dir()],
                build_directory=build_dir,
                is_python_module=False,
                verbose=os.environ.get("GHOSTKERNELS_VERBOSE", "0") == "1",
            )  # also loads the library
            with open(os.path.join(build_dir, _DONE), "w") as f:
                f.write(fp)
            return so_path
    torch.ops.load_library(so_path)
    return so_path


def _built(build_dir: str, fp: str) -> bool:
    try:
        with open(os.path.join(build_dir, _DONE)) as f:
            return f.read() == fp and os.path.isfile(os.path.join(build_dir, "ghostkernels_C.so"))
    except OSError:
        return False


class _build_lock:
    """An exclusive flock on the build directory's lock file for the duration (see _FLOCK)."""

    def __init__(self, build_dir: str):
        self.path = os.path.join(build_dir, _FLOCK)

    def __enter__(self):
        import fcntl

        self.file = open(self.path, "a")
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.file.close()  # closing releases the lock


def load_library() -> str:
    """Load the op library once per process (building it first if needed) and return where it came from."""
    global _loaded_from
    if _loaded_from is not None:
        return _loaded_from
    with _lock:
        if _loaded_from is None:
            path = _prebuilt()
            if path is not None:
                torch.ops.load_library(path)
            else:
                path = _jit_build()  # cpp_extension.load also loads it
            from . import registration

            registration.register_all()
            _loaded_from = path
    return _loaded_from


def is_loaded() -> bool:
    return _loaded_from is not None
