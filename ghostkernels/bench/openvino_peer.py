"""OpenVINO as a CPU peer for the end-to-end benchmark (optional: ``pip install 'ghostkernels[openvino]'`` or
``pip install openvino``; the ONNX export also needs onnx and onnxscript).

OpenVINO is the CPU runtime a user is likely to pick for inference. It reads ONNX, so the UNFUSED eval-mode model is
exported exactly as for ONNX Runtime (onnx_peer.export: float32, BatchNorms left for the runtime to fold), reshaped
to the case's static input shape (OpenVINO plans its kernels per shape; a dynamic batch would cost it), and
compiled for the CPU with

    INFERENCE_PRECISION_HINT  f32 or bf16 (the case's dtype: OpenVINO then computes in bfloat16, on AMX / AVX-512
                              BF16 where the CPU has them, and reports the precision it took)
    INFERENCE_NUM_THREADS     the benchmark's threads;  NUM_STREAMS 1;  PERFORMANCE_HINT LATENCY

The model's input stays float32 in both precisions (what an OpenVINO user feeds); for a bfloat16 case the harness's
bfloat16 input is widened to float32 once per input tensor and cached (keyed by storage and version), so the timed
call is OpenVINO's inference alone. Logits come back as float32.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile

import torch
from torch import nn

from . import onnx_peer

PRECISIONS = {torch.float32: "f32", torch.bfloat16: "bf16"}


def unavailable_reason() -> str | None:
    """Why the OpenVINO peer cannot run here, or None."""
    missing = [m for m in ("openvino", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"{', '.join(missing)} not installed (pip install 'ghostkernels[openvino]' or "
                "pip install openvino onnx onnxscript)")
    return None


def version() -> str:
    import openvino

    return openvino.__version__


class OpenVinoModel:
    """``model`` (float32, eval) exported to ONNX and compiled by OpenVINO for ``example``'s shape at ``dtype``'s
    precision (float32 or bfloat16); call it with a CPU tensor of that shape."""

    def __init__(self, model: nn.Module, example: torch.Tensor, threads: int, dtype: torch.dtype):
        import openvino as ov

        if dtype not in PRECISIONS:
            raise ValueError(f"the OpenVINO peer runs float32 and bfloat16, not {dtype}")
        core = ov.Core()
        with tempfile.TemporaryDirectory(prefix="ghostkernels-bench-ov-") as d:
            path = onnx_peer.export(model.float().eval(), example.float(), os.path.join(d, "model.onnx"))
            ov_model = core.read_model(path)
        ov_model.reshape({ov_model.inputs[0].any_name: list(example.shape)})
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[dtype], "INFERENCE_NUM_THREADS": int(threads),
                  "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(ov_model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        # What OpenVINO took (it may fall back where the CPU lacks a precision): recorded with the results.
        taken = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type: "f32" or "bf16"
        self.precision = taken.get_type_name() if hasattr(taken, "get_type_name") else str(taken)
        self._widened: dict = {}

    def _input(self, x: torch.Tensor):
        if x.dtype == torch.float32:
            return x.detach().contiguous().numpy()
        key = (x.data_ptr(), x._version, tuple(x.shape))
        if key not in self._widened:  # once per input tensor: the timed call is the inference alone
            self._widened[key] = (x, x.detach().float().contiguous().numpy())
        return self._widened[key][1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.request.infer({0: self._input(x)})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())

    def close(self) -> None:
        self.request = None
        self.compiled = None
        self._widened.clear()
