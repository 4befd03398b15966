"""Structural replicas of the Ghost modules that ghostkernels.fuse must recognize (or refuse), for the tests.

timm needs torchvision (which has no build for the torch here) and Ultralytics pulls in a large dependency tree,
so the tests build these look-alikes instead: the same child names, layer types, constructor defaults and forward
computations as the originals (huawei-noah ghostnet_pytorch/ghostnet.py, the official GhostNetV2 code, timm 1.0's
timm/models/ghostnet.py and ultralytics/nn/modules/conv.py). Written for these tests, not copied. Class names
deliberately differ from the originals' (fuse() must not look at names).

Also here: independent transcriptions of the official GhostNet and of timm's GhostNetV2 (to check that
ghostkernels.models uses the same state_dict keys and computes the same logits), timm GhostNetV3's reparameterized
bottleneck as recalled (conv_dw with a bias, bn_dw an Identity; written from memory of timm 1.0's ghostnet.py, which
could not be installed here to check), and negative cases that look like Ghost modules but are not
(GSConv's channel shuffle, a residual Bottleneck with a depthwise cv2); small_ghostnet builds the whole networks the
tests of fuse()'s stem and head steps run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------------------------
# Official huawei-noah code (GhostNet and GhostNetV2)
# ---------------------------------------------------------------------------------------------------------------


class OfficialGhost(nn.Module):
    """huawei-noah GhostModule: ReLU(inplace) or an empty Sequential at index 2; slices to oup."""

    def __init__(self, inp, oup, kernel_size=1, ratio=2, dw_size=3, stride=1, relu=True):
        super().__init__()
        self.oup = oup
        init_channels = math.ceil(oup / ratio)
        new_channels = init_channels * (ratio - 1)
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

    def forward(self, x):
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, :self.oup, :, :]


def _gate_branch(inp, oup, kernel_size, stride):
    """The DFC attention branch of GhostNetV2: conv+BN, depthwise (1,5)+BN, depthwise (5,1)+BN."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.Conv2d(oup, oup, kernel_size=(1, 5), stride=1, padding=(0, 2), groups=oup, bias=False),
        nn.BatchNorm2d(oup),
        nn.Conv2d(oup, oup, kernel_size=(5, 1), stride=1, padding=(2, 0), groups=oup, bias=False),
        nn.BatchNorm2d(oup),
    )


class OfficialGhostV2(nn.Module):
    """Official GhostModuleV2: mode 'original' is GhostModule; mode 'attn' multiplies the output by
    sigmoid(short_conv(avg_pool2x2(x))), upsampled (nearest). timm's GhostModuleV2 is the 'attn' form."""

    def __init__(self, inp, oup, kernel_size=1, ratio=2, dw_size=3, stride=1, relu=True, mode=None):
        super().__init__()
        self.mode = mode
        self.gate_fn = nn.Sigmoid()
        self.oup = oup
        init_channels = math.ceil(oup / ratio)
        new_channels = init_channels * (ratio - 1)
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
        if mode == "attn":
            self.short_conv = _gate_branch(inp, oup, kernel_size, stride)

    def forward(self, x):
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        if self.mode == "original":
            return out[:, :self.oup, :, :]
        res = self.short_conv(F.avg_pool2d(x, kernel_size=2, stride=2))
        return out[:, :self.oup, :, :] * F.interpolate(self.gate_fn(res), size=(out.shape[-2], out.shape[-1]),
                                                      mode="nearest")


