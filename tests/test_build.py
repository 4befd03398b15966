"""The JIT build of the op library (ghostkernels/ops/build.py): cache reuse, rebuild on change, concurrent first builds,
clear errors for a missing toolchain.

Processes are started with the same interpreter and the source checkout on PYTHONPATH, so they load the same
ghostkernels as this test session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils import cpp_extension

import ghostkernels
from ghostkernels.ops import build as _build

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(ghostkernels.__file__)))
_BUILDING = "ghostkernels: building"


def _child_env(**overrides) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GHOSTKERNELS_LIBRARY", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_PARENT, env.get("PYTHONPATH")) if p)
    env.update(overrides)
    return env


def _run_python(code: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _skip_if_prebuilt():
    if os.environ.get("GHOSTKERNELS_LIBRARY") or _build._prebuilt() is not None:
        pytest.skip("a prebuilt op library is in use (GHOSTKERNELS_LIBRARY or ghostkernels/_C*.so): no JIT build")


def test_second_process_loads_from_the_cache():
    """This session has built (or loaded) the library already: a new process finds it and builds nothing."""
    _skip_if_prebuilt()
    path = ghostkernels.load_library()
    proc = _run_python("import ghostkernels; print(ghostkernels.load_library())", _child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _BUILDING not in proc.stderr, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == path


def _copy_sources(tmp_path, monkeypatch) -> str:
    """A copy of csrc/ that _build treats as the sources (nothing is compiled: only the fingerprint is computed)."""
    root = str(tmp_path / "csrc")
    shutil.copytree(_build.csrc_dir(), root, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_build, "csrc_dir", lambda: root)
    return root


def _fingerprint() -> str:
    return _build._fingerprint(_build.sources(False), False)


def test_fingerprint_follows_source_content(tmp_path, monkeypatch):
    original = _fingerprint()
    root = _copy_sources(tmp_path, monkeypatch)
    assert _fingerprint() == original, "the fingerprint must depend on the sources' content, not on their location"

    kernel = os.path.join(root, "cpu", "launch_ghost_forward.cpp")
    with open(kernel, "a") as f:
        f.write("\n// a changed kernel source\n")
    changed_source = _fingerprint()
    assert changed_source != original

    header = os.path.join(root, "activations.h")
    with open(header, "a") as f:
        f.write("\n// a changed header\n")
    changed_header = _fingerprint()
    assert changed_header not in (original, changed_source)

    with open(os.path.join(root, "cpu", "extra_kernel.cpp"), "w") as f:
        f.write("// a new source file\n")
    assert _fingerprint() not in (original, changed_source, changed_header)


def test_fingerprint_follows_build_flags(monkeypatch):
    original = _fingerprint()
    monkeypatch.setattr(_build, "cxx_flags", lambda: ["-O2"])
    assert _fingerprint() != original
    assert _build._fingerprint(_build.sources(False), True) != _build._fingerprint(_build.sources(False), False)


def test_cuda_sources_only_when_cuda_is_wanted(monkeypatch):
    cuda_dir = os.path.join(_build.csrc_dir(), "cuda") + os.sep
    assert not any(s.startswith(cuda_dir) or s.endswith(".cu") for s in _build.sources(False))
    monkeypatch.setenv("GHOSTKERNELS_NO_CUDA", "1")
    assert not _build.cuda_wanted()
    monkeypatch.delenv("GHOSTKERNELS_NO_CUDA")
    assert _build.cuda_wanted() == (torch.version.cuda is not None)


def _seed_with_this_sessions_objects(cache) -> None:
    """Copy this session's compiled objects and ninja's records of them (not the library, not the done-marker) into
    the build directory a CPU-only child computes, so that the children's first build runs the whole build path
    (no marker: lock, cpp_extension.load, ninja) but ninja only has to link. Compiling every source again costs
    about 6 CPU-minutes, which the CI cannot spare; that a build from nothing works is what the session's own first
    build (a fresh clone in CI) shows. Where this session's build is not the CPU-only one, or was made from a copy
    of the same sources elsewhere (ninja's records name the source paths), nothing is seeded and the children
    compile everything."""
    built_dir = os.path.dirname(ghostkernels.load_library())
    fp = _build._fingerprint(_build.sources(False), False)
    if os.path.basename(built_dir) != f"cpu-{fp}":
        return
    with open(os.path.join(built_dir, "build.ninja")) as f:
        if f" {_build.csrc_dir()}{os.sep}" not in f.read():
            return
    target = cache / f"cpu-{fp}"
    target.mkdir(parents=True)
    for name in os.listdir(built_dir):
        if name.endswith(".o") or name in ("build.ninja", ".ninja_log", ".ninja_deps"):
            shutil.copy2(os.path.join(built_dir, name), target / name)


def test_concurrent_first_builds_into_a_fresh_cache(tmp_path):
    """Two processes that both find a cache without a finished build build (or wait for the other's build) and both
    get a working op. CUDA is left out so that only the cache mechanics are timed."""
    _skip_if_prebuilt()
    cache = tmp_path / "cache"
    _seed_with_this_sessions_objects(cache)
    env = _child_env(GHOSTKERNELS_CACHE=str(cache), GHOSTKERNELS_NO_CUDA="1", MAX_JOBS="2")
    code = """
        import torch, ghostkernels
        from ghostkernels.ops.reference import ghost_module_reference
        path = ghostkernels.load_library()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 6, 5, 7, generator=g)
        w1, b1 = torch.randn(4, 6, 1, 1, generator=g), torch.randn(4, generator=g)
        w2, b2 = torch.randn(8, 1, 3, 3, generator=g), torch.randn(8, generator=g)
        out = torch.ops.ghostkernels.ghost_module(x, w1, b1, w2, b2, 11, "relu")
        torch.testing.assert_close(out, ghost_module_reference(x, w1, b1, w2, b2, 11, "relu"))
        print(path)
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=590)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rc, out, err in results:
        assert rc == 0, err
        assert err.count(_BUILDING) <= 1, err
    paths = {out.strip().splitlines()[-1] for _, out, _ in results}
    assert len(paths) == 1, paths
    assert any(_BUILDING in err for _, _, err in results), "a first build must say so"
    build_dirs = [d for d in os.listdir(cache) if (cache / d).is_dir()]
    assert len(build_dirs) == 1, build_dirs
    assert not (cache / build_dirs[0] / "lock").exists(), "a stale build lock would make the next process wait"


