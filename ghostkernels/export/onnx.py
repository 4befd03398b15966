"""ONNX export of models with fused Ghost modules (and fused GhostNet bottlenecks, see ghost_bottleneck_onnx).

ONNX has no Ghost-module operator, so ``torch.ops.ghostkernels.ghost_module`` is lowered to standard ONNX operators
(opset 18) while torch.onnx's dynamo exporter translates the exported graph::

    x1  = act(Conv(x, w_primary, b_primary))                                     1x1 convolution
    x2  = act(Conv(x1, w_cheap, b_cheap, group=init, pads=k//2, kernel k x k))   depthwise convolution
    out = Slice(Concat(x1, x2, axis=1), axis 1, [0, out_channels))               Slice only when it cuts something

    act: identity -> nothing, relu -> Relu, relu6 -> Clip(0, 6), silu -> x * Sigmoid(x), hardswish -> HardSwish

GhostNetV2's gate: ``dfc_gate`` is AveragePool(2x2, stride 2) -> Conv 1x1 -> Conv (1, kh) and Conv (kv, 1) with
group = channels and 'same' zero pads -> Sigmoid; ``ghost_module_gated`` multiplies the Ghost module above by
Resize(gate, sizes = (N, C, H, W), mode nearest, coordinate_transformation_mode asymmetric, nearest_mode floor),
which is F.interpolate(mode='nearest')'s index formula; ``ghost_bottleneck_gated`` is ghost_bottleneck with that
ghost1.

Every ONNX runtime runs the result; it is the unfused computation again (x1 is materialized), which is what a
runtime without the custom kernel can do. The depthwise convolution's zero padding reads x1 after the activation,
exactly as the op (and GhostNet) defines it; ``group = init`` reads the cheap weight's channel j from x1's channel
j // (ratio - 1), which is the op's channel mapping.

The group count, the kernel size and the concatenated channel count are attributes in ONNX, so the weights' shapes
must be static: they are for any exported model (weights are not inputs with dynamic shapes); the batch and image
sizes may be dynamic.

Use ``export(model, args, path)`` below, or pass ``custom_translation_table()`` to ``torch.onnx.export`` yourself.
Needs the ``onnx`` and ``onnxscript`` packages (``pip install ghostkernels[onnx]``; onnxruntime to run the result).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from .. import ops
from ..ops.reference import ACTS

try:
    from onnxscript import opset18 as op
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "ghostkernels.onnx needs the onnxscript package (and onnx): `pip install onnx onnxscript onnxruntime` "
        f"or `pip install ghostkernels[onnx]` ({e})") from e

_OP = "ghostkernels::ghost_module (ONNX lowering)"
_GATE_OP = "ghostkernels::dfc_gate (ONNX lowering)"


def _static_dim(value, dim: int, what: str) -> int:
    shape = getattr(value, "shape", None)
    d = None if shape is None or len(shape) <= dim else shape[dim]
    if not isinstance(d, int):
        raise ValueError(f"{_OP}: {what} must have a static shape to be lowered to ONNX (its channel count and "
                         f"kernel size become Conv attributes), got shape {shape}")
    return d


def _activation(v, act: str):
    if act == "identity":
        return v
    if act == "relu":
        return op.Relu(v)
    if act == "relu6":
        # Clip's bounds are inputs of v's own dtype (float16/bfloat16 models included).
        return op.Clip(v, op.CastLike(op.Constant(value_float=0.0), v), op.CastLike(op.Constant(value_float=6.0), v))
    if act == "silu":
        return op.Mul(v, op.Sigmoid(v))
    if act == "hardswish":
        return op.HardSwish(v)
    raise ValueError(f"{_OP}: unknown act {act!r}; expected one of {', '.join(ACTS)}")


def ghost_module_onnx(x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act: str):
    """ONNX translation of ``ghostkernels::ghost_module`` (called by the exporter with ONNX values)."""
    init = _static_dim(w_primary, 0, "w_primary")
    cheap = _static_dim(w_cheap, 0, "w_cheap")
    k = _static_dim(w_cheap, 2, "w_cheap")
    if act not in ACTS:
        raise ValueError(f"{_OP}: unknown act {act!r}; expected one of {', '.join(ACTS)}")
    if cheap % init != 0 or k % 2 != 1:
        raise ValueError(f"{_OP}: w_cheap {tuple(w_cheap.shape)} is not a depthwise [init*(ratio-1), 1, k, k] weight "
                         f"with odd k for init={init}")
    if not 1 <= out_channels <= init + cheap:
        raise ValueError(f"{_OP}: out_channels={out_channels} is outside [1, init*ratio={init + cheap}]")
    p = k // 2
    x1 = _activation(op.Conv(x, w_primary, b_primary, kernel_shape=[1, 1]), act)
    if out_channels <= init:
        # The cheap half is sliced away entirely: no depthwise convolution at all.
        return x1 if out_channels == init else _channel_prefix(x1, out_channels)
    x2 = _activation(op.Conv(x1, w_cheap, b_cheap, group=init, kernel_shape=[k, k], pads=[p, p, p, p]), act)
    y = op.Concat(x1, x2, axis=1)
    return y if out_channels == init + cheap else _channel_prefix(y, out_channels)


def dfc_gate_onnx(x, w_reduce, b_reduce, w_h, b_h, w_v, b_v):
    """ONNX translation of ``ghostkernels::dfc_gate``."""
    o = _static_dim(w_reduce, 0, "w_reduce")
    kh = _static_dim(w_h, 3, "w_h")
    kv = _static_dim(w_v, 2, "w_v")
    if kh % 2 != 1 or kv % 2 != 1:
        raise ValueError(f"{_GATE_OP}: the gate's kernels must be odd, got (1, {kh}) and ({kv}, 1)")
    z = op.Conv(op.AveragePool(x, kernel_shape=[2, 2], strides=[2, 2]), w_reduce, b_reduce, kernel_shape=[1, 1])
    z = op.Conv(z, w_h, b_h, group=o, kernel_shape=[1, kh], pads=[0, kh // 2, 0, kh // 2])
    z = op.Conv(z, w_v, b_v, group=o, kernel_shape=[kv, 1], pads=[kv // 2, 0, kv // 2, 0])
    return op.Sigmoid(z)


def _upsampled(gate, like):
    """gate nearest-upsampled to like's H x W, as F.interpolate(mode='nearest') indexes (floor(i * in / out))."""
    sizes = op.Concat(op.Slice(op.Shape(gate), op.Constant(value_ints=[0]), op.Constant(value_ints=[2])),
                      op.Slice(op.Shape(like), op.Constant(value_ints=[2]), op.Constant(value_ints=[4])), axis=0)
    return op.Resize(gate, None, None, sizes, mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor")


def ghost_module_gated_onnx(x, w_primary, b_primary, w_cheap, b_cheap, out_channels: int, act: str, gate):
    """ONNX translation of ``ghostkernels::ghost_module_gated``."""
    y = ghost_module_onnx(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    return op.Mul(y, _upsampled(gate, x))


def _depthwise(v, w, b, stride: int, what: str):
    """Conv(v, w, b) as the op's depthwise convolutions: group = channels, zero padding k//2."""
    c, k = _static_dim(w, 0, what), _static_dim(w, 2, what)
    p = k // 2
    return op.Conv(v, w, b, group=c, kernel_shape=[k, k], pads=[p, p, p, p], strides=[stride, stride])


def ghost_bottleneck_onnx(x, g1w1, g1b1, g1w2, g1b2, mid_channels: int, act: str, dw_w, dw_b, stride: int, se_rw,
                          se_rb, se_ew, se_eb, g2w1, g2b1, g2w2, g2b2, out_channels: int, sc_dw_w, sc_dw_b, sc_pw_w,
                          sc_pw_b):
    """ONNX translation of ``ghostkernels::ghost_bottleneck``: the two Ghost modules as above, conv_dw as a strided
    depthwise Conv, the squeeze-excite as ReduceMean -> Conv -> Relu -> Conv -> HardSigmoid(alpha=1/6, beta=1/2)
    (which is relu6(v + 3) / 6) -> Mul, the shortcut as a depthwise Conv and a 1x1 Conv, then Add."""
    y = ghost_module_onnx(x, g1w1, g1b1, g1w2, g1b2, mid_channels, act)
    return _bottleneck_rest(x, y, dw_w, dw_b, stride, se_rw, se_rb, se_ew, se_eb, g2w1, g2b1, g2w2, g2b2, out_channels,
                            sc_dw_w, sc_dw_b, sc_pw_w, sc_pw_b)


def ghost_bottleneck_gated_onnx(x, g1w1, g1b1, g1w2, g1b2, mid_channels: int, act: str, gw1, gb1, gwh, gbh, gwv,
                                gbv, dw_w, dw_b, stride: int, se_rw, se_rb, se_ew, se_eb, g2w1, g2b1, g2w2, g2b2,
                                out_channels: int, sc_dw_w, sc_dw_b, sc_pw_w, sc_pw_b):
    """ONNX translation of ``ghostkernels::ghost_bottleneck_gated``: ghost_bottleneck with ghost1 gated."""
    gate = dfc_gate_onnx(x, gw1, gb1, gwh, gbh, gwv, gbv)
    y = ghost_module_gated_onnx(x, g1w1, g1b1, g1w2, g1b2, mid_channels, act, gate)
    return _bottleneck_rest(x, y, dw_w, dw_b, stride, se_rw, se_rb, se_ew, se_eb, g2w1, g2b1, g2w2, g2b2, out_channels,
                            sc_dw_w, sc_dw_b, sc_pw_w, sc_pw_b)


def _bottleneck_rest(x, y, dw_w, dw_b, stride, se_rw, se_rb, se_ew, se_eb, g2w1, g2b1, g2w2, g2b2, out_channels,
                     sc_dw_w, sc_dw_b, sc_pw_w, sc_pw_b):
    """A bottleneck after ghost1's output y: conv_dw, the squeeze-excite, ghost2 and the shortcut."""
    if dw_w is not None:
        y = _depthwise(y, dw_w, dw_b, stride, "dw_w")
    if se_rw is not None:
        s = op.ReduceMean(y, op.Constant(value_ints=[2, 3]), keepdims=1)
        s = op.Relu(op.Conv(s, se_rw, se_rb, kernel_shape=[1, 1]))
        y = op.Mul(y, op.HardSigmoid(op.Conv(s, se_ew, se_eb, kernel_shape=[1, 1]), alpha=1.0 / 6.0, beta=0.5))
    out = ghost_module_onnx(y, g2w1, g2b1, g2w2, g2b2, out_channels, "identity")
    if sc_dw_w is None:
        return op.Add(out, x)
    shortcut = op.Conv(_depthwise(x, sc_dw_w, sc_dw_b, stride, "shortcut_dw_w"), sc_pw_w, sc_pw_b,
                       kernel_shape=[1, 1])
    return op.Add(out, shortcut)


def _channel_prefix(v, n: int):
    """v[:, :n] as an ONNX Slice."""
    return op.Slice(v, op.Constant(value_ints=[0]), op.Constant(value_ints=[n]), op.Constant(value_ints=[1]))


def custom_translation_table() -> dict[Callable, Callable]:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)`` that lowers the fused ops."""
    ops.load_library()  # torch.ops.ghostkernels.* exist only once the op library is loaded
    return {torch.ops.ghostkernels.ghost_module.default: ghost_module_onnx,
            torch.ops.ghostkernels.ghost_bottleneck.default: ghost_bottleneck_onnx,
            torch.ops.ghostkernels.dfc_gate.default: dfc_gate_onnx,
            torch.ops.ghostkernels.ghost_module_gated.default: ghost_module_gated_onnx,
            torch.ops.ghostkernels.ghost_bottleneck_gated.default: ghost_bottleneck_gated_onnx}


def export(model: torch.nn.Module | torch.export.ExportedProgram, args: tuple[Any, ...],
           path: str | os.PathLike | None = None, **kwargs) -> torch.onnx.ONNXProgram:
    """``torch.onnx.export(model, args, path, dynamo=True, **kwargs)`` with the fused op lowered to standard ONNX.

    Put the model in eval mode first (fused Ghost modules in training mode run their unfused layers, and their
    BatchNorms would be exported in training form). Extra entries of ``custom_translation_table`` in ``kwargs`` are
    kept; every other keyword goes to torch.onnx.export unchanged. Returns the ONNXProgram (also written to ``path``
    when one is given).
    """
    if kwargs.pop("dynamo", True) is not True:
        raise ValueError("ghostkernels.onnx.export: only the dynamo exporter (dynamo=True) can lower the fused op")
    table = custom_translation_table()
    table.update(kwargs.pop("custom_translation_table", None) or {})
    return torch.onnx.export(model, args, path, dynamo=True, custom_translation_table=table, **kwargs)


__all__ = ["custom_translation_table", "dfc_gate_onnx", "export", "ghost_bottleneck_gated_onnx", "ghost_bottleneck_onnx",
           "ghost_module_gated_onnx", "ghost_module_onnx"]