class TanhGatedGhost(OfficialGhostV2):
    """GhostModuleV2 with a tanh where the sigmoid belongs: the gate's layers look right, the forward does not.
    Must NOT be fused (the probe has to catch it: gate_fn has no state)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, mode="attn", **kwargs)
        self.gate_fn = nn.Tanh()


# ---------------------------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------------------------


class TimmStyleGhost(nn.Module):
    """timm 1.0 GhostModule: act_layer(inplace=True) (nn.ReLU, or nn.Identity for ghost2); slices to out_chs."""

    def __init__(self, in_chs, out_chs, kernel_size=1, ratio=2, dw_size=3, stride=1, act_layer=nn.ReLU):
        super().__init__()
        self.out_chs = out_chs
        init_chs = math.ceil(out_chs / ratio)
        new_chs = init_chs * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_chs, init_chs, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(init_chs),
            act_layer(inplace=True),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_chs, new_chs, dw_size, 1, dw_size // 2, groups=init_chs, bias=False),
            nn.BatchNorm2d(new_chs),
            act_layer(inplace=True),
        )

    def forward(self, x):
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, :self.out_chs, :, :]


class TimmStyleGhostV2(TimmStyleGhost):
    """timm's GhostModuleV2 (GhostNetV2's gated module): TimmStyleGhost's layers plus short_conv and gate_fn; the
    output, sliced to out_chs, times the nearest-upsampled sigmoid of short_conv(avg_pool2d(x, 2, 2))."""

    def __init__(self, in_chs, out_chs, kernel_size=1, ratio=2, dw_size=3, stride=1, use_act=True,
                 act_layer=nn.ReLU):
        super().__init__(in_chs, out_chs, kernel_size, ratio, dw_size, stride,
                         act_layer=act_layer if use_act else nn.Identity)
        self.gate_fn = nn.Sigmoid()
        self.short_conv = _gate_branch(in_chs, out_chs, kernel_size, stride)

    def forward(self, x):
        res = self.short_conv(F.avg_pool2d(x, kernel_size=2, stride=2))
        out = super().forward(x)
        return out * F.interpolate(self.gate_fn(res), size=(out.shape[-2], out.shape[-1]), mode="nearest")


class TimmStyleGhostUseAct(TimmStyleGhost):
    """timm 0.9's GhostModule: ``use_act`` picks act_layer or nn.Identity."""

    def __init__(self, in_chs, out_chs, kernel_size=1, ratio=2, dw_size=3, stride=1, use_act=True,
                 act_layer=nn.ReLU):
        super().__init__(in_chs, out_chs, kernel_size, ratio, dw_size, stride,
                         act_layer=act_layer if use_act else nn.Identity)


