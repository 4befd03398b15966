"""ONNX Runtime as a CPU peer for the end-to-end benchmark (optional: onnx, onnxscript, onnxruntime).

The UNFUSED eval-mode model is exported (ONNX Runtime fuses BN into the convs itself, and the fused op is not an
ONNX operator), with a dynamic batch dimension so that one export serves every batch size. The session runs with
the same number of intra-op threads as PyTorch (and one inter-op thread), so both use the same cores.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import tempfile
import warnings

import torch
from torch import nn


def unavailable_reason() -> str | None:
    """Why the ONNX Runtime peer cannot run here, or None."""
    missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"{', '.join(missing)} not installed (pip install 'ghostkernels[onnx]' or "
                "pip install onnx onnxscript onnxruntime)")
    return None


def export(model: nn.Module, example: torch.Tensor, path: str) -> str:
    """torch.onnx.export of the float32 eval model to `path`, batch dimension dynamic; the exporter's progress
    chatter and warnings (e.g. "torchvision is not installed") are silenced, its errors are not."""
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), path, input_names=["x"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    finally:
        onnx_log.setLevel(level)
    return path


class OnnxRuntimeModel:
    """An exported model in an ONNX Runtime CPU session; call it with a CPU float32 torch tensor."""

    def __init__(self, model: nn.Module, example: torch.Tensor, threads: int):
        import onnxruntime as ort

        self._dir = tempfile.TemporaryDirectory(prefix="ghostkernels-bench-")
        path = export(model, example, os.path.join(self._dir.name, "model.onnx"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.version = ort.__version__

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().numpy()})[0]
        return torch.from_numpy(out)

    def close(self) -> None:
        self.session = None
        self._dir.cleanup()
