"""The package's structure: imports go one way (models, ops/triton -> nn -> patch/export -> the package's __init__ ->
bench), there is no import cycle between its modules, and ``import ghostkernels`` makes every op resolvable
(or, with GHOSTKERNELS_DEFER_LOAD=1, none until first use).

Imports are read from the source (every ``import`` statement, at module level or inside a function: a lazy import is
still a dependency), so the checks see what a reader sees, not only what one run happens to execute."""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "ghostkernels"

# Layer of each part; a module may import modules of its own layer or lower ones only.
LAYERS = [
    ("ghostkernels.models", 0),
    ("ghostkernels.ops", 1),
    ("ghostkernels.triton", 1),
    ("ghostkernels.nn", 2),
    ("ghostkernels.patch", 3),
    ("ghostkernels.export", 3),
    ("ghostkernels.onnx", 4),
    ("ghostkernels.bench", 6),  # the harness uses the public API
    ("ghostkernels", 5),  # the package's __init__: the public API
]


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The package modules that module ``name`` imports (``from a import b`` counts as a.b when that is a module)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in known else mod for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(name: str) -> int:
    for prefix, layer in LAYERS:
        if name == prefix or name.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{name} belongs to no layer of tests/test_structure.py")


def test_every_module_belongs_to_a_layer():
    for name in _modules():
        _layer(name)


def test_imports_go_one_way():
    wrong = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
             for a, deps in _graph().items() for b in deps if _layer(b) > _layer(a)]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = _graph()
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_lazy_and_relative_imports():
    graph = _graph()
    assert "ghostkernels.triton" in graph["ghostkernels.ops"]  # a function-level relative import
    assert "ghostkernels.ops.registration" in graph["ghostkernels.ops.build"]
    assert "ghostkernels.nn.recognize" in graph["ghostkernels.nn.ghost_module"]


def _schema_ops() -> list[str]:
    text = (ROOT / "csrc" / "ghost_module.cpp").read_text()
    return re.findall(r'm\.def\(\s*"(\w+)\(', text)


def _child(code: str, **env) -> subprocess.CompletedProcess:
    import os

    child_env = {k: v for k, v in os.environ.items() if k != "GHOSTKERNELS_DEFER_LOAD"}
    child_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), child_env.get("PYTHONPATH", "")])
    child_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=child_env, capture_output=True,
                          text=True, timeout=600)


def test_import_makes_every_op_resolvable():
    ops = _schema_ops()
    assert {"ghost_module", "ghost_module_backward", "ghost_bottleneck", "conv2d_act", "linear_act",
            "chain"} <= set(ops)
    proc = _child(f"""
        import importlib.util, torch
        import ghostkernels
        names = {ops!r}
        if importlib.util.find_spec("triton") is not None:
            names += ["ghost_module_triton", "ghost_module_triton_backward"]
        for name in names:
            getattr(torch.ops.ghostkernels, name).default  # raises if the op does not exist
        print(len(names))
    """)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) >= len(ops)


def test_defer_load_leaves_the_ops_unregistered_until_first_use():
    proc = _child("""
        import torch
        import ghostkernels
        from ghostkernels.ops import build
        assert not build.is_loaded()
        try:
            torch.ops.ghostkernels.ghost_module.default
        except (AttributeError, RuntimeError):
            pass
        else:
            raise SystemExit("the op resolved before the library was loaded")
        ghostkernels.load_library()
        torch.ops.ghostkernels.ghost_module.default
        print("ok")
    """, GHOSTKERNELS_DEFER_LOAD="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.parametrize("name", ["FusedConvBnAct", "FusedGhostBottleneck", "FusedGhostConv", "FusedGhostModule",
                                  "GhostFuseWarning", "GhostModule", "NotFusableError", "freeze", "fuse",
                                  "ghost_module", "load_library", "models", "ops", "unfreeze"])
def test_public_names_stay_at_the_top_level(name):
    import ghostkernels

    assert name in ghostkernels.__all__ and hasattr(ghostkernels, name)
