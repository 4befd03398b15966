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


def check_dfc_gate_inputs(op: str, x, w_reduce, b_reduce, w_h, b_h, w_v, b_v) -> tuple[int, int, int]:
    """Validate a dfc_gate call (the checks of csrc/ghost_module_check.cpp's check_dfc_gate_inputs); return the
    map's (channels, H // 2, W // 2)."""
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if h < 2 or w < 2:
        raise ValueError(f"{op}: x must be at least 2x2 (the gate pools 2x2 windows), got {h}x{w}")
    if w_reduce.dim() != 4 or w_reduce.shape[1] != c or w_reduce.shape[2] != 1 or w_reduce.shape[3] != 1:
        raise ValueError(f"{op}: w_reduce must be [O, {c}, 1, 1], got shape {tuple(w_reduce.shape)}")
    o = w_reduce.shape[0]
    if o == 0:
        raise ValueError(f"{op}: w_reduce has zero output channels")
    if w_h.dim() != 4 or w_h.shape[0] != o or w_h.shape[1] != 1 or w_h.shape[2] != 1 or w_h.shape[3] % 2 != 1:
        raise ValueError(f"{op}: w_h must be a depthwise (1, k) weight [{o}, 1, 1, k] with k odd, got shape "
                         f"{tuple(w_h.shape)}")
    if w_v.dim() != 4 or w_v.shape[0] != o or w_v.shape[1] != 1 or w_v.shape[3] != 1 or w_v.shape[2] % 2 != 1:
        raise ValueError(f"{op}: w_v must be a depthwise (k, 1) weight [{o}, 1, k, 1] with k odd, got shape "
                         f"{tuple(w_v.shape)}")
    for name, b in (("b_reduce", b_reduce), ("b_h", b_h), ("b_v", b_v)):
        if b.dim() != 1 or b.shape[0] != o:
            raise ValueError(f"{op}: {name} must be [{o}], got shape {tuple(b.shape)}")
    for name, t in (("w_reduce", w_reduce), ("b_reduce", b_reduce), ("w_h", w_h), ("b_h", b_h), ("w_v", w_v),
                    ("b_v", b_v)):
        _check_like(op, x, name, t)
    return o, h // 2, w // 2


