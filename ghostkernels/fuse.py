"""``fuse(model)``: swap every Ghost module of a model, in place, for one that runs the fused op.

Ghost modules are recognized by structure, never by class name, in two layouts:

* ``primary_conv`` + ``cheap_operation`` (two Sequentials: Conv2d -> [BatchNorm2d] -> [activation]): this package's
  GhostModule, the official huawei-noah GhostModule (and GhostModuleV2 in mode 'original'), timm's GhostModule
  (act_layer ReLU or Identity, or ``use_act``), timm's GhostModuleV3 after ``reparameterize()`` (convs with bias, no
  BN, no slice). Replaced by FusedGhostModule.
* ``cv1`` + ``cv2`` (each conv -> [bn] -> act, cv2 depthwise on cv1's output): Ultralytics' GhostConv, before or
  after Ultralytics' own fuse(). Replaced by FusedGhostConv.

The structure says which layers there are; it cannot say how the parent's forward combines them (GSConv has
GhostConv's layers but shuffles the channels; a gated module multiplies the output). So every candidate is also
checked on a small probe input (2 x C x 5 x 7, drawn from a private generator, with the module temporarily in eval
mode and autograd off): its output must equal ``cat(x1, x2)[:, :c]`` computed from its layers as the op would, and
``c`` (the output's channel count) is what the fused module slices to. A module that fails any check is left alone.

The replacements share the original layers (the same Parameter and buffer objects), so the model's state_dict keys
and values do not change and an optimizer built before fuse() keeps working.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings

import torch
from torch import nn

from . import ops
from ._bn_fold import fold_conv_bn
from .bottleneck import FusedGhostBottleneck, bottleneck_layout
from .modules import FusedGhostConv, FusedGhostModule, _FusedGhostBase, activation_name
from .reference import ACTS, ghost_module_reference
from .conv_bn_act import FusedConvBnAct, StemNotFusable, conv_bn_act_layout, fuse_stem, stem_parents
from .head import fuse_head, head_parents


class NotFusableError(ValueError):
    """A Ghost(-like) module the fused op cannot compute; the message says why."""


class GhostFuseWarning(UserWarning):
    """fuse() left Ghost(-like) modules unfused."""


@dataclasses.dataclass(frozen=True)
class GhostSpec:
    """What the fused op needs to know about a recognized Ghost module."""

    layout: str  # "sequential" (primary_conv / cheap_operation) or "conv_pair" (cv1 / cv2)
    act: str
    out_channels: int


_LAYOUT_CHILDREN = {"sequential": ("primary_conv", "cheap_operation"), "conv_pair": ("cv1", "cv2")}


def ghost_layout(module: nn.Module) -> str | None:
    """The layout a module looks like ("sequential" or "conv_pair"), or None when it is no Ghost module at all.

    A conv_pair candidate needs cv1.conv and cv2.conv with cv2 depthwise over cv1's output: that excludes the many
    other cv1/cv2 modules of Ultralytics (C2f, C3, Bottleneck with dense convolutions).
    """
    children = dict(module.named_children())
    if "primary_conv" in children and "cheap_operation" in children:
        return "sequential"
    cv1, cv2 = children.get("cv1"), children.get("cv2")
    if cv1 is None or cv2 is None:
        return None
    c1 = dict(cv1.named_children()).get("conv")
    c2 = dict(cv2.named_children()).get("conv")
    if (isinstance(c1, nn.Conv2d) and isinstance(c2, nn.Conv2d)
            and c2.groups == c2.in_channels == c1.out_channels):
        return "conv_pair"
    return None


@dataclasses.dataclass
class _Stage:
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None
    act_module: nn.Module | None


def _stage_from_sequential(what: str, seq: nn.Module) -> _Stage:
    """Conv2d -> [BatchNorm2d] -> [activation], nothing else."""
    if type(seq) is not nn.Sequential:
        raise NotFusableError(f"{what} is a {type(seq).__name__}, not a Sequential(Conv2d, [BatchNorm2d], "
                              f"[activation])")
    layers = list(seq)
    if not layers or type(layers[0]) is not nn.Conv2d:
        first = type(layers[0]).__name__ if layers else "nothing"
        raise NotFusableError(f"{what} starts with {first}, not a Conv2d")
    bn = None
    rest = layers[1:]
    if rest and isinstance(rest[0], nn.BatchNorm2d):
        bn = rest.pop(0)
    if len(rest) > 1:
        raise NotFusableError(f"{what} has more layers than Conv2d, BatchNorm2d and one activation: "
                              f"{', '.join(type(m).__name__ for m in layers)}")
    return _Stage(layers[0], bn, rest[0] if rest else None)


def _stage_from_conv_block(what: str, block: nn.Module) -> _Stage:
    """Ultralytics' Conv: children conv, [bn], act (forward act(bn(conv(x))), or act(conv(x)) once fused)."""
    children = dict(block.named_children())
    conv = children.pop("conv")
    bn = children.pop("bn", None)
    act = children.pop("act", None)
    if type(conv) is not nn.Conv2d:
        raise NotFusableError(f"{what}.conv is a {type(conv).__name__}, not a Conv2d")
    if bn is not None and not isinstance(bn, nn.BatchNorm2d):
        raise NotFusableError(f"{what}.bn is a {type(bn).__name__}, not a BatchNorm2d")
    stateful = [name for name, m in children.items() if any(True for _ in m.state_dict())]
    if stateful:
        raise NotFusableError(f"{what} has layers besides conv, bn and act: {', '.join(stateful)}")
    return _Stage(conv, bn, act)


