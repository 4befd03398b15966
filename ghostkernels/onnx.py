"""``ghostkernels.onnx``: the ONNX export of fused models, kept at this path for the public API; the code is in
ghostkernels.export.onnx."""

from .export.onnx import custom_translation_table, export, ghost_bottleneck_onnx, ghost_module_onnx

__all__ = ["custom_translation_table", "export", "ghost_bottleneck_onnx", "ghost_module_onnx"]
