"""The building blocks of the ResNeSt-D skeleton: deep stem, split-attention conv, candidate bottleneck, shortcut.

Every block takes a ``norm_layer`` factory so the same code builds plain BN (supernet training), SyncBN
(OpenMMLab transfer) or frozen BN. Weights are initialised as the method prescribes (Kaiming fan-out for convs,
BN gamma 1 / beta 0, the last BN of every bottleneck at gamma 0 so each block starts as the identity).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pinas.space import EXPANSION, Candidate

NormLayer = Callable[[int], nn.Module]


def conv_bn_relu(cin: int, cout: int, stride: int, norm_layer: NormLayer) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm_layer(cout), nn.ReLU(inplace=True)]


class DeepStem(nn.Sequential):
    """ResNet-D deep stem: three 3x3 convs (the first with stride 2), BN, ReLU, then a stride-2 max-pool."""

    def __init__(self, stem_width: int, norm_layer: NormLayer, in_channels: int = 3):
        super().__init__(
            *conv_bn_relu(in_channels, stem_width, 2, norm_layer),
            *conv_bn_relu(stem_width, stem_width, 1, norm_layer),
            nn.Conv2d(stem_width, 2 * stem_width, 3, 1, 1, bias=False),
            norm_layer(2 * stem_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )


class SplitAttentionConv(nn.Module):
    """ResNeSt split-attention 3x3 conv: r grouped branches, summed, re-weighted by a radix-softmax attention.

    With radix 1 the attention is a sigmoid gate (SE-like), as in the released Pi-NAS code.
    """

    def __init__(self, channels: int, radix: int, cardinality: int, attention_width: int, norm_layer: NormLayer,
                 dilation: int = 1):
        super().__init__()
        self.radix, self.cardinality, self.channels = radix, cardinality, channels
        self.conv = nn.Conv2d(channels, channels * radix, 3, 1, dilation, dilation, groups=cardinality * radix,
                              bias=False)
        self.bn0 = norm_layer(channels * radix)
        self.fc1 = nn.Conv2d(channels, attention_width, 1, groups=cardinality)
        self.bn1 = norm_layer(attention_width)
        self.fc2 = nn.Conv2d(attention_width, channels * radix, 1, groups=cardinality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = F.relu(self.bn0(self.conv(x)), inplace=True)
        b = u.shape[0]
        if self.radix > 1:
            splits = u.view(b, self.radix, self.channels, *u.shape[2:])
            gap = splits.sum(dim=1)
        else:
            gap = u
        gap = F.adaptive_avg_pool2d(gap, 1)
        att = self.fc2(F.relu(self.bn1(self.fc1(gap)), inplace=True))
        if self.radix > 1:
            # (B, c, r, gw/c) -> softmax over r -> (B, r, gw, 1, 1), radix-major like the conv's output groups
            att = att.view(b, self.cardinality, self.radix, -1).transpose(1, 2).softmax(dim=1)
            att = att.reshape(b, self.radix, self.channels, 1, 1)
            return (splits * att).sum(dim=1)
        return u * torch.sigmoid(att)


class CandidateBlock(nn.Module):
    """The residual branch of one candidate bottleneck (the shortcut is owned by the layer, shared by candidates).

    conv1x1 -> BN -> ReLU -> split-attention 3x3 (padding = dilation) -> [avd avg-pool] -> conv1x1 -> BN (gamma 0).
    ``avd`` puts the block's stride into an ``AvgPool2d(3, stride, padding=1)`` after the 3x3 conv; ResNeSt (and
    Pi-NAS's copy of it) keeps that pool in the first block of stages 2-4 even where a dilated network makes the
    stride 1, so there it is a stride-1 3x3 box filter (see :func:`block_geometry`).
    """

    def __init__(self, in_channels: int, planes: int, candidate: Candidate, stride: int, dilation: int,
                 min_attention_width: int, norm_layer: NormLayer, avd: bool | None = None):
        super().__init__()
        gw = candidate.group_width(planes)
        self.conv1 = nn.Conv2d(in_channels, gw, 1, bias=False)
        self.bn1 = norm_layer(gw)
        self.split_attention = SplitAttentionConv(
            gw, candidate.radix, candidate.cardinality, candidate.attention_width(planes, min_attention_width),
            norm_layer, dilation)
        # ResNeSt "avd": the stride sits in an avg-pool after the 3x3 conv instead of in the conv itself
        self.avd = nn.AvgPool2d(3, stride, 1) if (stride > 1 if avd is None else avd) else nn.Identity()
        self.conv3 = nn.Conv2d(gw, planes * EXPANSION, 1, bias=False)
        self.bn3 = norm_layer(planes * EXPANSION)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.avd(self.split_attention(out))
        return self.bn3(self.conv3(out))


def block_geometry(stage: int, block: int, stride: int, dilation: int) -> tuple[int, int, bool]:
    """(stride, dilation, avd) of one bottleneck in a stage of the given ``stride`` and ``dilation``.

    The rules of ResNeSt's dilated network (the PyTorch-Encoding backbone Pi-NAS's segmentation results come from):
    only the stage's first block strides; that block runs at the *contracted* dilation (half the stage's: 1 in a
    dilation-2 stage, 2 in a dilation-4 stage) and the rest at the stage's dilation; and the first block of every
    stage but the first keeps its avd pool whatever its stride (``is_first``), so at output stride 8 the first
    blocks of stages 3 and 4 smooth with a stride-1 ``AvgPool2d(3, 1, 1)``. At output stride 32 this is the plain
    network: stride-2 avd pools in the first blocks of stages 2-4.
    """
    if block:
        return 1, dilation, False
    return stride, max(1, dilation // 2), stride > 1 or stage > 0


def make_shortcut(in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer) -> nn.Module | None:
    """ResNet-D "avg_down" projection shortcut, or None for an identity shortcut."""
    if stride == 1 and in_channels == out_channels:
        return None
    pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    return nn.Sequential(pool, nn.Conv2d(in_channels, out_channels, 1, bias=False), norm_layer(out_channels))


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) convs, unit-gamma BNs, and gamma 0 on the last BN of every bottleneck."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, CandidateBlock) and getattr(m.bn3, "weight", None) is not None:
            nn.init.zeros_(m.bn3.weight)
