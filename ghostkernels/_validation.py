"""Argument checks of the op contract on the Python side.

The C++ kernels check the same things (csrc/ghost_module_check.cpp); these run in the fake kernels and in the
backends written in Python (eager, Triton), so that every backend and torch.compile reject bad input with the
same clear message before any kernel runs.
"""

from __future__ import annotations

import torch

from .reference import ACTS, output_memory_format  # noqa: F401  (output_memory_format is re-exported)


def check_ghost_inputs(op: str, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act: str):
    """Validate a ghost_module call; return (init, multiplier, k)."""
    if act not in ACTS:
        raise ValueError(f"{op}: unknown act {act!r}; expected one of {', '.join(ACTS)}")
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D [N, C, H, W], got {x.dim()}-D with shape {tuple(x.shape)}")
    if w_primary.dim() != 4 or w_primary.shape[2] != 1 or w_primary.shape[3] != 1:
        raise ValueError(f"{op}: w_primary must be [init, C, 1, 1], got shape {tuple(w_primary.shape)}")
    init = w_primary.shape[0]
    if init == 0:
        raise ValueError(f"{op}: w_primary has zero output channels")
    if w_primary.shape[1] != x.shape[1]:
        raise ValueError(
            f"{op}: channel mismatch: x has {x.shape[1]} channels but w_primary expects {w_primary.shape[1]}")
    if b_primary.dim() != 1 or b_primary.shape[0] != init:
        raise ValueError(f"{op}: b_primary must be [{init}], got shape {tuple(b_primary.shape)}")
    if w_cheap.dim() != 4 or w_cheap.shape[1] != 1:
        raise ValueError(
            f"{op}: w_cheap must be a depthwise weight [init*(ratio-1), 1, k, k], got shape {tuple(w_cheap.shape)}")
    if w_cheap.shape[0] < init or w_cheap.shape[0] % init != 0:
        raise ValueError(f"{op}: w_cheap has {w_cheap.shape[0]} channels, which is not a positive multiple of "
                         f"init={init} (init*(ratio-1) with ratio >= 2)")
    k = w_cheap.shape[2]
    if w_cheap.shape[3] != k:
        raise ValueError(f"{op}: w_cheap must be square k x k, got shape {tuple(w_cheap.shape)}")
    if k % 2 != 1:
        raise ValueError(f"{op}: the depthwise kernel size must be odd (padding k//2 keeps the size), got k={k}")
    if b_cheap.dim() != 1 or b_cheap.shape[0] != w_cheap.shape[0]:
        raise ValueError(f"{op}: b_cheap must be [{w_cheap.shape[0]}], got shape {tuple(b_cheap.shape)}")
    mult = w_cheap.shape[0] // init
    if not 1 <= out_channels <= init * (mult + 1):
        raise ValueError(f"{op}: out_channels={out_channels} is outside [1, init*ratio={init * (mult + 1)}]")
    for name, t in (("w_primary", w_primary), ("b_primary", b_primary), ("w_cheap", w_cheap), ("b_cheap", b_cheap)):
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: dtype mismatch: x is {x.dtype} but {name} is {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: device mismatch: x is on {x.device} but {name} is on {t.device}")
    return init, mult, k