@pytest.fixture
def unloaded(monkeypatch, tmp_path):
    """_build as in a fresh process: nothing loaded, no prebuilt library, an empty cache."""
    monkeypatch.setattr(_build, "_loaded_from", None)
    monkeypatch.setattr(_build, "_prebuilt", lambda: None)
    monkeypatch.setenv("GHOSTKERNELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GHOSTKERNELS_NO_CUDA", "1")


def test_missing_ninja_is_a_clear_error(unloaded, monkeypatch):
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"needs ninja, which was not found.*pip install ninja"):
        _build.load_library()


def test_missing_compiler_is_a_clear_error(unloaded, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(RuntimeError, match=r"needs a C\+\+ compiler, but `/nonexistent/c\+\+` was not found"):
        _build.load_library()


def test_missing_cuda_toolkit_is_a_clear_error(unloaded, monkeypatch):
    monkeypatch.delenv("GHOSTKERNELS_NO_CUDA")
    monkeypatch.setattr(_build, "cuda_wanted", lambda: True)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    with pytest.raises(RuntimeError, match=r"no CUDA toolkit \(nvcc\) was found.*GHOSTKERNELS_NO_CUDA=1"):
        _build.load_library()


def test_a_finished_build_is_loaded_directly_even_past_a_stale_torch_lock(unloaded, monkeypatch, tmp_path):
    """A build directory marked finished is loaded without cpp_extension.load, whose lock file a killed build may
    have left behind (it would make every later process wait forever)."""
    fp = _build._fingerprint(_build.sources(False), False)
    build_dir = tmp_path / "cache" / f"cpu-{fp}"
    build_dir.mkdir(parents=True)
    (build_dir / "ghostkernels_C.so").write_bytes(b"")
    (build_dir / "built.ok").write_text(fp)
    (build_dir / "lock").write_text("")  # what a build killed inside cpp_extension.load leaves
    loaded = []
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: pytest.fail("a finished build must not be rebuilt"))
    assert _build.load_library() == str(build_dir / "ghostkernels_C.so")
    assert loaded == [str(build_dir / "ghostkernels_C.so")]


def test_an_unfinished_build_takes_the_lock_and_clears_a_stale_torch_lock(unloaded, monkeypatch, tmp_path):
    fp = _build._fingerprint(_build.sources(False), False)
    build_dir = tmp_path / "cache" / f"cpu-{fp}"
    build_dir.mkdir(parents=True)
    (build_dir / "lock").write_text("")
    calls = []

    def fake_load(**kwargs):
        assert not (build_dir / "lock").exists(), "the stale torch lock must be gone before cpp_extension.load"
        calls.append(kwargs["build_directory"])
        (build_dir / "ghostkernels_C.so").write_bytes(b"")

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    assert _build.load_library() == str(build_dir / "ghostkernels_C.so")
    assert calls == [str(build_dir)] and (build_dir / "built.ok").read_text() == fp


def test_every_build_compiles_every_top_level_source():
    """csrc/*.cpp (the schema, the shared checks, the device-generic ops and autograd kernels): the JIT build and
    setup.py's ahead-of-time build glob them, CMakeLists.txt names each (all but the Python module stub, which it
    leaves out). setup.py once listed them by hand and missed csrc/gated_backward.cpp."""
    import glob

    root = _build.csrc_dir()
    top = {os.path.basename(p) for p in glob.glob(os.path.join(root, "*.cpp"))}
    assert {"ghost_module.cpp", "bn_train_autograd.cpp"} <= top
    assert top <= {os.path.basename(p) for p in _build.sources(False)}
    checkout = os.path.dirname(root)
    with open(os.path.join(checkout, "setup.py")) as f:
        assert 'glob.glob("csrc/*.cpp")' in f.read()
    with open(os.path.join(checkout, "CMakeLists.txt")) as f:
        cmake = f.read()
    missing = [n for n in sorted(top - {"python_module.cpp"}) if f'"${{GK_CSRC}}/{n}"' not in cmake]
    assert not missing, f"CMakeLists.txt does not build {missing}"


def test_the_slowest_sources_are_compiled_first():
    """ninja starts jobs in the order of the sources; a renamed slow source would quietly lose its place."""
    srcs = _build.sources(False)
    slow = [os.path.join(_build.csrc_dir(), *name.split("/")) for name in _build._SLOW_SOURCES]
    assert all(os.path.isfile(p) for p in slow), [p for p in slow if not os.path.isfile(p)]
    assert srcs[:len(slow)] == slow
    assert len(set(srcs)) == len(srcs)
