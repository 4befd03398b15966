"""Reference GhostNet (arXiv 1911.11907) and GhostNetV2 (arXiv 2211.12905) in plain PyTorch: the eager baselines
that the fused kernels replace.

Module, parameter and buffer names are those of the official huawei-noah code (ghostnet_pytorch/ghostnet.py) and
of timm's ``ghostnet_050/100/130``, so their state_dicts load here with ``strict=True`` and give the same logits:
``conv_stem``, ``bn1``, ``blocks.{stage}.{block}.ghost1.primary_conv.{0,1}``, ``...cheap_operation.{0,1}``,
``...conv_dw``, ``...bn_dw``, ``...se.conv_reduce``, ``...se.conv_expand``, ``...ghost2.*``, ``...shortcut.{0..3}``,
``blocks.9.0.{conv,bn1}``, ``conv_head``, ``classifier``. GhostNetV2 (``ghostnetv2_100/130/160``, timm's names) is
the same network whose bottlenecks after the first two gate ghost1 with the DFC attention branch
``...ghost1.short_conv.{0..5}`` (GhostModuleV2). timm itself could not be installed where this was written (it needs
torchvision, which has no build for the torch used), so the V2 logits were matched against the tests' independent
replicas (tests/variants.py), not against timm.

Nothing in this file needs the op library: it imports and runs anywhere torch does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The paper's table: one list per stage, rows [dw kernel k, expansion (mid) channels, out channels, SE ratio,
# stride]; channel counts are scaled by the width multiplier and rounded by make_divisible(v, 4).
GHOSTNET_CFGS = (
    ((3, 16, 16, 0.0, 1),),
    ((3, 48, 24, 0.0, 2),),
    ((3, 72, 24, 0.0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0.0, 2),),
    ((3, 200, 80, 0.0, 1), (3, 184, 80, 0.0, 1), (3, 184, 80, 0.0, 1), (3, 480, 112, 0.25, 1),
     (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2),),
    ((5, 960, 160, 0.0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0.0, 1), (5, 960, 160, 0.25, 1)),
)


def make_divisible(v: float, divisor: int = 4, min_value: int | None = None) -> int:
    """Round v to the nearest multiple of divisor (at least min_value, default divisor), never more than 10% down."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """relu6(x + 3) / 6: the SE gate of GhostNet (and of timm's 'hard_sigmoid')."""
    return F.relu6(x + 3.0) / 6.0


def _check_positive_int(owner: str, **values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{owner}: {name} must be a positive int, got {v!r}")


class GhostModule(nn.Module):
    """The Ghost module: ``cat(x1, x2)[:, :oup]`` with

        x1 = act(BN(conv_kxk(x)))                  init_channels = ceil(oup / ratio) channels (the primary conv)
        x2 = act(BN(depthwise_dw_size(x1)))        new_channels = init_channels * (ratio - 1) channels (cheap)

    Cheap channel j reads primary channel j // (ratio - 1). ``relu=True`` puts ``nn.ReLU(inplace=True)`` at index 2
    of both Sequentials, ``relu=False`` an empty ``nn.Sequential()`` (no activation, no state_dict keys), exactly as
    the official code. ``kernel_size`` and ``stride`` apply to the primary conv only (padding kernel_size // 2).
    """

    def __init__(self, inp: int, oup: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3, stride: int = 1,
                 relu: bool = True):
        super().__init__()
        _check_positive_int("GhostModule", inp=inp, oup=oup, kernel_size=kernel_size, dw_size=dw_size,
                            stride=stride)
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 2:
            raise ValueError(f"GhostModule: ratio must be an int >= 2 (ratio - 1 cheap channels per primary "
                             f"channel), got {ratio!r}")
        self.oup = oup
        self.init_channels = init_channels = math.ceil(oup / ratio)
        self.new_channels = new_channels = init_channels * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(inp, init_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(init_channels),
            nn.ReLU(inplace=True) if relu else nn.Sequential(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_channels, new_channels, dw_size, 1, dw_size // 2, groups=init_channels, bias=False),
            nn.BatchNorm2d(new_channels),
            nn.ReLU(inplace=True) if relu else nn.Sequential(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        return torch.cat([x1, x2], dim=1)[:, :self.oup]


class GhostModuleV2(GhostModule):
    """GhostNetV2's gated Ghost module (timm's GhostModuleV2; the official code's GhostModuleV2 in mode 'attn'):
    GhostModule's ``cat(x1, x2)[:, :oup]`` multiplied by the DFC attention map

        sigmoid(short_conv(avg_pool2d(x, 2, 2)))       nearest-upsampled to the output's size (F.interpolate)

    with ``short_conv`` = Conv2d 1x1 (inp -> oup, kernel_size and stride of the primary conv) -> BN -> depthwise
    (1, 5) conv -> BN -> depthwise (5, 1) conv -> BN. avg_pool2d floors odd sizes (7x7 pools to 3x3), so the map's
    rows are upsampled by PyTorch's index formula (rows 0, 0, 0, 1, 1, 2, 2)."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3, stride: int = 1,
                 relu: bool = True):
        super().__init__(inp, oup, kernel_size, ratio, dw_size, stride, relu)
        self.gate_fn = nn.Sigmoid()
        self.short_conv = nn.Sequential(
            nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(oup),
            nn.Conv2d(oup, oup, kernel_size=(1, 5), stride=1, padding=(0, 2), groups=oup, bias=False),
            nn.BatchNorm2d(oup),
            nn.Conv2d(oup, oup, kernel_size=(5, 1), stride=1, padding=(2, 0), groups=oup, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.short_conv(F.avg_pool2d(x, kernel_size=2, stride=2))
        out = super().forward(x)
        return out * F.interpolate(self.gate_fn(res), size=(out.shape[-2], out.shape[-1]), mode="nearest")


class SqueezeExcite(nn.Module):
    """x * hard_sigmoid(conv_expand(relu(conv_reduce(avg_pool(x))))), reduced to make_divisible(C * se_ratio)."""

    def __init__(self, in_chs: int, se_ratio: float = 0.25, reduced_base_chs: int | None = None,
                 act_layer: type[nn.Module] = nn.ReLU, gate_fn=hard_sigmoid, divisor: int = 4):
        super().__init__()
        self.gate_fn = gate_fn
        reduced_chs = make_divisible((reduced_base_chs or in_chs) * se_ratio, divisor)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(in_chs, reduced_chs, 1, bias=True)
        self.act1 = act_layer(inplace=True)
        self.conv_expand = nn.Conv2d(reduced_chs, in_chs, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = self.conv_expand(self.act1(self.conv_reduce(self.avg_pool(x))))
        return x * self.gate_fn(x_se)


class ConvBnAct(nn.Module):
    """conv (kxk, padding k // 2, no bias) -> bn1 -> act1: the network's last stage."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1,
                 act_layer: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv(x)))


class GhostBottleneck(nn.Module):
    """ghost1 (ReLU) -> [conv_dw kxk stride s + bn_dw, when s > 1] -> [se] -> ghost2 (no activation), plus the
    shortcut (identity, or depthwise kxk stride s + BN + 1x1 conv + BN when the shape changes); no activation after
    the sum. ``mode='attn'`` (GhostNetV2, as timm names it): ghost1 is a GhostModuleV2 (DFC-gated)."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1,
                 act_layer: type[nn.Module] = nn.ReLU, se_ratio: float = 0.0, mode: str = "original"):
        super().__init__()
        if mode not in ("original", "attn"):
            raise ValueError(f"GhostBottleneck: mode must be 'original' or 'attn', got {mode!r}")
        self.stride = stride
        self.ghost1 = (GhostModuleV2 if mode == "attn" else GhostModule)(in_chs, mid_chs, relu=True)
        if stride > 1:
            self.conv_dw = nn.Conv2d(mid_chs, mid_chs, dw_kernel_size, stride=stride,
                                     padding=(dw_kernel_size - 1) // 2, groups=mid_chs, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        else:
            self.conv_dw = None
            self.bn_dw = None
        self.se = SqueezeExcite(mid_chs, se_ratio=se_ratio, act_layer=act_layer) if se_ratio > 0 else None
        self.ghost2 = GhostModule(mid_chs, out_chs, relu=False)
        if in_chs == out_chs and stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, in_chs, dw_kernel_size, stride=stride, padding=(dw_kernel_size - 1) // 2,
                          groups=in_chs, bias=False),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.ghost1(x)
        if self.conv_dw is not None:
            x = self.bn_dw(self.conv_dw(x))
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        return x + self.shortcut(residual)


class GhostNet(nn.Module):
    """GhostNet: stem (3x3 stride 2 conv, bn1, ReLU), one Sequential of GhostBottlenecks per row group of ``cfgs``,
    a final ConvBnAct 1x1 stage, then global average pool -> conv_head (1x1 to 1280, bias, no BN) -> ReLU ->
    flatten -> dropout (training only) -> classifier. ``version='v2'``: GhostNetV2, every bottleneck after the
    first two (counted over all stages, from 0: layer index > 1, as timm and the official code build it) in mode
    'attn'."""

    def __init__(self, cfgs=GHOSTNET_CFGS, num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2,
                 version: str = "v1"):
        super().__init__()
        _check_positive_int("GhostNet", num_classes=num_classes)
        if version not in ("v1", "v2"):
            raise ValueError(f"GhostNet: version must be 'v1' or 'v2', got {version!r}")
        if not width > 0:
            raise ValueError(f"GhostNet: width must be > 0, got {width!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"GhostNet: dropout must be in [0, 1), got {dropout!r}")
        self.cfgs = cfgs
        self.dropout = dropout

        channels = make_divisible(16 * width, 4)
        self.conv_stem = nn.Conv2d(3, channels, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU(inplace=True)

        stages = []
        exp_size = None
        layer_idx = 0
        for cfg in cfgs:
            layers = []
            for k, exp_size, c, se_ratio, s in cfg:
                out_chs = make_divisible(c * width, 4)
                mid_chs = make_divisible(exp_size * width, 4)
                mode = "attn" if version == "v2" and layer_idx > 1 else "original"
                layers.append(GhostBottleneck(channels, mid_chs, out_chs, k, s, se_ratio=se_ratio, mode=mode))
                channels = out_chs
                layer_idx += 1
            stages.append(nn.Sequential(*layers))
        if exp_size is None:
            raise ValueError("GhostNet: cfgs is empty")
        last = make_divisible(exp_size * width, 4)
        stages.append(nn.Sequential(ConvBnAct(channels, last, 1)))
        self.blocks = nn.Sequential(*stages)

        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.conv_head = nn.Conv2d(last, 1280, 1, 1, 0, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        x = self.act2(self.conv_head(self.global_pool(x)))
        x = x.flatten(1)
        if self.dropout > 0.0:
            x = F.dropout(x, p=self.dropout, training=self.training)
        return self.classifier(x)


def ghostnet_050(num_classes: int = 1000, **kwargs) -> GhostNet:
    """GhostNet 0.5x: 2,587,292 parameters with 1000 classes."""
    return GhostNet(GHOSTNET_CFGS, num_classes=num_classes, width=0.5, **kwargs)


def ghostnet_100(num_classes: int = 1000, **kwargs) -> GhostNet:
    """GhostNet 1.0x: 5,182,508 parameters with 1000 classes."""
    return GhostNet(GHOSTNET_CFGS, num_classes=num_classes, width=1.0, **kwargs)


def ghostnet_130(num_classes: int = 1000, **kwargs) -> GhostNet:
    """GhostNet 1.3x: 7,358,820 parameters with 1000 classes."""
    return GhostNet(GHOSTNET_CFGS, num_classes=num_classes, width=1.3, **kwargs)


def ghostnetv2_100(num_classes: int = 1000, **kwargs) -> GhostNet:
    """GhostNetV2 1.0x (timm's ghostnetv2_100): 14 of its 16 bottlenecks gate ghost1."""
    return GhostNet(GHOSTNET_CFGS, num_classes=num_classes, width=1.0, version="v2", **kwargs)


def ghostnetv2_130(num_classes: int = 1000, **kwargs) -> GhostNet:
    """GhostNetV2 1.3x (timm's ghostnetv2_130)."""
    return GhostNet(GHOSTNET_CFGS, num_classes=num_classes, width=1.3, version="v2", **kwargs)


def ghostnetv2_160(num_classes: int = 1000, **kwargs) -> GhostNet:
    """GhostNetV2 1.6x (timm's ghostnetv2_160)."""
    return GhostNet(GHOSTNET_CFGS, num_classes=num_classes, width=1.6, version="v2", **kwargs)


__all__ = ["GHOSTNET_CFGS", "ConvBnAct", "GhostBottleneck", "GhostModule", "GhostModuleV2", "GhostNet",
           "SqueezeExcite", "ghostnet_050", "ghostnet_100", "ghostnet_130", "ghostnetv2_100", "ghostnetv2_130",
           "ghostnetv2_160", "hard_sigmoid", "make_divisible"]
