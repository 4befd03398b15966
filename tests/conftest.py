"""Test-session setup shared by every test file.

- Without a CUDA device the Triton backend can only run under Triton's interpreter, which is chosen by the
  environment variable TRITON_INTERPRET=1 and read when triton is imported: it is set here, before any test module
  (or torch.compile) imports triton.
- The op library is built (first run) or loaded once, before the first test, so that no test's duration includes
  the build.
- Every test runs with deterministic algorithms and ``fill_uninitialized_memory`` on: at::empty / torch.empty then
  fill floating-point memory with NaN, so an output element a kernel never writes shows up as NaN instead of
  whatever the allocator left there (the tests' comparisons reject NaN).
- TF32 is off, so that float32 on a GPU means float32 arithmetic and the float32 tolerances can stay tight.
- ``cuda_objects``: the csrc/cuda/*.cu files compiled once per session for sm_80 and sm_90 (tests/cuda_toolchain.py),
  shared by test_cuda_compile.py (do they compile) and test_cuda_sass.py (what the sm_90 code looks like).
- OpenMP threads sleep instead of spinning while they wait (OMP_WAIT_POLICY=PASSIVE, unless set): CI runs two
  pytest-xdist workers of two torch threads each on two cores, and spinning threads of one worker took the cores
  from the other's, making the small ops of a train-mode GhostNet step up to 90x slower (bench/NOTES.md entry 38).
  Set here, in the controller, before the workers start (they inherit it; libgomp reads it when torch loads it).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("tests/conftest.py: triton was imported before TRITON_INTERPRET=1 could be set")
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _TESTS_DIR)  # for `import ghost_testing`
try:
    import ghostkernels  # noqa: E402
except ImportError:  # not installed: test the source checkout
    sys.path.insert(0, os.path.dirname(_TESTS_DIR))
    import ghostkernels  # noqa: E402


# The test files that take minutes (a CMake build of the project, an AOTInductor compile, nvcc on every .cu file)
# run first. CI runs the suite on two pytest-xdist workers with --dist loadfile --no-loadscope-reorder, which hands
# files out in collection order (without --no-loadscope-reorder xdist sorts the files by their number of tests, which
# put these few-test files last): one of these last would leave the other worker idle for its duration.
_LONG_FILES = ("test_aoti.py", "test_cmake.py", "test_cuda_compile.py", "test_cuda_sass.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = os.path.basename(str(item.path))
        return _LONG_FILES.index(name) if name in _LONG_FILES else len(_LONG_FILES)

    items.sort(key=rank)  # stable: every file keeps its own order


@pytest.fixture(scope="session", autouse=True)
def _op_library():
    return ghostkernels.load_library()


@pytest.fixture(autouse=True)
def _poison_uninitialized_memory():
    ctx = torch.utils.deterministic
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             ctx.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    ctx.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        ctx.fill_uninitialized_memory = saved[2]


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="session")
def cuda_objects():
    import cuda_toolchain

    nvcc = cuda_toolchain.nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (no CUDA toolkit on PATH, in CUDA_HOME or /usr/local/cuda)")
    return cuda_toolchain.CudaObjects(nvcc, cuda_toolchain.sass.cache_dir())


@pytest.fixture
def seed(request) -> int:
    """A seed derived from the test id: fresh data per test, the same data on every run and every machine."""
    import ghost_testing

    return ghost_testing.seed_from(request.node.nodeid)
