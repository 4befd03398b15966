"""torch.export + AOTInductor of fuse(ghostnet_100()) in eval mode: the fused ops survive export as one node per
bottleneck, and the compiled package matches eager both from Python and from the C++ runner
(examples/aoti_runner, linked against libtorch and the CMake-built op library).

One package is compiled per session (about a minute on two cores, most of it the C++ compiler), at a small input
resolution: 64 x 64 still runs every layer (GhostNet's last feature map is 2 x 2 there).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import ghostkernels
from ghostkernels import export as gk_export
from ghostkernels.nn import FusedGhostBottleneck
from ghostkernels.nn import FusedGhostBase
from test_cmake import aoti_runner

# float32 end to end; inductor fuses and reorders the non-Ghost layers (SE, shortcut, head), so sums differ from
# eager in their last bits. Measured: 1e-7 of the output's magnitude; atol is relative to that magnitude.
RTOL, ATOL_OF_MAX = 1e-4, 1e-4


@dataclasses.dataclass(frozen=True)
class Compiled:
    model: torch.nn.Module
    program: torch.export.ExportedProgram
    package: Path
    x: torch.Tensor
    expected: torch.Tensor


def assert_matches_eager(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert not torch.isnan(actual).any(), f"{what}: NaN in the output"
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL_OF_MAX * float(expected.abs().max()),
                               msg=lambda m: f"{what}: {m}")


def _cxx_compiler_missing() -> bool:
    """AOTInductor compiles its generated C++ with $CXX, else the first of these it finds."""
    cxx = os.environ.get("CXX")
    return shutil.which(cxx) is None if cxx else not any(shutil.which(c) for c in ("g++", "clang++", "c++"))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Compiled:
    if _cxx_compiler_missing():
        pytest.skip("AOTInductor needs a C++ compiler (g++ or clang++, or $CXX); none is installed")
    gen = torch.Generator().manual_seed(6)
    with torch.random.fork_rng():
        torch.manual_seed(6)  # the model's initialization
        model = ghostkernels.fuse(ghostkernels.models.ghostnet_100()).eval()
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        expected = model(x)
        program = gk_export.export_model(model, (x,))
    package = Path(gk_export.compile_aoti_package(program, (x,), tmp_path_factory.mktemp("aoti") / "ghostnet.pt2"))
    return Compiled(model, program, package, x, expected)


def test_export_keeps_one_fused_op_per_bottleneck(compiled):
    fused = sum(isinstance(m, FusedGhostBase) for m in compiled.model.modules())
    assert fused == 32, f"fuse(ghostnet_100()) should replace all 32 Ghost modules, replaced {fused}"
    blocks = sum(isinstance(m, FusedGhostBottleneck) for m in compiled.model.modules())
    assert blocks == 16, f"fuse(ghostnet_100()) should replace all 16 bottlenecks, replaced {blocks}"
    targets = [n.target for n in compiled.program.graph.nodes if n.op == "call_function"]
    # Exported under no_grad: each bottleneck is one ghost_bottleneck node (its two Ghost modules inside it).
    assert targets.count(torch.ops.ghostkernels.ghost_bottleneck.default) == blocks
    assert targets.count(torch.ops.ghostkernels.ghost_module.default) == fused - 2 * blocks
    assert torch.ops.ghostkernels.ghost_module_backward.default not in targets  # inference: no backward op


def test_aoti_package_matches_eager_in_python(compiled):
    runner = gk_export.load_aoti_package(compiled.package)
    with torch.no_grad():
        out = runner(compiled.x)
    assert_matches_eager(out, compiled.expected, "AOTInductor package in Python")


def test_aoti_package_matches_eager_from_cpp(compiled, tmp_path_factory, tmp_path):
    runner = aoti_runner(tmp_path_factory)
    inputs, outputs = tmp_path / "inputs.pt", tmp_path / "outputs.pt"
    torch.save([compiled.x], inputs)
    proc = subprocess.run([str(runner), str(compiled.package), str(inputs), str(outputs)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:]
    out = torch.load(outputs)
    assert isinstance(out, tuple) and len(out) == 1, f"expected one output, got {type(out)} of {len(out)}"
    assert_matches_eager(out[0], compiled.expected, "AOTInductor package in C++ (examples/aoti_runner)")