class _ConvBn(nn.Module):
    """timm's ConvBnAct with act_layer=None as GhostModuleV3 uses it: conv, then bn1 (no activation)."""

    def __init__(self, in_chs, out_chs, kernel_size, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, 1, kernel_size // 2, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)

    def forward(self, x):
        return self.bn1(self.conv(x))


def _fold(kernel, bn):
    std = (bn.running_var + bn.eps).sqrt()
    return kernel * (bn.weight / std).reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * bn.weight / std


class TimmStyleGhostV3(nn.Module):
    """timm GhostModuleV3 (GhostNetV3): re-parameterizable branches while training, ``reparameterize()`` turns
    them into primary_conv = Sequential(Conv2d with bias, act) and cheap_operation = Sequential(depthwise Conv2d
    with bias, act). Mode 'original' returns cat(x1, x2) WITHOUT the slice to out_chs; mode 'shortcut' slices and
    multiplies by the V2-style gate.

    Branches as in timm: primary = sum of ``num_conv_branches`` conv-BN branches (no scale, no skip branch);
    cheap = 1x1 conv-BN scale branch + BN skip branch + the conv-BN branches, all depthwise.
    """

    def __init__(self, in_chs, out_chs, kernel_size=1, ratio=2, dw_size=3, stride=1, act_layer=nn.ReLU,
                 mode="original", num_conv_branches=3):
        super().__init__()
        assert stride == 1
        self.gate_fn = nn.Sigmoid()
        self.out_chs = out_chs
        init_chs = math.ceil(out_chs / ratio)
        new_chs = init_chs * (ratio - 1)
        self.mode = mode
        self.num_conv_branches = num_conv_branches
        self.infer_mode = False
        self.primary_conv = nn.Identity()
        self.cheap_operation = nn.Identity()
        self.primary_rpr_conv = nn.ModuleList(
            [_ConvBn(in_chs, init_chs, kernel_size) for _ in range(num_conv_branches)])
        self.primary_activation = act_layer(inplace=True)
        self.cheap_rpr_skip = nn.BatchNorm2d(init_chs) if new_chs == init_chs else None
        self.cheap_rpr_conv = nn.ModuleList(
            [_ConvBn(init_chs, new_chs, dw_size, groups=init_chs) for _ in range(num_conv_branches)])
        self.cheap_rpr_scale = _ConvBn(init_chs, new_chs, 1, groups=init_chs)
        self.cheap_activation = act_layer(inplace=True)
        self.short_conv = (_gate_branch(in_chs, out_chs, kernel_size, stride) if mode == "shortcut"
                           else nn.Identity())
        self.dw_size = dw_size

    def forward(self, x):
        if self.infer_mode:
            x1 = self.primary_conv(x)
            x2 = self.cheap_operation(x1)
        else:
            x1 = sum(branch(x) for branch in self.primary_rpr_conv)
            x1 = self.primary_activation(x1)
            x2 = self.cheap_rpr_scale(x1)
            if self.cheap_rpr_skip is not None:
                x2 = x2 + self.cheap_rpr_skip(x1)
            for branch in self.cheap_rpr_conv:
                x2 = x2 + branch(x1)
            x2 = self.cheap_activation(x2)
        out = torch.cat([x1, x2], dim=1)
        if self.mode != "shortcut":
            return out
        res = self.short_conv(F.avg_pool2d(x, kernel_size=2, stride=2))
        return out[:, :self.out_chs] * F.interpolate(self.gate_fn(res), size=out.shape[-2:], mode="nearest")

    @torch.no_grad()
    def reparameterize(self):
        if self.infer_mode:
            return
        first = self.primary_rpr_conv[0].conv
        w1 = sum(_fold(b.conv.weight, b.bn1)[0] for b in self.primary_rpr_conv)
        b1 = sum(_fold(b.conv.weight, b.bn1)[1] for b in self.primary_rpr_conv)
        primary = nn.Conv2d(first.in_channels, first.out_channels, first.kernel_size, first.stride, first.padding,
                            bias=True)
        primary.weight.copy_(w1)
        primary.bias.copy_(b1)

        k, pad = self.dw_size, self.dw_size // 2
        cheap_first = self.cheap_rpr_conv[0].conv
        ws, bs = _fold(self.cheap_rpr_scale.conv.weight, self.cheap_rpr_scale.bn1)
        w2, b2 = F.pad(ws, [pad, pad, pad, pad]), bs
        if self.cheap_rpr_skip is not None:
            identity = torch.zeros_like(w2)
            identity[:, 0, pad, pad] = 1.0
            wi, bi = _fold(identity, self.cheap_rpr_skip)
            w2, b2 = w2 + wi, b2 + bi
        for branch in self.cheap_rpr_conv:
            wb, bb = _fold(branch.conv.weight, branch.bn1)
            w2, b2 = w2 + wb, b2 + bb
        cheap = nn.Conv2d(cheap_first.in_channels, cheap_first.out_channels, k, 1, pad,
                          groups=cheap_first.groups, bias=True)
        cheap.weight.copy_(w2)
        cheap.bias.copy_(b2)

        self.primary_conv = nn.Sequential(primary, self.primary_activation)
        self.cheap_operation = nn.Sequential(cheap, self.cheap_activation)
        for name in ("primary_rpr_conv", "cheap_rpr_conv", "cheap_rpr_scale", "cheap_rpr_skip"):
            delattr(self, name)
        self.infer_mode = True


# ---------------------------------------------------------------------------------------------------------------
# Ultralytics
# ---------------------------------------------------------------------------------------------------------------


class ULConv(nn.Module):
    """Ultralytics Conv: conv (no bias, 'same' padding) -> bn -> act; SiLU by default, a shared class instance."""

    default_act = nn.SiLU()

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        p = d * (k - 1) // 2 if p is None else p
        self.conv = nn.Conv2d(c1, c2, k, s, p, groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = self.default_act if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        return self.act(self.conv(x))


class ULGhostConv(nn.Module):
    """Ultralytics GhostConv: y = cv1(x) on c2 // 2 channels, output cat(y, cv2(y)) with a 5x5 depthwise cv2."""

    def __init__(self, c1, c2, k=1, s=1, g=1, act=True):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = ULConv(c1, c_, k, s, None, g, act=act)
        self.cv2 = ULConv(c_, c_, 5, 1, None, c_, act=act)

    def forward(self, x):
        y = self.cv1(x)
        return torch.cat((y, self.cv2(y)), 1)


@torch.no_grad()
def ultralytics_fuse(model: nn.Module) -> nn.Module:
    """What Ultralytics' BaseModel.fuse() does to every Conv: fold bn into a conv with bias, delete bn, and switch
    the instance's forward to forward_fuse."""
    for m in model.modules():
        if isinstance(m, ULConv) and hasattr(m, "bn"):
            conv, bn = m.conv, m.bn
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              dilation=conv.dilation, groups=conv.groups, bias=True).requires_grad_(False)
            std = (bn.running_var + bn.eps).sqrt()
            fused.weight.copy_(conv.weight * (bn.weight / std).reshape(-1, 1, 1, 1))
            fused.bias.copy_(bn.bias - bn.running_mean * bn.weight / std)
            m.conv = fused
            delattr(m, "bn")
            m.forward = m.forward_fuse
    return model


class GSConvLike(nn.Module):
    """GSConv (slim-neck): GhostConv's layers, but the output channels are shuffled. Must NOT be fused."""

    def __init__(self, c1, c2):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = ULConv(c1, c_, 1, 1)
        self.cv2 = ULConv(c_, c_, 5, 1, None, c_)

    def forward(self, x):
        x1 = self.cv1(x)
        x2 = torch.cat((x1, self.cv2(x1)), 1)
        b, n, h, w = x2.shape
        y = x2.reshape(b * n // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, n // 2, h, w)
        return torch.cat((y[0], y[1]), 1)


class DepthwiseResidualBottleneck(nn.Module):
    """Ultralytics Bottleneck with g = c_: cv2 is depthwise over cv1's output, but the forward adds a residual."""

    def __init__(self, c):
        super().__init__()
        self.cv1 = ULConv(c, c, 1, 1)
        self.cv2 = ULConv(c, c, 3, 1, g=c)
        self.add = True

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


# ---------------------------------------------------------------------------------------------------------------
# The official GhostNet, transcribed independently of ghostkernels.models
# ---------------------------------------------------------------------------------------------------------------


def _make_divisible(v, divisor=4):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class _OfficialSE(nn.Module):
    def __init__(self, in_chs, se_ratio=0.25):
        super().__init__()
        reduced = _make_divisible(in_chs * se_ratio, 4)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(in_chs, reduced, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, in_chs, 1, bias=True)

    def forward(self, x):
        s = self.conv_expand(self.act1(self.conv_reduce(self.avg_pool(x))))
        return x * (F.relu6(s + 3.0) / 6.0)


class _OfficialConvBnAct(nn.Module):
    def __init__(self, in_chs, out_chs, kernel_size):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, 1, kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act1(self.bn1(self.conv(x)))


class _OfficialBottleneck(nn.Module):
    def __init__(self, in_chs, mid_chs, out_chs, k, stride, se_ratio):
        super().__init__()
        self.stride = stride
        self.ghost1 = OfficialGhost(in_chs, mid_chs, relu=True)
        if stride > 1:
            self.conv_dw = nn.Conv2d(mid_chs, mid_chs, k, stride, (k - 1) // 2, groups=mid_chs, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        self.se = _OfficialSE(mid_chs, se_ratio) if se_ratio > 0 else None
        self.ghost2 = OfficialGhost(mid_chs, out_chs, relu=False)
        if in_chs == out_chs and stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, in_chs, k, stride, (k - 1) // 2, groups=in_chs, bias=False),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x):
        residual = x
        x = self.ghost1(x)
        if self.stride > 1:
            x = self.bn_dw(self.conv_dw(x))
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        x += self.shortcut(residual)
        return x


OFFICIAL_CFGS = [
    [[3, 16, 16, 0, 1]], [[3, 48, 24, 0, 2]], [[3, 72, 24, 0, 1]], [[5, 72, 40, 0.25, 2]], [[5, 120, 40, 0.25, 1]],
    [[3, 240, 80, 0, 2]],
    [[3, 200, 80, 0, 1], [3, 184, 80, 0, 1], [3, 184, 80, 0, 1], [3, 480, 112, 0.25, 1], [3, 672, 112, 0.25, 1]],
    [[5, 672, 160, 0.25, 2]],
    [[5, 960, 160, 0, 1], [5, 960, 160, 0.25, 1], [5, 960, 160, 0, 1], [5, 960, 160, 0.25, 1]],
]


class OfficialGhostNetReplica(nn.Module):
    def __init__(self, num_classes=1000, width=1.0, dropout=0.2):
        super().__init__()
        self.dropout = dropout
        c = _make_divisible(16 * width)
        self.conv_stem = nn.Conv2d(3, c, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.act1 = nn.ReLU(inplace=True)
        stages, layer_idx = [], 0
        for cfg in OFFICIAL_CFGS:
            layers = []
            for k, exp_size, out, se_ratio, s in cfg:
                o, h = _make_divisible(out * width), _make_divisible(exp_size * width)
                layers.append(self.make_block(layer_idx, c, h, o, k, s, se_ratio))
                c = o
                layer_idx += 1
            stages.append(nn.Sequential(*layers))
        last = _make_divisible(exp_size * width)
        stages.append(nn.Sequential(_OfficialConvBnAct(c, last, 1)))
        self.blocks = nn.Sequential(*stages)
        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.conv_head = nn.Conv2d(last, 1280, 1, 1, 0, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(1280, num_classes)

    def make_block(self, layer_idx, in_chs, mid_chs, out_chs, k, stride, se_ratio):
        return _OfficialBottleneck(in_chs, mid_chs, out_chs, k, stride, se_ratio)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        x = self.act2(self.conv_head(self.global_pool(x)))
        x = x.view(x.size(0), -1)
        if self.dropout > 0.0:
            x = F.dropout(x, p=self.dropout, training=self.training)
        return self.classifier(x)


# ---------------------------------------------------------------------------------------------------------------
# Bottlenecks: timm's (drop-path, a gate module in its squeeze-excite) and one fuse() must refuse
# ---------------------------------------------------------------------------------------------------------------


class _HardSigmoidGate(nn.Module):
    def forward(self, x):
        return F.relu6(x + 3.0) / 6.0


class _TimmStyleSE(nn.Module):
    """timm's SqueezeExcite (efficientnet_blocks): mean -> conv_reduce -> act1 -> conv_expand -> gate module."""

    def __init__(self, in_chs, rd_ratio=0.25, gate=_HardSigmoidGate):
        super().__init__()
        rd = _make_divisible(in_chs * rd_ratio, 4)
        self.conv_reduce = nn.Conv2d(in_chs, rd, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd, in_chs, 1, bias=True)
        self.gate = gate()

    def forward(self, x):
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(s)


class _DropPathLike(nn.Module):
    """Stochastic depth: drops whole samples in training, identity in eval (stateless, like timm's DropPath)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) >= self.p
        return x * keep / (1.0 - self.p)


class TimmStyleBottleneck(nn.Module):
    """timm 1.0's GhostBottleneck: conv_dw/bn_dw None at stride 1, se optional, drop_path before the residual add;
    mode 'attn' (GhostNetV2) makes ghost1 a GhostModuleV2."""

    def __init__(self, in_chs, mid_chs, out_chs, dw_kernel_size=3, stride=1, se_ratio=0.0, drop_path=0.0,
                 se_gate=_HardSigmoidGate, mode="original"):
        super().__init__()
        self.ghost1 = (TimmStyleGhostV2(in_chs, mid_chs, act_layer=nn.ReLU) if mode == "attn"
                       else TimmStyleGhost(in_chs, mid_chs, act_layer=nn.ReLU))
        if stride > 1:
            self.conv_dw = nn.Conv2d(mid_chs, mid_chs, dw_kernel_size, stride, (dw_kernel_size - 1) // 2,
                                     groups=mid_chs, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        else:
            self.conv_dw = None
            self.bn_dw = None
        self.se = _TimmStyleSE(mid_chs, se_ratio, se_gate) if se_ratio > 0 else None
        self.ghost2 = TimmStyleGhost(mid_chs, out_chs, act_layer=nn.Identity)
        if in_chs == out_chs and stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, in_chs, dw_kernel_size, stride, (dw_kernel_size - 1) // 2, groups=in_chs,
                          bias=False),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out_chs),
            )
        self.drop_path = _DropPathLike(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.ghost1(x)
        if self.conv_dw is not None:
            x = self.bn_dw(self.conv_dw(x))
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        return self.drop_path(x) + self.shortcut(shortcut)


class TimmStyleBottleneckV3(TimmStyleBottleneck):
    """GhostNetV3's bottleneck as recalled from timm 1.0 (GhostBottleneckV3), built directly in its reparameterized
    form plus the pieces before it: TimmStyleBottleneck's layers with GhostModuleV3s as ghost1 (in ``mode``) and
    ghost2 ('original': no slice, no activation); ``reparameterize()`` folds bn_dw into conv_dw (a conv with a bias,
    bn_dw an Identity). Not checked against timm (it cannot be installed here): the tests use it for the structure
    fuse() has to accept."""

    def __init__(self, in_chs, mid_chs, out_chs, dw_kernel_size=3, stride=1, se_ratio=0.0, mode="original"):
        super().__init__(in_chs, mid_chs, out_chs, dw_kernel_size, stride, se_ratio)
        self.ghost1 = TimmStyleGhostV3(in_chs, mid_chs, act_layer=nn.ReLU, mode=mode)
        self.ghost2 = TimmStyleGhostV3(mid_chs, out_chs, act_layer=nn.Identity, mode="original")

    @torch.no_grad()
    def reparameterize(self):
        self.ghost1.reparameterize()
        self.ghost2.reparameterize()
        if isinstance(self.bn_dw, nn.BatchNorm2d):
            w, b = _fold(self.conv_dw.weight, self.bn_dw)
            conv = nn.Conv2d(self.conv_dw.in_channels, self.conv_dw.out_channels, self.conv_dw.kernel_size,
                             self.conv_dw.stride, self.conv_dw.padding, groups=self.conv_dw.groups, bias=True)
            conv.weight.copy_(w)
            conv.bias.copy_(b)
            self.conv_dw, self.bn_dw = conv, nn.Identity()


class SigmoidGate(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x)


# ---------------------------------------------------------------------------------------------------------------
# timm's GhostNet class (versions v1, v2 and v3), transcribed independently of ghostkernels.models
# ---------------------------------------------------------------------------------------------------------------


class TimmStyleGhostNet(OfficialGhostNetReplica):
    """timm's GhostNet with ``version`` 'v1', 'v2' (bottlenecks with layer index > 1 in mode 'attn') or 'v3'
    (GhostBottleneckV3s, those with layer index > 1 in mode 'shortcut'; call reparameterize() before fusing): the
    official network's skeleton with timm's blocks and its head's flatten child."""

    def __init__(self, num_classes=1000, width=1.0, version="v2"):
        self.version = version
        super().__init__(num_classes=num_classes, width=width, dropout=0.0)
        self.flatten = nn.Flatten(1)

    def make_block(self, layer_idx, in_chs, mid_chs, out_chs, k, stride, se_ratio):
        if self.version == "v3":
            return TimmStyleBottleneckV3(in_chs, mid_chs, out_chs, k, stride, se_ratio,
                                         mode="shortcut" if layer_idx > 1 else "original")
        mode = "attn" if self.version == "v2" and layer_idx > 1 else "original"
        return TimmStyleBottleneck(in_chs, mid_chs, out_chs, k, stride, se_ratio, mode=mode)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        x = self.flatten(self.act2(self.conv_head(self.global_pool(x))))
        return self.classifier(x)

    def reparameterize(self):
        for m in self.modules():
            if isinstance(m, TimmStyleBottleneckV3):
                m.reparameterize()
        return self


# ---------------------------------------------------------------------------------------------------------------
# Test helper
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm2d random running statistics and affine parameters (the defaults, mean 0 / var 1 /
    weight 1 / bias 0, would make BN folding a no-op that a wrong fold could pass)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            if m.weight is not None:
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


# Whole GhostNet 0.5x networks in two codings, for the tests of fuse()'s network-level steps (stem, head).
SMALL_GHOSTNETS = ("ours", "official")


def small_ghostnet(kind: str, seed: int = 0, num_classes: int = 1000) -> nn.Module:
    """GhostNet 0.5x, this package's ("ours") or the official code's replica ("official"), with random weights and
    BatchNorm statistics from ``seed``, in eval mode."""
    from ghostkernels import models

    torch.manual_seed(seed)
    net = (models.ghostnet_050(num_classes=num_classes) if kind == "ours"
           else OfficialGhostNetReplica(num_classes=num_classes, width=0.5))
    return randomize_batchnorm(net, seed).eval()
