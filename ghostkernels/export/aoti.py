"""torch.export and AOTInductor packaging of models with fused Ghost modules.

The fused op stays one node (``torch.ops.ghostkernels.ghost_module``) in the exported graph: its fake kernel gives
torch.export the output's shape, dtype and memory format, and AOTInductor calls the op's C++/CUDA kernel at run time
through its proxy executor, by name, from the dispatcher. So the op library must be loaded

* before exporting (the op must exist to be traced), and
* in every process that runs the package: in Python, ``load_aoti_package`` below loads it first (without it,
  ``torch._inductor.aoti_load_package`` fails with "Could not find schema for ghostkernels::ghost_module"); in C++,
  link ``ghostkernels::ghostkernels`` from the CMake package (examples/aoti_runner).

The package is specific to the device it was compiled for (CPU or CUDA) and to the torch version. BatchNorm folding
of fused modules is traced into the graph (it runs on the weights, not on the input), so the exported model stays
in sync with the module's parameters at export time.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .. import ops


def export_model(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None, *,
                 dynamic_shapes=None, strict: bool = False) -> torch.export.ExportedProgram:
    """``torch.export.export`` with the op library loaded first. Put the model in eval mode for inference: fused
    Ghost modules in training mode run their unfused layers (BatchNorm needs batch statistics there)."""
    ops.load_library()
    return torch.export.export(model, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes, strict=strict)


def compile_aoti_package(model: torch.nn.Module | torch.export.ExportedProgram, args: tuple[Any, ...],
                         package_path: str | os.PathLike, *, kwargs: dict[str, Any] | None = None,
                         dynamic_shapes=None, inductor_configs: dict[str, Any] | None = None) -> str:
    """Export ``model`` (unless it already is an ExportedProgram) and compile it with AOTInductor into a ``.pt2``
    package at ``package_path``; returns the path. Compiling runs a C++ compiler on the generated code (about a
    minute for GhostNet on two cores)."""
    ops.load_library()
    program = model if isinstance(model, torch.export.ExportedProgram) else export_model(
        model, args, kwargs, dynamic_shapes=dynamic_shapes)
    path = os.fspath(package_path)
    if not path.endswith(".pt2"):
        raise ValueError(f"ghostkernels: an AOTInductor package path must end in .pt2, got {path!r}")
    return torch._inductor.aoti_compile_and_package(program, package_path=path, inductor_configs=inductor_configs)


def load_aoti_package(package_path: str | os.PathLike, **kwargs):
    """Load the op library, then the package (``torch._inductor.aoti_load_package``); returns a callable module."""
    ops.load_library()
    return torch._inductor.aoti_load_package(os.fspath(package_path), **kwargs)


__all__ = ["compile_aoti_package", "export_model", "load_aoti_package"]
