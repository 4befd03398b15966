"""Every recognizer: which modules the fused ops can stand in for, and the one probe check that confirms it.

A candidate is recognized by structure, never by class name: the children it has and what they are. The structure
says which layers there are; it cannot say how the parent's forward combines them (GSConv has GhostConv's layers but
shuffles the channels; a gated module multiplies the output). So every candidate is also run on a small probe input
(``probe``: drawn from a private generator, the module temporarily in eval mode, autograd off) and its output must
equal what the op would compute from its layers. A candidate that fails any check raises a ``NotFusableError`` (a
ValueError) whose message says why; ghostkernels.patch.fuse() collects those into one warning, or raises with
strict=True. Nothing here changes a module.

The kinds:

* Ghost modules (``inspect_ghost_module``), in two layouts: ``primary_conv`` + ``cheap_operation`` (two Sequentials:
  Conv2d -> [BatchNorm2d] -> [activation]; this package's GhostModule, the official huawei-noah GhostModule and
  GhostModuleV2 in mode 'original', timm's GhostModule, timm's GhostModuleV3 after ``reparameterize()``), and
  ``cv1`` + ``cv2`` (Ultralytics' GhostConv, before or after Ultralytics' own fuse()). The first layout may also
  carry GhostNetV2's DFC attention gate, ``short_conv`` (1x1 conv, BN, depthwise (1, k) conv, BN, depthwise (k, 1)
  conv, BN; ``gate_stages``), whose nearest-upsampled sigmoid multiplies the output: this package's and timm's
  GhostModuleV2, the official one in mode 'attn', timm's GhostModuleV3 in mode 'shortcut' after reparameterize().
* GhostNet bottlenecks (``inspect_ghost_bottleneck``): children ghost1 (gated or not), ghost2 (Ghost modules, ghost2
  without activation or gate), optional conv_dw (depthwise, stride 2) with bn_dw, optional se (conv_reduce,
  conv_expand), shortcut (an empty Sequential or [depthwise conv, BN, 1x1 conv, BN]).
* ConvBnAct modules (``inspect_conv_bn_act``): exactly the children conv, bn1, act1 (GhostNet's last stage).
* Stems (``check_stem``; ``stem_parents``): a network's conv_stem / bn1 / act1 children. They are not one module,
  so the probe compares the whole network before and after (ghostkernels.patch.stem).
* Heads (``conv_head_fusable``, ``classifier_fusable``; ``head_parents``): a 1x1 conv_head with a bias and a Linear
  classifier; the fused ones compute the same function, so no probe.
* GhostNets (``ghostnet_parents``): the children a frozen network's chain runs (ghostkernels.patch.frozen).

These live in ghostkernels.nn (not ghostkernels.patch) because the nn modules' ``from_module`` needs them and the
package's layers import one way only (ops -> nn -> patch). This module imports no fused module: a Ghost module that
is already fused is recognized through its public ``ghost_stages()`` method.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.layouts import GhostBottleneckArgs, GhostBottleneckGatedArgs
from ..ops.reference import (ACTS, activation, dfc_gate_reference, ghost_bottleneck_reference,
                             ghost_module_gated_reference, ghost_module_reference)
from .activations import activation_name
from .batchnorm import BATCHNORM_TYPES, is_batchnorm
from .folding import FoldCache, Stage, fold_conv_bn
from .gate import global_hooks_registered


# ---------------------------------------------------------------------------------------------------------------
# The error family
# ---------------------------------------------------------------------------------------------------------------


class NotFusableError(ValueError):
    """A module (or group of modules) that the fused ops cannot stand in for; the message says why. Every
    recognizer raises this or a subclass, and ``fuse(strict=True)`` raises it for any of them."""


class StemNotFusable(NotFusableError):
    """conv_stem / bn1 / act1, or a ConvBnAct, that conv2d_act cannot stand in for."""


# ---------------------------------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------------------------------


def probe_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of a probe comparison. Folding a BN only changes rounding: ~1e-7 relative in float32,
    ~1e-2 in 16-bit types. A different forward (a gate, a shuffle, a residual, a missing activation) differs by
    O(1)."""
    return 1e-3 if dtype in (torch.float32, torch.float64) else 6e-2