def _check_primary(what: str, conv: nn.Conv2d) -> None:
    if conv.kernel_size != (1, 1):
        k = "x".join(map(str, conv.kernel_size))
        raise NotFusableError(f"{what} has kernel_size {k}; the fused op's primary convolution is 1x1")
    if conv.stride != (1, 1):
        raise NotFusableError(f"{what} has stride {conv.stride}; the fused op runs at stride 1")
    if conv.groups != 1:
        raise NotFusableError(f"{what} is a grouped convolution (groups={conv.groups}); the op's is dense")
    if conv.padding != (0, 0) or conv.dilation != (1, 1):
        raise NotFusableError(f"{what} has padding {conv.padding} / dilation {conv.dilation}; the op's 1x1 "
                              f"convolution has none")


def _check_cheap(what: str, conv: nn.Conv2d, init: int) -> None:
    if conv.in_channels != init or conv.groups != init or conv.out_channels % init != 0:
        raise NotFusableError(f"{what} is not a depthwise convolution over the primary conv's {init} channels "
                              f"(in_channels={conv.in_channels}, groups={conv.groups}, "
                              f"out_channels={conv.out_channels})")
    kh, kw = conv.kernel_size
    if kh != kw or kh % 2 != 1:
        raise NotFusableError(f"{what} has kernel_size {kh}x{kw}; the op's depthwise kernel is square and odd")
    if conv.stride != (1, 1) or conv.dilation != (1, 1):
        raise NotFusableError(f"{what} has stride {conv.stride} / dilation {conv.dilation}; the op's depthwise "
                              f"convolution has neither")
    if conv.padding != (kh // 2, kh // 2) or conv.padding_mode != "zeros":
        raise NotFusableError(f"{what} has padding {conv.padding} ({conv.padding_mode}); the op zero-pads by "
                              f"{kh // 2}")


def _check_bn(what: str, bn: nn.BatchNorm2d | None) -> None:
    if bn is None:
        return
    if type(bn) is not nn.BatchNorm2d:
        raise NotFusableError(f"{what} is a {type(bn).__name__}, not a plain BatchNorm2d (its forward may do more)")
    if bn.running_mean is None or bn.running_var is None:
        raise NotFusableError(f"{what} has no running statistics (track_running_stats=False), so it cannot be "
                              f"folded into the convolution")


def _act_of(what: str, module: nn.Module | None) -> str:
    name = activation_name(module)
    if name is None:
        raise NotFusableError(f"{what} is {type(module).__name__}, an activation outside the op's set "
                              f"({', '.join(ACTS)})")
    return name


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    """Every submodule in eval mode for the duration; each one's own training flag restored afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _probe_out_channels(module: nn.Module, primary: _Stage, cheap: _Stage, act: str) -> int:
    """Run the module on a probe input and check it computes cat(x1, x2)[:, :c]; return c."""
    weight = primary.conv.weight
    if weight.device.type == "meta":
        raise NotFusableError("it is on the meta device, where its forward cannot be checked")
    full = primary.conv.out_channels + cheap.conv.out_channels
    gen = torch.Generator().manual_seed(0)  # private: fuse() must not consume the global RNG
    x = torch.randn(2, primary.conv.in_channels, 5, 7, generator=gen).to(weight.device, weight.dtype)
    with _eval_mode(module), torch.no_grad():
        try:
            got = module(x)
        except Exception as e:  # whatever the forward raises, the module is not one the op can stand in for
            raise NotFusableError(f"its forward failed on a [2, C, 5, 7] probe input ({type(e).__name__}: {e})") \
                from e
        w1, b1 = fold_conv_bn(primary.conv.weight, primary.conv.bias, primary.bn)
        w2, b2 = fold_conv_bn(cheap.conv.weight, cheap.conv.bias, cheap.bn)
        expected = ghost_module_reference(x, w1, b1, w2, b2, full, act)
    if not isinstance(got, torch.Tensor) or got.dim() != 4 or tuple(got.shape[2:]) != (5, 7) \
            or got.shape[0] != 2 or not 1 <= got.shape[1] <= full:
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise NotFusableError(f"its forward does not return cat(x1, x2)[:, :c] (on a [2, C, 5, 7] probe it "
                              f"returned {shape})")
    c = got.shape[1]
    want = expected[:, :c].float()
    err = float((got.float() - want).abs().max())
    # Folding the BN only changes rounding: ~1e-7 relative in float32, ~1e-2 in 16-bit types. A different forward
    # (a gate, a shuffle, a residual, a missing activation) differs by O(1).
    tol = 1e-3 if weight.dtype in (torch.float32, torch.float64) else 6e-2
    if not err <= tol * max(1.0, float(want.abs().max())):
        raise NotFusableError(f"its forward does not compute cat(x1, x2)[:, :{c}] from its layers (max deviation "
                              f"{err:.3g} on a probe input): an attention gate, a channel shuffle, a residual or "
                              f"an activation applied differently")
    return c


def inspect_ghost_module(module: nn.Module) -> GhostSpec:
    """Check that the fused op can compute ``module`` exactly; return what it needs, or raise NotFusableError."""
    layout = ghost_layout(module)
    if layout is None:
        raise NotFusableError(f"{type(module).__name__} is not a Ghost module (it has neither primary_conv + "
                              f"cheap_operation nor a GhostConv-shaped cv1 + cv2)")
    first, second = _LAYOUT_CHILDREN[layout]
    if layout == "sequential":
        if isinstance(module.primary_conv, nn.Identity) and hasattr(module, "reparameterize"):
            raise NotFusableError("it is a GhostModuleV3 that has not been reparameterized (primary_conv is "
                                  "Identity, the branches are separate); call reparameterize() first")
        primary = _stage_from_sequential("primary_conv", module.primary_conv)
        cheap = _stage_from_sequential("cheap_operation", module.cheap_operation)
    else:
        primary = _stage_from_conv_block("cv1", module.cv1)
        cheap = _stage_from_conv_block("cv2", module.cv2)
    _check_primary(f"{first} conv", primary.conv)
    _check_cheap(f"{second} conv", cheap.conv, primary.conv.out_channels)
    _check_bn(f"{first} BatchNorm", primary.bn)
    _check_bn(f"{second} BatchNorm", cheap.bn)
    act = _act_of(f"the {first} activation", primary.act_module)
    cheap_act = _act_of(f"the {second} activation", cheap.act_module)
    if act != cheap_act:
        raise NotFusableError(f"its activations differ ({first}: {act}, {second}: {cheap_act}); the op applies "
                              f"one activation after both convolutions")
    # Anything else with state (a gate's convolutions, say) would be dropped by the replacement.
    other = sorted({k.split(".")[0] for k in module.state_dict() if not k.startswith((first + ".", second + "."))})
    if other:
        if other == ["short_conv"]:
            raise NotFusableError("it has an attention gate (short_conv) that multiplies its output")
        raise NotFusableError(f"it has layers with state besides {first} and {second}: {', '.join(other)}")
    return GhostSpec(layout, act, _probe_out_channels(module, primary, cheap, act))


def _fused_replacement(module: nn.Module, layout: str, backend: str) -> _FusedGhostBase:
    if layout == "sequential":
        return FusedGhostModule.from_module(module, backend=backend)
    return FusedGhostConv.from_module(module, backend=backend)


def fuse(model: nn.Module, backend: str = "auto", strict: bool = False, blocks: bool = True) -> nn.Module:
    """Replace, in place, every Ghost module of ``model`` that the fused op can compute; return ``model``.

    With ``blocks=True`` (the default) every GhostBottleneck whose Ghost modules were fused is then replaced too,
    by a FusedGhostBottleneck (ghostkernels.bottleneck): on CPU tensors in inference the whole block runs as one
    op; elsewhere it runs the block's own forward with the fused Ghost modules. So are a CPU network's stem (its
    ``conv_stem`` / ``bn1`` / ``act1`` children) and every ConvBnAct module (children ``conv``, ``bn1``, ``act1``),
    for ghostkernels::conv2d_act (ghostkernels.conv_bn_act; each checked on a probe input, left alone with a
    GhostFuseWarning when it does not match), and a CPU network's head (its ``conv_head`` and ``classifier``
    children, for ghostkernels::linear_act; ghostkernels.head). ``blocks=False`` fuses the Ghost modules only.

    See the module docstring for what is recognized. Modules already fused get ``backend``. What looks like a Ghost
    module but cannot be fused (an attention gate, a primary kernel_size other than 1 or a stride other than 1, an
    activation outside the op's set, a GhostModuleV3 not reparameterized, ...) is left alone, and one
    GhostFuseWarning lists each such module by qualified name with the reason; with ``strict=True`` a
    NotFusableError (a ValueError) is raised instead and the model is not changed. When ``model`` itself is a Ghost
    module, the replacement is returned (it shares the parameters).

    In eval mode the fused model's outputs equal the original's within rounding (the BN fold changes the order of
    operations); in train mode the replaced modules run their original layers (see FusedGhostModule).
    """
    if backend not in ops.BACKENDS:
        raise ValueError(f"ghostkernels.fuse: unknown backend {backend!r}; expected one of "
                         f"{', '.join(ops.BACKENDS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"ghostkernels.fuse: expected an nn.Module, got {type(model).__name__}")
    swaps: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, child name, replacement)
    refused: list[tuple[str, str]] = []  # (qualified name, reason)
    already: list[nn.Module] = []
    chains_left: list[str] = []  # ConvBnAct modules left unfused (not Ghost modules: warned about, never strict)
    replacement_of: dict[int, nn.Module] = {}  # a module reachable from two parents is replaced once
    visited: set[int] = set()

    def consider(module: nn.Module, qualname: str) -> nn.Module | None:
        """The replacement of ``module``, or None (then its children are looked at)."""
        if isinstance(module, (_FusedGhostBase, FusedGhostBottleneck, FusedConvBnAct)):
            already.append(module)
            return module
        layout = ghost_layout(module)
        if layout is None:
            if blocks and conv_bn_act_layout(module):
                try:
                    return FusedConvBnAct.from_module(module, backend)
                except StemNotFusable as e:
                    chains_left.append(f"  {qualname or type(module).__name__}: {e}")
                    return None
            return consider_block(module, qualname) if blocks and bottleneck_layout(module) else None
        try:
            return _fused_replacement(module, layout, backend)
        except NotFusableError as e:
            refused.append((qualname or type(module).__name__, str(e)))
            return None

    def consider_block(block: nn.Module, qualname: str) -> nn.Module:
        """A GhostBottleneck: its Ghost modules first (their swaps go into the block itself, so its own forward,
        which runs in training and on GPUs, uses them), then the block."""
        walk(block, f"{qualname}." if qualname else "")
        ghosts = {}
        for name in ("ghost1", "ghost2"):
            child = block._modules[name]
            ghosts[name] = replacement_of.get(id(child), child)
        if not all(isinstance(g, FusedGhostModule) for g in ghosts.values()):
            return block  # a Ghost module of it cannot be fused: already reported
        try:
            fused = FusedGhostBottleneck.__new__(FusedGhostBottleneck)
            nn.Module.__init__(fused)
            fused._adopt(block, backend, ghosts)
            return fused
        except NotFusableError as e:
            refused.append((qualname or type(block).__name__, f"(a GhostBottleneck; its Ghost modules are fused) {e}"))
            return block

    def walk(parent: nn.Module, prefix: str) -> None:
        # parent._modules, not named_children(): that skips a module's second occurrence under the same parent.
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) in replacement_of:
                swaps.append((parent, name, replacement_of[id(child)]))
                continue
            if id(child) in visited:
                continue
            visited.add(id(child))
            new = consider(child, prefix + name)
            if new is None:
                walk(child, f"{prefix}{name}.")
            elif new is not child:
                replacement_of[id(child)] = new
                swaps.append((parent, name, new))

    root_replacement = consider(model, "")
    if root_replacement is None:
        walk(model, "")

    if refused:
        lines = "\n".join(f"  {name}: {reason}" for name, reason in refused)
        message = (f"ghostkernels.fuse: {len(refused)} Ghost module(s) or bottleneck(s) cannot be fused and were left "
                   f"alone:\n{lines}")
        if strict:
            raise NotFusableError(message)
        warnings.warn(message, GhostFuseWarning, stacklevel=2)
    for module in already:
        module.backend = backend
    for parent, name, new in swaps:
        setattr(parent, name, new)
    result = root_replacement if root_replacement is not None else model
    if blocks:
        _fuse_stems(result, backend, chains_left)
        for _, parent in list(head_parents(result)):
            fuse_head(parent, backend)
    return result


def _fuse_stems(model: nn.Module, backend: str, refused: list[str]) -> None:
    """The stem step (ghostkernels.conv_bn_act) on every conv_stem / bn1 / act1 of ``model`` on the CPU (the op is
    CPU-only; a stem elsewhere is left as it is, silently). A stem (or ConvBnAct, in ``refused`` already) the op
    cannot stand in for gets a warning of its own: they are not Ghost modules, so ``strict`` does not cover them."""
    for name, parent in list(stem_parents(model)):
        weight = getattr(parent.conv_stem, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.device.type != "cpu":
            continue
        try:
            fuse_stem(parent, backend)
        except StemNotFusable as e:
            refused.append(f"  {name + '.' if name else ''}conv_stem/bn1/act1: {e}")
    if refused:
        warnings.warn("ghostkernels.fuse: conv -> BatchNorm -> activation chains (the stem, ConvBnAct) left "
                      "unfused:\n" + "\n".join(refused), GhostFuseWarning, stacklevel=3)


__all__ = ["GhostFuseWarning", "GhostSpec", "NotFusableError", "fuse", "ghost_layout", "inspect_ghost_module"]