def check_gated_inputs(op: str, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act: str, gate):
    """Validate a ghost_module_gated call: ghost_module's checks, and a gate [N, out_channels, Hg, Wg] of x's dtype
    and device (Hg, Wg >= 1: nearest upsampling maps any size onto H x W); return check_ghost_inputs' result."""
    dims = check_ghost_inputs(op, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    if gate.dim() != 4 or gate.shape[0] != x.shape[0] or gate.shape[1] != out_channels or gate.shape[2] < 1 \
            or gate.shape[3] < 1:
        raise ValueError(f"{op}: gate must be [{x.shape[0]}, {out_channels}, Hg, Wg] with Hg, Wg >= 1, got shape "
                         f"{tuple(gate.shape)}")
    _check_like(op, x, "gate", gate)
    return dims


def _check_like(op: str, x, name: str, t) -> None:
    if t.dtype != x.dtype:
        raise TypeError(f"{op}: dtype mismatch: x is {x.dtype} but {name} is {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{op}: device mismatch: x is on {x.device} but {name} is on {t.device}")


def check_depthwise_inputs(op: str, what: str, x, w, b, stride: int) -> tuple[int, int]:
    """Validate a depthwise conv (padding k//2) over x; return its output (H, W)."""
    if x.dim() != 4:
        raise ValueError(f"{op}: the input of {what} must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    c = x.shape[1]
    if w.dim() != 4 or w.shape[0] != c or w.shape[1] != 1 or w.shape[2] != w.shape[3]:
        raise ValueError(f"{op}: {what} weight must be depthwise [{c}, 1, k, k] for its {c}-channel input, got "
                         f"shape {tuple(w.shape)}")
    k = w.shape[2]
    if k % 2 != 1:
        raise ValueError(f"{op}: {what} kernel size must be odd (padding k//2), got k={k}")
    if b.dim() != 1 or b.shape[0] != c:
        raise ValueError(f"{op}: {what} bias must be [{c}], got shape {tuple(b.shape)}")
    if stride not in (1, 2):
        raise ValueError(f"{op}: {what} stride must be 1 or 2, got {stride}")
    for name, t in ((f"{what} weight", w), (f"{what} bias", b)):
        _check_like(op, x, name, t)
    return tuple((s + 2 * (k // 2) - k) // stride + 1 for s in x.shape[2:])


def _check_conv1x1(op: str, x, what: str, w, b, in_channels: int) -> None:
    if w.dim() != 4 or w.shape[1] != in_channels or w.shape[2] != 1 or w.shape[3] != 1:
        raise ValueError(f"{op}: {what} weight must be [out, {in_channels}, 1, 1], got shape {tuple(w.shape)}")
    if b.dim() != 1 or b.shape[0] != w.shape[0]:
        raise ValueError(f"{op}: {what} bias must be [{w.shape[0]}], got shape {tuple(b.shape)}")
    _check_like(op, x, f"{what} weight", w)
    _check_like(op, x, f"{what} bias", b)


def _stand_in(x, shape):
    """A tensor of this shape with x's dtype and device for the shape checks (one element, expanded)."""
    return x.new_empty(()).expand(shape)


def _group(op: str, names: str, ts) -> bool:
    given = sum(t is not None for t in ts)
    if given not in (0, len(ts)):
        raise ValueError(f"{op}: give all of {names} or none of them ({given} of {len(ts)} given)")
    return given > 0


def check_bottleneck_inputs(op: str, x, ghost1, mid_channels, act, dw, stride, se, ghost2, out_channels,
                            shortcut, gate=None) -> tuple[int, int]:
    """Validate a ghost_bottleneck call (the checks of csrc/cpu/op_ghost_bottleneck.cpp), or with ``gate`` (six
    tensors) a ghost_bottleneck_gated call; return the output (H, W). ``dw``, ``se``, ``shortcut`` are tuples of
    tensors or Nones (None for an absent group)."""
    check_ghost_inputs(f"{op} (ghost1)", x, *ghost1, mid_channels, act)
    if gate is not None:
        o, _, _ = check_dfc_gate_inputs(f"{op} (ghost1's gate)", x, *gate)
        if o != mid_channels:
            raise ValueError(f"{op}: ghost1's gate makes {o} channels, not ghost1's {mid_channels}")
    if stride not in (1, 2):
        raise ValueError(f"{op}: stride must be 1 or 2, got {stride}")
    n, c, h, w = x.shape
    has_dw = _group(op, "dw_w, dw_b", dw)
    if has_dw != (stride == 2):
        raise ValueError(f"{op}: dw_w/dw_b (conv_dw) must be given exactly when stride is 2 (stride={stride}, "
                         f"{'given' if has_dw else 'not given'})")
    ho, wo = h, w
    if has_dw:
        ho, wo = check_depthwise_inputs(op, "conv_dw", _stand_in(x, (n, mid_channels, h, w)), *dw, stride)
    if _group(op, "se_reduce_w, se_reduce_b, se_expand_w, se_expand_b", se):
        rw, rb, ew, eb = se
        _check_conv1x1(op, x, "se_reduce", rw, rb, mid_channels)
        _check_conv1x1(op, x, "se_expand", ew, eb, rw.shape[0])
        if ew.shape[0] != mid_channels:
            raise ValueError(f"{op}: se_expand must give back the block's {mid_channels} channels, got weight shape "
                             f"{tuple(ew.shape)}")
    check_ghost_inputs(f"{op} (ghost2)", _stand_in(x, (n, mid_channels, ho, wo)), *ghost2, out_channels, "identity")
    if _group(op, "shortcut_dw_w, shortcut_dw_b, shortcut_pw_w, shortcut_pw_b", shortcut):
        sdw, sdb, spw, spb = shortcut
        if has_dw and sdw.dim() == 4 and sdw.shape[-1] != dw[0].shape[-1]:
            raise ValueError(f"{op}: the shortcut's depthwise kernel (k={sdw.shape[-1]}) must match conv_dw's "
                             f"(k={dw[0].shape[-1]}) so both halve the image alike")
        if check_depthwise_inputs(op, "the shortcut's depthwise conv", x, sdw, sdb, stride) != (ho, wo):
            raise ValueError(f"{op}: the shortcut's output size differs from the main branch's")
        _check_conv1x1(op, x, "shortcut_pw", spw, spb, c)
        if spw.shape[0] != out_channels:
            raise ValueError(f"{op}: shortcut_pw must make out_channels={out_channels} channels, got weight shape "
                             f"{tuple(spw.shape)}")
    elif c != out_channels or stride != 1:
        raise ValueError(f"{op}: without shortcut weights the shortcut is the identity, which needs in_channels == "
                         f"out_channels and stride 1 (got {c} -> {out_channels}, stride {stride})")
    return ho, wo


# ---------------------------------------------------------------------------------------------------------------
# The train-mode BatchNorm passes (ghost_bn_*; the C++ checks are in csrc/ghost_module_check.cpp)
# ---------------------------------------------------------------------------------------------------------------


def bn_stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else (the passes' statistics, vectors and weights)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_bn_tensor(op: str, like, t, shape, name: str) -> None:
    want = bn_stats_dtype(like.dtype)
    if t.dtype != want:
        raise TypeError(f"{op}: {name} must be {want} (the statistics' dtype for {like.dtype} inputs), got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{op}: device mismatch: {name} is on {t.device} but the input is on {like.device}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {list(shape)}, got {list(t.shape)}")


def _check_floating_4d(op: str, t, name: str, dims: str) -> None:
    if t.dim() != 4:
        raise ValueError(f"{op}: {name} must be 4-D {dims}, got {t.dim()}-D with shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def check_bn_conv1x1_inputs(op: str, x, w_primary) -> int:
    """x [N, C, H, W] and w_primary [init, C, 1, 1] (stats dtype); returns init."""
    _check_floating_4d(op, x, "x", "[N, C, H, W]")
    if w_primary.dim() != 4 or w_primary.shape[0] == 0:
        raise ValueError(f"{op}: w_primary must be [init, C, 1, 1] with init > 0, got shape {tuple(w_primary.shape)}")
    check_bn_tensor(op, x, w_primary, (w_primary.shape[0], x.shape[1], 1, 1), "w_primary")
    return w_primary.shape[0]


def check_bn_z1_inputs(op: str, z1, w_cheap, out_channels: int, act: str, primary=(), cheap=()) -> tuple[int, int]:
    """z1 [N, init, H, W], w_cheap [init*(ratio-1), 1, k, k] (odd k, stats dtype), out_channels (-1: the whole
    width), act, and named per-channel vectors ((name, tensor) pairs) of each stage; returns (init, ratio - 1)."""
    if act not in ACTS:
        raise ValueError(f"ghostkernels: unknown act {act!r}; expected one of {', '.join(ACTS)}")
    _check_floating_4d(op, z1, "z1", "[N, init, H, W]")
    init = z1.shape[1]
    if init == 0:
        raise ValueError(f"{op}: z1 has zero channels")
    if w_cheap.dim() != 4 or w_cheap.shape[1] != 1 or w_cheap.shape[2] != w_cheap.shape[3]:
        raise ValueError(f"{op}: w_cheap must be a depthwise weight [init*(ratio-1), 1, k, k], got shape "
                         f"{tuple(w_cheap.shape)}")
    if w_cheap.shape[0] < init or w_cheap.shape[0] % init != 0:
        raise ValueError(f"{op}: w_cheap has {w_cheap.shape[0]} channels, which is not a positive multiple of "
                         f"init={init} (z1's channels)")
    if w_cheap.shape[2] % 2 != 1:
        raise ValueError(f"{op}: the depthwise kernel size must be odd (padding k//2 keeps the size), got "
                         f"k={w_cheap.shape[2]}")
    check_bn_tensor(op, z1, w_cheap, w_cheap.shape, "w_cheap")
    mult = w_cheap.shape[0] // init
    if out_channels != -1 and not 1 <= out_channels <= init * (mult + 1):
        raise ValueError(f"{op}: out_channels={out_channels} is outside [1, init*ratio={init * (mult + 1)}]")
    for name, t in primary:
        check_bn_tensor(op, z1, t, (init,), name)
    for name, t in cheap:
        check_bn_tensor(op, z1, t, (init * mult,), name)
    return init, mult


# The per-channel vectors of each BN stage, in the passes' schema order (csrc/ghost_module.cpp), and the two more
# the backward pass takes.
BN_PRIMARY_NAMES = ("mean_primary", "invstd_primary", "weight_primary", "bias_primary")
BN_CHEAP_NAMES = ("mean_cheap", "invstd_cheap", "weight_cheap", "bias_cheap")
BN_PRIMARY_BACKWARD_NAMES = BN_PRIMARY_NAMES + ("mean_dy_primary", "mean_dy_xhat_primary")
BN_CHEAP_BACKWARD_NAMES = BN_CHEAP_NAMES + ("mean_dy_cheap", "mean_dy_xhat_cheap")


def check_bn_grad_out(op: str, grad_out, z1, out_channels: int) -> None:
    n, _, h, w = z1.shape
    if tuple(grad_out.shape) != (n, out_channels, h, w):
        raise ValueError(f"{op}: grad_out must be [{n}, {out_channels}, {h}, {w}], got {list(grad_out.shape)}")
    if grad_out.dtype != z1.dtype:
        raise TypeError(f"{op}: dtype mismatch: z1 is {z1.dtype} but grad_out is {grad_out.dtype}")
    if grad_out.device != z1.device:
        raise ValueError(f"{op}: device mismatch: z1 is on {z1.device} but grad_out is on {grad_out.device}")


def check_bn_backward_inputs(op: str, grad_out, x, z1, w_primary, primary, w_cheap, cheap, out_channels: int,
                             act: str) -> int:
    """Every check of ghost_bn_backward (as csrc/ghost_module_check.h's check_bn_backward_inputs): x and z1 of one
    dtype, both stages' six vectors (``primary``, ``cheap``: tensors in BN_*_BACKWARD_NAMES order), x and
    w_primary, z1 the shape of conv1x1(x, w_primary), grad_out. Returns init."""
    if z1.dtype != x.dtype:
        raise TypeError(f"{op}: dtype mismatch: x is {x.dtype} but z1 is {z1.dtype}")
    check_bn_z1_inputs(op, z1, w_cheap, out_channels, act, primary=zip(BN_PRIMARY_BACKWARD_NAMES, primary),
                       cheap=zip(BN_CHEAP_BACKWARD_NAMES, cheap))
    init = check_bn_conv1x1_inputs(op, x, w_primary)
    n, _, h, w = x.shape
    if tuple(z1.shape) != (n, init, h, w):
        raise ValueError(f"{op}: z1 has shape {list(z1.shape)}, but conv1x1(x, w_primary) has shape "
                         f"[{n}, {init}, {h}, {w}]")
    check_bn_grad_out(op, grad_out, z1, out_channels)
    return init


def check_bn_train_inputs(op: str, x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, w_cheap, b_cheap,
                          bn_weight_cheap, bn_bias_cheap, out_channels, act, group) -> tuple[int, int]:
    """ghost_module_bn_train's arguments: the module's own layers' tensors (x's dtype and device, any floating
    dtype for the parameters); returns (init, ratio - 1)."""
    if act not in ACTS:
        raise ValueError(f"{op}: unknown act {act!r}; expected one of {', '.join(ACTS)}")
    _check_floating_4d(op, x, "x", "[N, C, H, W]")
    if w_primary.dim() != 4 or w_primary.shape[1:] != (x.shape[1], 1, 1) or w_primary.shape[0] == 0:
        raise ValueError(f"{op}: w_primary must be [init, {x.shape[1]}, 1, 1] for x with {x.shape[1]} channels, got "
                         f"shape {tuple(w_primary.shape)}")
    init = w_primary.shape[0]
    if (w_cheap.dim() != 4 or w_cheap.shape[1] != 1 or w_cheap.shape[2] != w_cheap.shape[3]
            or w_cheap.shape[0] < init or w_cheap.shape[0] % init != 0 or w_cheap.shape[2] % 2 != 1):
        raise ValueError(f"{op}: w_cheap must be a depthwise weight [init*(ratio-1), 1, k, k] with init={init} and "
                         f"odd k, got shape {tuple(w_cheap.shape)}")
    mult = w_cheap.shape[0] // init
    if not 1 <= out_channels <= init * (mult + 1):
        raise ValueError(f"{op}: out_channels={out_channels} is outside [1, init*ratio={init * (mult + 1)}]")
    vectors = (("b_primary", b_primary, init), ("bn_weight_primary", bn_weight_primary, init),
               ("bn_bias_primary", bn_bias_primary, init), ("b_cheap", b_cheap, init * mult),
               ("bn_weight_cheap", bn_weight_cheap, init * mult), ("bn_bias_cheap", bn_bias_cheap, init * mult))
    for name, t in (("w_primary", w_primary), ("w_cheap", w_cheap)) + tuple((n, t) for n, t, _ in vectors):
        if t is None:
            continue
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: device mismatch: x is on {x.device} but {name} is on {t.device}")
    for name, t, n in vectors:
        if t is not None and tuple(t.shape) != (n,):
            raise ValueError(f"{op}: {name} must be [{n}], got shape {tuple(t.shape)}")
    if not isinstance(group, str):
        raise TypeError(f"{op}: group must be a process group's name (str), got {type(group).__name__}")
    return init, mult
