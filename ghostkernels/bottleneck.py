"""GhostNet's whole bottleneck as one op: ``FusedGhostBottleneck`` and what ``fuse()`` needs to recognize it.

A GhostBottleneck is ghost1 -> [conv_dw + bn_dw, stride 2] -> [squeeze-excite] -> ghost2, plus a shortcut
(identity, or depthwise conv + BN + 1x1 conv + BN). With only its Ghost modules fused, the rest still runs as about
a dozen eager ops per block; on a CPU, at GhostNet's sizes, those cost more than the fused Ghost modules themselves
(bench/NOTES.md, entry 11). ``FusedGhostBottleneck`` runs the block as ``ghostkernels::ghost_bottleneck`` (one
C++ call: Ghost modules, depthwise convs, squeeze-excite, shortcut and residual add, every BN folded) where that op
applies: CPU tensors, inference (eval mode, nothing that needs a gradient). Everywhere else (training, autograd,
GPU tensors) it runs the block's own forward, whose Ghost modules are FusedGhostModules, so it stays exact in
training (running statistics, drop-path and all) and fast on a GPU.

Recognition is by structure and a probe, as for Ghost modules (ghostkernels.fuse): children ``ghost1`` and
``ghost2`` (Ghost modules; ghost2 without activation), optional ``conv_dw`` (depthwise, stride 2) with ``bn_dw``,
optional ``se`` (``conv_reduce`` and ``conv_expand`` 1x1 convs), and ``shortcut`` (an empty Sequential or
[depthwise conv, BN, 1x1 conv, BN]); then, in eval mode on a small probe input, the block's own forward must equal
the op's math. This package's, the official huawei-noah and timm's GhostBottleneck all pass.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from . import ops
from .modules import FoldCache, FusedGhostModule, Stage, _sequential_stage, checked_backend
from .reference import ghost_bottleneck_reference

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


def _not_fusable(message: str):
    from .fuse import NotFusableError

    return NotFusableError(message)


def _ghost_stages(what: str, module: nn.Module) -> tuple[Stage, Stage, str, int]:
    """(primary, cheap, act, out_channels) of a Ghost module in the primary_conv/cheap_operation layout (fused or
    not); raises NotFusableError when the fused op cannot compute it."""
    from .fuse import NotFusableError, inspect_ghost_module

    if isinstance(module, FusedGhostModule):
        primary, cheap = module._stages()
        return primary, cheap, module.act, module.out_channels
    try:
        spec = inspect_ghost_module(module)
    except NotFusableError as e:
        raise _not_fusable(f"{what} cannot be fused: {e}") from e
    if spec.layout != "sequential":
        raise _not_fusable(f"{what} has the cv1/cv2 layout, not a GhostBottleneck's Ghost module")
    return (_sequential_stage(module.primary_conv), _sequential_stage(module.cheap_operation), spec.act,
            spec.out_channels)


def _check_depthwise(what: str, conv: nn.Module, channels: int, stride: int | None) -> int:
    """The kernel size of a depthwise conv the op can run (odd square kernel, padding k//2, stride 1 or 2)."""
    if type(conv) is not nn.Conv2d:
        raise _not_fusable(f"{what} is a {type(conv).__name__}, not a Conv2d")
    k = conv.kernel_size[0]
    if not (conv.in_channels == conv.out_channels == conv.groups == channels):
        raise _not_fusable(f"{what} is not a depthwise convolution over {channels} channels (in={conv.in_channels}, "
                           f"out={conv.out_channels}, groups={conv.groups})")
    if conv.kernel_size != (k, k) or k % 2 != 1 or conv.padding != (k // 2, k // 2) or conv.padding_mode != "zeros":
        raise _not_fusable(f"{what} has kernel {conv.kernel_size} / padding {conv.padding} ({conv.padding_mode}); "
                           f"the op's depthwise convs are square, odd and zero-padded by k//2")
    if conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1] or conv.stride[0] not in (1, 2) \
            or (stride is not None and conv.stride[0] != stride):
        raise _not_fusable(f"{what} has stride {conv.stride} / dilation {conv.dilation}; expected stride "
                           f"{stride or '1 or 2'} and no dilation")
    return k


def _check_bn(what: str, bn: nn.Module | None) -> nn.BatchNorm2d | None:
    from .fuse import _check_bn as check

    if bn is not None and not isinstance(bn, nn.BatchNorm2d):
        raise _not_fusable(f"{what} is a {type(bn).__name__}, not a BatchNorm2d")
    check(what, bn)
    return bn


def _check_conv1x1(what: str, conv: nn.Module, in_channels: int) -> None:
    if type(conv) is not nn.Conv2d:
        raise _not_fusable(f"{what} is a {type(conv).__name__}, not a Conv2d")
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.groups != 1 \
            or conv.dilation != (1, 1) or conv.in_channels != in_channels:
        raise _not_fusable(f"{what} is not a dense 1x1 convolution over {in_channels} channels")


@dataclasses.dataclass
class _Layers:
    """A bottleneck's layers, read off the module: the stages to fold, in the op's order, and the SE convs."""

    ghost1: tuple[Stage, Stage]
    ghost2: tuple[Stage, Stage]
    dw: Stage | None
    se: tuple[nn.Conv2d, nn.Conv2d] | None
    shortcut: tuple[Stage, Stage] | None

    def stages(self) -> list[Stage]:
        """Every conv the op reads, in the op's order (the SE convs have no BN: folding them passes them through;
        they are here so that the fold cache watches their tensors too)."""
        out = list(self.ghost1)
        if self.dw is not None:
            out.append(self.dw)
        out += self.ghost2
        if self.shortcut is not None:
            out += self.shortcut
        if self.se is not None:
            out += [Stage(conv, None) for conv in self.se]
        return out


def _read_layers(module: nn.Module) -> tuple[_Layers, BottleneckSpec]:
    """The layers of a GhostBottleneck-shaped module and its spec; NotFusableError when the op cannot run it."""
    g1p, g1c, act, mid = _ghost_stages("ghost1", module.ghost1)
    g2p, g2c, act2, out = _ghost_stages("ghost2", module.ghost2)
    if act2 != "identity":
        raise _not_fusable(f"ghost2 has activation {act2}; the op's ghost2 has none (GhostNet's has none)")
    if g2p.conv.in_channels != mid:
        raise _not_fusable(f"ghost2 takes {g2p.conv.in_channels} channels but ghost1 makes {mid}")
    in_channels = g1p.conv.in_channels
    children = {k: v for k, v in module._modules.items() if v is not None}
    extra = sorted(k for k, v in children.items() if k not in _KNOWN_CHILDREN and any(True for _ in v.state_dict()))
    if extra:
        raise _not_fusable(f"it has layers with state besides a GhostBottleneck's: {', '.join(extra)}")

    dw = None
    stride = 1
    conv_dw = children.get("conv_dw")
    if conv_dw is not None:
        _check_depthwise("conv_dw", conv_dw, mid, None)
        stride = conv_dw.stride[0]
        if stride != 2:
            raise _not_fusable(f"conv_dw has stride {stride}; the op runs conv_dw at stride 2 only")
        dw = Stage(conv_dw, _check_bn("bn_dw", children.get("bn_dw")))
    elif children.get("bn_dw") is not None:
        raise _not_fusable("it has bn_dw without conv_dw")

    se = None
    se_mod = children.get("se")
    if se_mod is not None:
        se_children = se_mod._modules
        reduce, expand = se_children.get("conv_reduce"), se_children.get("conv_expand")
        if reduce is None or expand is None:
            raise _not_fusable("its se has no conv_reduce / conv_expand")
        _check_conv1x1("se.conv_reduce", reduce, mid)
        _check_conv1x1("se.conv_expand", expand, reduce.out_channels)
        if expand.out_channels != mid:
            raise _not_fusable(f"se.conv_expand makes {expand.out_channels} channels, not the block's {mid}")
        other = sorted({k.split(".")[0] for k in se_mod.state_dict()} - {"conv_reduce", "conv_expand"})
        if other:
            raise _not_fusable(f"its se has layers with state besides conv_reduce and conv_expand: {', '.join(other)}")
        se = (reduce, expand)

    shortcut = None
    sc = children.get("shortcut")
    layers = list(sc._modules.values()) if type(sc) is nn.Sequential else None
    if layers is None:
        raise _not_fusable(f"its shortcut is a {type(sc).__name__}, not a Sequential")
    if len(layers) == 4:
        _check_depthwise("shortcut[0]", layers[0], in_channels, stride)
        _check_conv1x1("shortcut[2]", layers[2], in_channels)
        if layers[2].out_channels != out:
            raise _not_fusable(f"the shortcut makes {layers[2].out_channels} channels, ghost2 {out}")
        if dw is not None and layers[0].kernel_size != dw.conv.kernel_size:
            raise _not_fusable("the shortcut's depthwise kernel differs from conv_dw's")
        shortcut = (Stage(layers[0], _check_bn("shortcut[1]", layers[1])),
                    Stage(layers[2], _check_bn("shortcut[3]", layers[3])))
    elif layers:
        raise _not_fusable(f"its shortcut has {len(layers)} layers, not 0 (identity) or 4 (depthwise conv, BN, "
                           f"1x1 conv, BN)")
    elif in_channels != out or stride != 1:
        raise _not_fusable(f"its shortcut is the identity but the block maps {in_channels} -> {out} channels at "
                           f"stride {stride}")
    spec = BottleneckSpec(in_channels, mid, out, stride, act)
    return _Layers((g1p, g1c), (g2p, g2c), dw, se, shortcut), spec


def _op_arguments(layers: _Layers, folded) -> dict:
    """The op's weight groups from the folded stages (in _Layers.stages() order) and the SE convs."""
    it = iter(folded)
    take = lambda n: tuple(next(it) for _ in range(n))  # noqa: E731
    ghost1 = take(4)
    dw = take(2) if layers.dw is not None else None
    ghost2 = take(4)
    shortcut = take(4) if layers.shortcut is not None else None
    se = take(4) if layers.se is not None else None
    return dict(ghost1=ghost1, ghost2=ghost2, dw=dw, se=se, shortcut=shortcut)


def inspect_ghost_bottleneck(module: nn.Module) -> BottleneckSpec:
    """Check that ghostkernels::ghost_bottleneck computes ``module`` exactly in eval mode; return its spec, or raise
    NotFusableError (a ValueError) with the reason."""
    from .fuse import _eval_mode

    if not bottleneck_layout(module):
        raise _not_fusable(f"{type(module).__name__} is not a GhostBottleneck (it lacks ghost1, ghost2 or shortcut)")
    layers, spec = _read_layers(module)
    weight = layers.ghost1[0].conv.weight
    if weight.device.type == "meta":
        raise _not_fusable("it is on the meta device, where its forward cannot be checked")
    gen = torch.Generator().manual_seed(0)  # private: fuse() must not consume the global RNG
    x = torch.randn(2, spec.in_channels, 9, 11, generator=gen).to(weight.device, weight.dtype)
    with _eval_mode(module), torch.no_grad():
        try:
            got = module(x)
        except Exception as e:  # whatever the forward raises, the op cannot stand in for it
            raise _not_fusable(f"its forward failed on a [2, C, 9, 11] probe input ({type(e).__name__}: {e})") from e
        args = _op_arguments(layers, FoldCache.fold(layers.stages()))
        want = ghost_bottleneck_reference(x, args["ghost1"], spec.mid_channels, args["ghost2"], spec.out_channels,
                                          spec.act, spec.stride, args["dw"], args["se"], args["shortcut"])
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise _not_fusable(f"its forward returned {shape} on the probe, not the bottleneck's {tuple(want.shape)}")
    err = float((got.float() - want.float()).abs().max())
    tol = 1e-3 if weight.dtype in (torch.float32, torch.float64) else 6e-2
    if not err <= tol * max(1.0, float(want.abs().max())):
        raise _not_fusable(f"its forward does not compute a GhostBottleneck from its layers (max deviation "
                           f"{err:.3g} on a probe input): a different gate, activation or combination")
    return spec


class FusedGhostBottleneck(nn.Module):
    """GhostBottleneck (official constructor) whose inference on CPU tensors is one ghostkernels::ghost_bottleneck
    call; see the module docstring for when it runs the op and when the block's own forward.

    Same children, parameters, buffers and state_dict keys as the block it stands for (``ghost1``, ``conv_dw``,
    ``bn_dw``, ``se``, ``ghost2``, ``shortcut``), its Ghost modules being FusedGhostModules. Build one with the
    official arguments, or with ``FusedGhostBottleneck.from_module(block)`` (which shares the block's layers).
    ``backend`` is the Ghost modules' backend; the whole-block op runs where it is "auto" or "cpu".
    """

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1,
                 act_layer: type[nn.Module] = nn.ReLU, se_ratio: float = 0.0, *, backend: str = "auto"):
        super().__init__()
        from .models import GhostBottleneck

        block = GhostBottleneck(in_chs, mid_chs, out_chs, dw_kernel_size, stride, act_layer, se_ratio)
        fused = {name: FusedGhostModule.from_module(block._modules[name], backend=backend)
                 for name in ("ghost1", "ghost2")}
        block._modules.update(fused)  # the block is private here: its own forward gets the fused Ghost modules
        self._adopt(block, backend, fused)

    @classmethod
    def from_module(cls, module: nn.Module, *, backend: str = "auto") -> "FusedGhostBottleneck":
        """A FusedGhostBottleneck sharing ``module``'s layers (the same Parameter and buffer objects); ``module``
        itself is not changed, and its forward is what runs outside the op (training, autograd, GPU): fuse its
        Ghost modules first, or use ``ghostkernels.fuse``, which does both, for that to be fast too. Raises
        NotFusableError (ValueError) when the op cannot compute ``module``. The training flag is copied."""
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused._adopt(module, backend)
        return fused

    def _adopt(self, block: nn.Module, backend: str, fused_ghosts: dict | None = None) -> None:
        """Take ``block``'s layers; ``fused_ghosts`` may give the FusedGhostModules that stand for its ghost1/ghost2
        (fuse() passes the ones it installs in the block), others are made here."""
        spec = inspect_ghost_bottleneck(block)
        # The block's children in the block's order (so the state_dict lists its keys in the same order), its
        # Ghost modules as FusedGhostModules.
        for name, child in block._modules.items():
            if name in ("ghost1", "ghost2"):
                child = (fused_ghosts or {}).get(name, child)
                if not isinstance(child, FusedGhostModule):
                    child = FusedGhostModule.from_module(child, backend=backend)
            self._modules[name] = child
        # The block runs whatever the op does not; a plain attribute, so its layers are not registered twice.
        object.__setattr__(self, "_block", block)
        self.spec = spec
        self.backend = backend
        self.training = block.training
        self._fold_cache = FoldCache()
        self._layers, _ = _read_layers(self)
        self._stages = self._layers.stages()
        self._bns = [st.bn for st in self._stages if st.bn is not None]
        self._args, self._args_of = None, None
        ops.load_library()

    @property
    def stride(self) -> int:
        return self.spec.stride

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        """Also the backend of its two FusedGhostModules."""
        value = checked_backend("FusedGhostBottleneck", value)
        self.ghost1.backend = value
        self.ghost2.backend = value
        self._backend = value

    def _op_applies(self, x: torch.Tensor) -> bool:
        if self.training or x.device.type != "cpu" or self._backend not in ("auto", "cpu"):
            return False
        if any(bn.training for bn in self._bns):  # a BN normalizing with batch statistics
            return False
        if torch.is_grad_enabled():
            if x.requires_grad or any(p.requires_grad for p in self.parameters()):
                return False
        return True

    def _op_args(self) -> list:
        """The op's arguments after x, from the folded weights (cached with them, except while compiling or
        exporting: the fold is traced then, and attributes must not be assigned)."""
        folded = self._fold_cache.get(self._stages)
        compiling = torch.compiler.is_compiling()
        if not compiling and self._args_of is folded:
            return self._args
        a, s = _op_arguments(self._layers, folded), self.spec
        none2, none4 = (None,) * 2, (None,) * 4
        args = [*a["ghost1"], s.mid_channels, s.act, *(a["dw"] or none2), s.stride, *(a["se"] or none4),
                *a["ghost2"], s.out_channels, *(a["shortcut"] or none4)]
        if not compiling:
            self._args, self._args_of = args, folded
        return args

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._op_applies(x):
            if torch.is_autocast_enabled("cpu"):
                s, a = self.spec, _op_arguments(self._layers, self._fold_cache.get(self._stages))
                return ops.ghost_bottleneck(x, a["ghost1"], s.mid_channels, a["ghost2"], s.out_channels, act=s.act,
                                            stride=s.stride, dw=a["dw"], se=a["se"], shortcut=a["shortcut"],
                                            backend="cpu")
            # The op directly: ops.ghost_bottleneck's argument handling is a tenth of a 7x7 block's time at batch 1.
            return torch.ops.ghostkernels.ghost_bottleneck.default(x, *self._op_args())
        block = self._block
        block.training = self.training
        return block(x)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{s.in_channels}->{s.mid_channels}->{s.out_channels}, stride={s.stride}, act={s.act!r}, "
                f"backend={self.backend!r}")


__all__ = ["BottleneckSpec", "FusedGhostBottleneck", "bottleneck_layout", "inspect_ghost_bottleneck"]