@contextlib.contextmanager
def probing(module: nn.Module):
    """``module`` and every submodule in eval mode, autograd off, for the duration; each module's own training flag
    is restored afterwards (not ``.train()``: that would overwrite flags set one by one)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def probe(module: nn.Module, shape: tuple[int, ...], like: torch.Tensor, expected, *, actual=None,
          error: type[NotFusableError] = NotFusableError, what: str = "its forward",
          mismatch: str = "its forward does not compute what the op computes (max deviation {err:.3g} on a probe "
                          "input)") -> tuple[torch.Tensor, torch.Tensor]:
    """The one probe check. Draws a probe input of ``shape`` (private generator, seed 0: fuse() must not consume the
    global RNG; ``like``'s dtype and device), then under ``probing(module)``: ``got = actual(x)`` (default
    ``module(x)``; any exception means the candidate is not one the op can stand in for) and ``want = expected(x,
    got)`` (which may raise ``error`` itself, e.g. for an output of the wrong kind). Raises ``error`` unless ``got``
    is a tensor of ``want``'s shape within ``probe_tolerance`` of it (``mismatch`` is the message, formatted with
    ``err``); returns (got, want)."""
    if like.device.type == "meta":
        raise error("it is on the meta device, where its forward cannot be checked")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen).to(like.device, like.dtype)
    with probing(module):
        try:
            got = (actual or module)(x)
        except Exception as e:  # whatever the forward raises, the op cannot stand in for it
            dims = ", ".join(map(str, shape[:1])) + ", C, " + ", ".join(map(str, shape[2:]))
            raise error(f"{what} failed on a [{dims}] probe input ({type(e).__name__}: {e})") from e
        want = expected(x, got)
    if not (isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor) and got.shape == want.shape):
        shape = lambda t: tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__  # noqa: E731
        raise error(f"{what} returned {shape(got)} on the probe, not the expected {shape(want)}")
    err = float((got.float() - want.float()).abs().max()) if got.numel() else 0.0
    scale = max(1.0, float(want.float().abs().max())) if want.numel() else 1.0
    if not err <= probe_tolerance(like.dtype) * scale:
        raise error(mismatch.format(err=err))
    return got, want


# ---------------------------------------------------------------------------------------------------------------
# Layer checks shared by the recognizers
# ---------------------------------------------------------------------------------------------------------------


def _check_bn(what: str, bn: nn.Module | None, error=NotFusableError) -> nn.BatchNorm2d | None:
    """A plain BatchNorm2d (or SyncBatchNorm, a BatchNorm2d in eval mode) with running statistics (or None): what
    folding needs."""
    if bn is None:
        return None
    if not is_batchnorm(bn):
        raise error(f"{what} is a {type(bn).__name__}, not a plain BatchNorm2d or SyncBatchNorm (its forward may do "
                    f"more)")
    if bn.running_mean is None or bn.running_var is None:
        raise error(f"{what} has no running statistics (track_running_stats=False), so it cannot be folded into "
                    f"the convolution")
    return bn


def _act_of(what: str, module: nn.Module | None) -> str:
    name = activation_name(module)
    if name is None:
        raise NotFusableError(f"{what} is {type(module).__name__}, an activation outside the op's set "
                              f"({', '.join(ACTS)})")
    return name


def _check_depthwise(what: str, conv: nn.Module, channels: int, stride: int | None) -> int:
    """The kernel size of a depthwise conv the ops can run (odd square kernel, padding k//2, stride 1 or 2)."""
    if type(conv) is not nn.Conv2d:
        raise NotFusableError(f"{what} is a {type(conv).__name__}, not a Conv2d")
    k = conv.kernel_size[0]
    if not (conv.in_channels == conv.out_channels == conv.groups == channels):
        raise NotFusableError(f"{what} is not a depthwise convolution over {channels} channels "
                              f"(in={conv.in_channels}, out={conv.out_channels}, groups={conv.groups})")
    if conv.kernel_size != (k, k) or k % 2 != 1 or conv.padding != (k // 2, k // 2) or conv.padding_mode != "zeros":
        raise NotFusableError(f"{what} has kernel {conv.kernel_size} / padding {conv.padding} ({conv.padding_mode}); "
                              f"the op's depthwise convs are square, odd and zero-padded by k//2")
    if conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1] or conv.stride[0] not in (1, 2) \
            or (stride is not None and conv.stride[0] != stride):
        raise NotFusableError(f"{what} has stride {conv.stride} / dilation {conv.dilation}; expected stride "
                              f"{stride or '1 or 2'} and no dilation")
    return k


def _check_conv1x1(what: str, conv: nn.Module, in_channels: int) -> None:
    if type(conv) is not nn.Conv2d:
        raise NotFusableError(f"{what} is a {type(conv).__name__}, not a Conv2d")
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.groups != 1 \
            or conv.dilation != (1, 1) or conv.in_channels != in_channels:
        raise NotFusableError(f"{what} is not a dense 1x1 convolution over {in_channels} channels")


# ---------------------------------------------------------------------------------------------------------------
# Ghost modules
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GhostSpec:
    """What the fused op needs to know about a recognized Ghost module besides its layers."""

    layout: str  # "sequential" (primary_conv / cheap_operation) or "conv_pair" (cv1 / cv2)
    act: str
    out_channels: int
    gated: bool = False  # GhostNetV2's DFC attention gate (short_conv) multiplies the output


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
class _ActStage:
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None
    act_module: nn.Module | None


def _stage_from_sequential(what: str, seq: nn.Module) -> _ActStage:
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
    if rest and isinstance(rest[0], BATCHNORM_TYPES):
        bn = rest.pop(0)
    if len(rest) > 1:
        raise NotFusableError(f"{what} has more layers than Conv2d, BatchNorm2d and one activation: "
                              f"{', '.join(type(m).__name__ for m in layers)}")
    return _ActStage(layers[0], bn, rest[0] if rest else None)


def _stage_from_conv_block(what: str, block: nn.Module) -> _ActStage:
    """Ultralytics' Conv: children conv, [bn], act (forward act(bn(conv(x))), or act(conv(x)) once fused)."""
    children = dict(block.named_children())
    conv = children.pop("conv")
    bn = children.pop("bn", None)
    act = children.pop("act", None)
    if type(conv) is not nn.Conv2d:
        raise NotFusableError(f"{what}.conv is a {type(conv).__name__}, not a Conv2d")
    if bn is not None and not isinstance(bn, BATCHNORM_TYPES):
        raise NotFusableError(f"{what}.bn is a {type(bn).__name__}, not a BatchNorm2d")
    stateful = [name for name, m in children.items() if any(True for _ in m.state_dict())]
    if stateful:
        raise NotFusableError(f"{what} has layers besides conv, bn and act: {', '.join(stateful)}")
    return _ActStage(conv, bn, act)


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


def _probe_out_channels(module: nn.Module, primary: _ActStage, cheap: _ActStage, act: str, gate=None) -> int:
    """Run the module on a probe input and check it computes cat(x1, x2)[:, :c] (times the upsampled DFC map of
    ``gate``, its three stages, when given); return c. The probe is 5x7, so the map is 2x3 and its upsampling takes
    the index formula's general case."""
    full = primary.conv.out_channels + cheap.conv.out_channels

    def expected(x, got):
        if not isinstance(got, torch.Tensor) or got.dim() != 4 or tuple(got.shape[2:]) != (5, 7) \
                or got.shape[0] != 2 or not 1 <= got.shape[1] <= full:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise NotFusableError(f"its forward does not return cat(x1, x2)[:, :c] (on a [2, C, 5, 7] probe it "
                                  f"returned {shape})")
        w1, b1 = fold_conv_bn(primary.conv.weight, primary.conv.bias, primary.bn)
        w2, b2 = fold_conv_bn(cheap.conv.weight, cheap.conv.bias, cheap.bn)
        c = got.shape[1]
        if gate is None:
            return ghost_module_reference(x, w1, b1, w2, b2, full, act)[:, :c]
        if gate[0].conv.out_channels != c:
            raise NotFusableError(f"its gate (short_conv) makes {gate[0].conv.out_channels} channels but its output "
                                  f"has {c}")
        gate_map = dfc_gate_reference(x, *FoldCache.fold(gate))
        return ghost_module_gated_reference(x, w1, b1, w2, b2, c, act, gate_map)

    what = "cat(x1, x2)[:, :c]" if gate is None else "cat(x1, x2)[:, :c] times its upsampled DFC map"
    got, _ = probe(module, (2, primary.conv.in_channels, 5, 7), primary.conv.weight, expected,
                   mismatch=f"its forward does not compute {what} from its layers (max deviation {{err:.3g}} on a "
                            f"probe input): an attention gate, a channel shuffle, a residual or an activation applied "
                            f"differently")
    return got.shape[1]


def _check_gate_conv(what: str, conv: nn.Module, in_channels: int, out_channels: int, kernel: tuple[int, int],
                     groups: int) -> None:
    if type(conv) is not nn.Conv2d:
        raise NotFusableError(f"{what} is a {type(conv).__name__}, not a Conv2d")
    kh, kw = kernel
    ok = (conv.in_channels == in_channels and conv.out_channels == out_channels and conv.groups == groups
          and conv.kernel_size == kernel and conv.padding == (kh // 2, kw // 2) and conv.stride == (1, 1)
          and conv.dilation == (1, 1) and conv.padding_mode == "zeros")
    if not ok:
        raise NotFusableError(f"{what} (in={conv.in_channels}, out={conv.out_channels}, groups={conv.groups}, "
                              f"kernel_size={conv.kernel_size}, padding={conv.padding}, stride={conv.stride}) is not "
                              f"the DFC gate's {kh}x{kw} convolution over {in_channels} channels with zero padding "
                              f"({kh // 2}, {kw // 2})")


def gate_stages(short_conv: nn.Module, in_channels: int) -> tuple[Stage, Stage, Stage]:
    """The three (conv, BatchNorm) stages of a GhostNetV2 DFC gate branch over ``in_channels`` input channels:
    Sequential(Conv2d 1x1, BN, depthwise Conv2d (1, k), BN, depthwise Conv2d (k, 1), BN) with k odd and zero
    'same' padding (timm's and the official short_conv); NotFusableError otherwise. Whether the module applies it as
    the gate (pool, sigmoid, upsample, multiply) is the probe's business."""
    layers = list(short_conv._modules.values()) if type(short_conv) is nn.Sequential else None
    if layers is None or len(layers) != 6:
        raise NotFusableError("its gate (short_conv) is not a Sequential of six layers (1x1 conv, BN, (1, k) conv, "
                              "BN, (k, 1) conv, BN)")
    reduce, dw_h, dw_v = layers[0], layers[2], layers[4]
    if type(reduce) is not nn.Conv2d:
        raise NotFusableError(f"short_conv[0] is a {type(reduce).__name__}, not a Conv2d")
    o = reduce.out_channels
    _check_gate_conv("short_conv[0]", reduce, in_channels, o, (1, 1), 1)
    kh = dw_h.kernel_size[1] if type(dw_h) is nn.Conv2d else 0
    kv = dw_v.kernel_size[0] if type(dw_v) is nn.Conv2d else 0
    if kh % 2 != 1 or kv % 2 != 1:
        raise NotFusableError("the gate's depthwise convolutions (short_conv[2], short_conv[4]) must be Conv2d with "
                              "odd (1, k) and (k, 1) kernels")
    _check_gate_conv("short_conv[2]", dw_h, o, o, (1, kh), o)
    _check_gate_conv("short_conv[4]", dw_v, o, o, (kv, 1), o)
    bns = [_check_bn_like(f"short_conv[{i}]", layers[i]) for i in (1, 3, 5)]
    return Stage(reduce, bns[0]), Stage(dw_h, bns[1]), Stage(dw_v, bns[2])


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
    # Anything else with state would be dropped by the replacement; GhostNetV2's gate is the one extra it knows.
    other = sorted({k.split(".")[0] for k in module.state_dict() if not k.startswith((first + ".", second + "."))})
    gate = None
    if layout == "sequential" and other == ["short_conv"]:
        gate = gate_stages(module.short_conv, primary.conv.in_channels)
    elif other:
        raise NotFusableError(f"it has layers with state besides {first} and {second}: {', '.join(other)}")
    return GhostSpec(layout, act, _probe_out_channels(module, primary, cheap, act, gate), gated=gate is not None)


def sequential_stage(seq: nn.Sequential) -> Stage:
    """The conv and BatchNorm of a recognized Conv2d -> [BatchNorm2d] -> [activation] Sequential (through the
    _modules dict rather than seq[i]: Sequential's indexing costs microseconds, and fused modules do this per
    call)."""
    layers = list(seq._modules.values())
    bn = layers[1] if len(layers) > 1 and isinstance(layers[1], BATCHNORM_TYPES) else None
    return Stage(layers[0], bn)


# ---------------------------------------------------------------------------------------------------------------
# GhostNet bottlenecks
# ---------------------------------------------------------------------------------------------------------------

# Children a GhostBottleneck may have; any other child with state means a block this op does not know.
_KNOWN_CHILDREN = ("ghost1", "conv_dw", "bn_dw", "se", "ghost2", "shortcut")


def bottleneck_layout(module: nn.Module) -> bool:
    """Whether ``module`` looks like a GhostBottleneck (children ghost1, ghost2 and shortcut)."""
    children = module._modules
    return all(children.get(name) is not None for name in ("ghost1", "ghost2")) and "shortcut" in children


@dataclasses.dataclass(frozen=True)
class BottleneckSpec:
    """What the op needs to know about a recognized bottleneck besides its layers."""

    in_channels: int
    mid_channels: int
    out_channels: int
    stride: int
    act: str  # ghost1's activation


def _ghost_stages(what: str, module: nn.Module) -> tuple[Stage, Stage, str, int, tuple | None]:
    """(primary, cheap, act, out_channels, gate stages or None) of a Ghost module in the primary_conv/cheap_operation
    layout, fused (read by its ``ghost_spec()``, ``ghost_stages()`` and, gated, ``gate_stages()``) or not; raises
    NotFusableError when the fused op cannot compute it."""
    fused_spec = getattr(module, "ghost_spec", None)
    if callable(fused_spec):
        spec = fused_spec()
    else:
        try:
            spec = inspect_ghost_module(module)
        except NotFusableError as e:
            raise NotFusableError(f"{what} cannot be fused: {e}") from e
    if spec.layout != "sequential":
        raise NotFusableError(f"{what} has the cv1/cv2 layout, not a GhostBottleneck's Ghost module")
    primary, cheap = module.ghost_stages() if callable(fused_spec) else (sequential_stage(module.primary_conv),
                                                                         sequential_stage(module.cheap_operation))
    gate = None
    if spec.gated:
        gate = module.gate_stages() if callable(fused_spec) else gate_stages(module.short_conv,
                                                                              primary.conv.in_channels)
    return primary, cheap, spec.act, spec.out_channels, gate


@dataclasses.dataclass
class BottleneckLayers:
    """A bottleneck's layers, read off the module: the stages to fold, in the op's order, and the SE convs."""

    ghost1: tuple[Stage, Stage]
    ghost2: tuple[Stage, Stage]
    dw: Stage | None
    se: tuple[nn.Conv2d, nn.Conv2d] | None
    shortcut: tuple[Stage, Stage] | None
    gate: tuple[Stage, Stage, Stage] | None = None  # ghost1's DFC gate (GhostNetV2's block)

    def stages(self) -> list[Stage]:
        """Every conv the op reads, in the op's order (the SE convs have no BN: folding them passes them through;
        they are here so that the fold cache watches their tensors too)."""
        out = list(self.ghost1)
        if self.gate is not None:
            out += self.gate
        if self.dw is not None:
            out.append(self.dw)
        out += self.ghost2
        if self.shortcut is not None:
            out += self.shortcut
        if self.se is not None:
            out += [Stage(conv, None) for conv in self.se]
        return out

    def op_arguments(self, spec: BottleneckSpec, folded, x=None) -> GhostBottleneckArgs | GhostBottleneckGatedArgs:
        """The op's arguments from the folded stages (``FoldCache.fold(self.stages())`` order): ghost_bottleneck's,
        or ghost_bottleneck_gated's for a gated ghost1."""
        it = iter(folded)
        take = lambda n: tuple(next(it) for _ in range(n))  # noqa: E731
        ghost1 = take(4)
        gate = take(6) if self.gate is not None else None
        dw = take(2) if self.dw is not None else None
        ghost2 = take(4)
        shortcut = take(4) if self.shortcut is not None else None
        se = take(4) if self.se is not None else None
        if gate is not None:
            return GhostBottleneckGatedArgs.from_groups(x, ghost1, spec.mid_channels, ghost2, spec.out_channels,
                                                        act=spec.act, stride=spec.stride, gate=gate, dw=dw, se=se,
                                                        shortcut=shortcut)
        return GhostBottleneckArgs.from_groups(x, ghost1, spec.mid_channels, ghost2, spec.out_channels, act=spec.act,
                                               stride=spec.stride, dw=dw, se=se, shortcut=shortcut)


def read_bottleneck(module: nn.Module) -> tuple[BottleneckLayers, BottleneckSpec]:
    """The layers of a GhostBottleneck-shaped module and its spec; NotFusableError when the op cannot run it (its
    forward is checked separately, by inspect_ghost_bottleneck)."""
    g1p, g1c, act, mid, gate = _ghost_stages("ghost1", module.ghost1)
    g2p, g2c, act2, out, gate2 = _ghost_stages("ghost2", module.ghost2)
    if gate2 is not None:
        raise NotFusableError("ghost2 has an attention gate (short_conv); the op gates ghost1 only (GhostNetV2's "
                              "blocks gate no ghost2)")
    if act2 != "identity":
        raise NotFusableError(f"ghost2 has activation {act2}; the op's ghost2 has none (GhostNet's has none)")
    if g2p.conv.in_channels != mid:
        raise NotFusableError(f"ghost2 takes {g2p.conv.in_channels} channels but ghost1 makes {mid}")
    in_channels = g1p.conv.in_channels
    children = {k: v for k, v in module._modules.items() if v is not None}
    extra = sorted(k for k, v in children.items() if k not in _KNOWN_CHILDREN and any(True for _ in v.state_dict()))
    if extra:
        raise NotFusableError(f"it has layers with state besides a GhostBottleneck's: {', '.join(extra)}")

    dw = None
    stride = 1
    conv_dw = children.get("conv_dw")
    if conv_dw is not None:
        _check_depthwise("conv_dw", conv_dw, mid, None)
        stride = conv_dw.stride[0]
        if stride != 2:
            raise NotFusableError(f"conv_dw has stride {stride}; the op runs conv_dw at stride 2 only")
        bn_dw = children.get("bn_dw")
        if type(bn_dw) is nn.Identity:  # GhostNetV3 after reparameterize(): the BN is folded into conv_dw's bias
            bn_dw = None
        dw = Stage(conv_dw, _check_bn_like("bn_dw", bn_dw))
    elif children.get("bn_dw") is not None:
        raise NotFusableError("it has bn_dw without conv_dw")

    se = None
    se_mod = children.get("se")
    if se_mod is not None:
        se_children = se_mod._modules
        reduce, expand = se_children.get("conv_reduce"), se_children.get("conv_expand")
        if reduce is None or expand is None:
            raise NotFusableError("its se has no conv_reduce / conv_expand")
        _check_conv1x1("se.conv_reduce", reduce, mid)
        _check_conv1x1("se.conv_expand", expand, reduce.out_channels)
        if expand.out_channels != mid:
            raise NotFusableError(f"se.conv_expand makes {expand.out_channels} channels, not the block's {mid}")
        other = sorted({k.split(".")[0] for k in se_mod.state_dict()} - {"conv_reduce", "conv_expand"})
        if other:
            raise NotFusableError(f"its se has layers with state besides conv_reduce and conv_expand: "
                                  f"{', '.join(other)}")
        se = (reduce, expand)

    shortcut = None
    sc = children.get("shortcut")
    layers = list(sc._modules.values()) if type(sc) is nn.Sequential else None
    if layers is None:
        raise NotFusableError(f"its shortcut is a {type(sc).__name__}, not a Sequential")
    if len(layers) == 4:
        _check_depthwise("shortcut[0]", layers[0], in_channels, stride)
        _check_conv1x1("shortcut[2]", layers[2], in_channels)
        if layers[2].out_channels != out:
            raise NotFusableError(f"the shortcut makes {layers[2].out_channels} channels, ghost2 {out}")
        if dw is not None and layers[0].kernel_size != dw.conv.kernel_size:
            raise NotFusableError("the shortcut's depthwise kernel differs from conv_dw's")
        shortcut = (Stage(layers[0], _check_bn_like("shortcut[1]", layers[1])),
                    Stage(layers[2], _check_bn_like("shortcut[3]", layers[3])))
    elif layers:
        raise NotFusableError(f"its shortcut has {len(layers)} layers, not 0 (identity) or 4 (depthwise conv, BN, "
                              f"1x1 conv, BN)")
    elif in_channels != out or stride != 1:
        raise NotFusableError(f"its shortcut is the identity but the block maps {in_channels} -> {out} channels at "
                              f"stride {stride}")
    spec = BottleneckSpec(in_channels, mid, out, stride, act)
    return BottleneckLayers((g1p, g1c), (g2p, g2c), dw, se, shortcut, gate), spec


def _check_bn_like(what: str, bn: nn.Module | None) -> nn.BatchNorm2d | None:
    if bn is not None and not isinstance(bn, BATCHNORM_TYPES):
        raise NotFusableError(f"{what} is a {type(bn).__name__}, not a BatchNorm2d")
    return _check_bn(what, bn)


def inspect_ghost_bottleneck(module: nn.Module) -> tuple[BottleneckLayers, BottleneckSpec]:
    """Check that ghostkernels::ghost_bottleneck computes ``module`` exactly in eval mode; return its layers and
    spec, or raise NotFusableError (a ValueError) with the reason."""
    if not bottleneck_layout(module):
        raise NotFusableError(f"{type(module).__name__} is not a GhostBottleneck (it lacks ghost1, ghost2 or "
                              f"shortcut)")
    layers, spec = read_bottleneck(module)

    def expected(x, got):
        a = layers.op_arguments(spec, FoldCache.fold(layers.stages()))
        none = lambda g: None if g[0] is None else g  # noqa: E731
        return ghost_bottleneck_reference(x, a.ghost1, spec.mid_channels, a.ghost2, spec.out_channels, spec.act,
                                          spec.stride, none(a.dw), none(a.se), none(a.shortcut),
                                          gate=a.gate if layers.gate is not None else None)

    probe(module, (2, spec.in_channels, 9, 11), layers.ghost1[0].conv.weight, expected,
          mismatch="its forward does not compute a GhostBottleneck from its layers (max deviation {err:.3g} on a "
                   "probe input): a different gate, activation or combination")
    return layers, spec


# ---------------------------------------------------------------------------------------------------------------
# conv -> BatchNorm -> activation: ConvBnAct modules and stems
# ---------------------------------------------------------------------------------------------------------------


def _check_conv_bn(conv_name: str, conv: nn.Module, bn_name: str, bn: nn.Module, max_in_channels: int | None):
    if type(conv) is not nn.Conv2d:
        raise StemNotFusable(f"{conv_name} is a {type(conv).__name__}, not a Conv2d")
    kh, kw = conv.kernel_size
    if conv.groups != 1 or kh != kw or kh % 2 != 1 or conv.dilation != (1, 1):
        raise StemNotFusable(f"{conv_name} (groups={conv.groups}, kernel_size={conv.kernel_size}, dilation="
                             f"{conv.dilation}) is not a dense convolution with a square odd kernel")
    if conv.padding != (kh // 2, kh // 2) or conv.padding_mode != "zeros":
        raise StemNotFusable(f"{conv_name} has padding {conv.padding} ({conv.padding_mode}), not zeros of {kh // 2}")
    if conv.stride not in ((1, 1), (2, 2)):
        raise StemNotFusable(f"{conv_name} has stride {conv.stride}; the op's is 1 or 2")
    if max_in_channels is not None and conv.in_channels > max_in_channels:
        raise StemNotFusable(f"{conv_name} has {conv.in_channels} input channels; the op's stem kernel takes at most "
                             f"{max_in_channels}")
    if not is_batchnorm(bn) or bn.running_mean is None or bn.running_var is None:
        raise StemNotFusable(f"{bn_name} is not a BatchNorm2d with running statistics")


def conv_bn_act_layout(module: nn.Module) -> bool:
    """Whether ``module`` has exactly the children conv (Conv2d), bn1 (BatchNorm2d) and act1 (an activation of the
    op's set), the ConvBnAct shape; its forward is checked by inspect_conv_bn_act."""
    kids = module._modules
    return (set(kids) == {"conv", "bn1", "act1"} and type(kids["conv"]) is nn.Conv2d
            and is_batchnorm(kids["bn1"]) and activation_name(kids["act1"]) is not None)


def inspect_conv_bn_act(module: nn.Module) -> str:
    """Check that conv2d_act computes the ConvBnAct ``module`` exactly; return its activation's name, or raise
    StemNotFusable. Any width: the op runs wide 1x1 convolutions on its GEMM path and other wide ones on ATen's
    convolution. The probe runs only on the CPU, the one device the op runs on."""
    if not conv_bn_act_layout(module):
        raise StemNotFusable(f"{type(module).__name__} is not a ConvBnAct (children conv, bn1, act1)")
    conv, bn = module.conv, module.bn1
    _check_conv_bn("conv", conv, "bn1", bn, max_in_channels=None)
    act = activation_name(module.act1)
    if conv.weight.device.type == "cpu":
        def expected(x, got):
            w, b = fold_conv_bn(conv.weight, conv.bias, bn)
            return activation(act)(F.conv2d(x, w, b, conv.stride, conv.padding))

        probe(module, (2, conv.in_channels, 9, 11), conv.weight, expected, error=StemNotFusable,
              mismatch="its forward does not compute act1(bn1(conv(x))) (max deviation {err:.3g} on a probe input)")
    return act


def has_hooks(*modules: nn.Module) -> bool:
    """Forward hooks or pre-hooks on any of ``modules``, or global ones."""
    return global_hooks_registered() or any(m._forward_hooks or m._forward_pre_hooks for m in modules)


STEM_MAX_IN_CHANNELS = 4  # the op's small-channel stem kernel


def check_stem(conv: nn.Module, bn: nn.Module, act: nn.Module) -> None:
    """Raise StemNotFusable unless the three are what conv2d_act computes: a plain Conv2d (groups 1, square odd
    kernel, zero padding k//2, stride 1 or 2, no dilation, at most 4 input channels), a BatchNorm2d with running
    statistics, a ReLU; without hooks. Whether the network applies them as act1(bn1(conv_stem(x))) is probed by
    ghostkernels.patch.stem, which installs the fused stem."""
    _check_conv_bn("conv_stem", conv, "bn1", bn, max_in_channels=STEM_MAX_IN_CHANNELS)
    if type(bn) is not nn.BatchNorm2d:
        # The fused stem's bn1 becomes a BatchNorm2d subclass (BatchNormAfterFusedStem), which would train a
        # SyncBatchNorm's statistics per process.
        raise StemNotFusable(f"bn1 is a {type(bn).__name__}, not a BatchNorm2d")
    if type(act) is not nn.ReLU:
        raise StemNotFusable(f"act1 is a {type(act).__name__}, not a ReLU")
    if has_hooks(conv, bn, act):
        raise StemNotFusable("conv_stem, bn1 or act1 has forward hooks, which would see the fused output")


def stem_parents(model: nn.Module):
    """(qualified name, module) of every module of ``model`` with conv_stem, bn1 and act1 children."""
    for name, module in model.named_modules():
        kids = module._modules
        if all(kids.get(k) is not None for k in ("conv_stem", "bn1", "act1")):
            yield name, module


# ---------------------------------------------------------------------------------------------------------------
# Heads and whole GhostNets
# ---------------------------------------------------------------------------------------------------------------


def conv_head_fusable(conv: nn.Module) -> bool:
    """A plain 1x1 Conv2d with a bias (stride 1, no padding, groups 1): linear_act computes it on a pooled input."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is not None)


def classifier_fusable(linear: nn.Module) -> bool:
    """A plain Linear with a bias."""
    return type(linear) is nn.Linear and linear.bias is not None


def head_parents(model: nn.Module):
    """(qualified name, module) of every module of ``model`` with both conv_head and classifier children."""
    for name, module in model.named_modules():
        kids = module._modules
        if kids.get("conv_head") is not None and kids.get("classifier") is not None:
            yield name, module


# The children of a GhostNet (this package's, the official code's, timm's), in forward order.
GHOSTNET_CHILDREN = ("conv_stem", "bn1", "act1", "blocks", "global_pool", "conv_head", "act2", "classifier")


def ghostnet_parents(model: nn.Module):
    """(qualified name, module) of every module of ``model`` with GhostNet's children."""
    for name, module in model.named_modules():
        kids = module._modules
        if all(kids.get(k) is not None for k in GHOSTNET_CHILDREN):
            yield name, module


__all__ = ["BottleneckLayers", "BottleneckSpec", "GHOSTNET_CHILDREN", "GhostSpec", "NotFusableError",
           "STEM_MAX_IN_CHANNELS", "StemNotFusable", "bottleneck_layout", "check_stem", "classifier_fusable",
           "conv_bn_act_layout", "conv_head_fusable", "gate_stages", "ghost_layout", "ghostnet_parents", "has_hooks",
           "head_parents", "inspect_conv_bn_act", "inspect_ghost_bottleneck", "inspect_ghost_module", "probe",
           "probe_tolerance", "probing", "read_bottleneck", "sequential_stage", "stem_parents"]
