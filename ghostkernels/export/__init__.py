"""Leaving Python: torch.export / AOTInductor packages (``aoti``, re-exported here) and ONNX (``onnx``, imported on
its own because it needs the onnxscript package: ``import ghostkernels.export.onnx``, or ``ghostkernels.onnx``)."""

from .aoti import compile_aoti_package, export_model, load_aoti_package

__all__ = ["compile_aoti_package", "export_model", "load_aoti_package"]
