"""pinas's split-attention conv against the official ResNeSt implementation (Zhang et al., the ``resnest`` package,
``resnest.torch.splat.SplAtConv2d``, Apache-2.0; a test-only dependency), with the same weights copied in: a
re-implementation nobody here wrote is the reference, not our own formula."""
from __future__ import annotations

import pytest
import torch
from resnest.torch.splat import SplAtConv2d
from torch import nn

from pinas.models.blocks import SplitAttentionConv


@pytest.mark.parametrize(("radix", "cardinality"), [(1, 1), (2, 1), (4, 1), (2, 2), (1, 4)])
def test_split_attention_matches_the_official_resnest_block(radix, cardinality):
    torch.manual_seed(radix * 10 + cardinality)
    channels = 64
    attention = max(channels * radix // 4, 32)  # ResNeSt's inter_channels with reduction factor 4
    official = SplAtConv2d(channels, channels, 3, padding=1, groups=cardinality, bias=False, radix=radix,
                           reduction_factor=4, norm_layer=nn.BatchNorm2d)
    ours = SplitAttentionConv(channels, radix, cardinality, attention, nn.BatchNorm2d)
    for module in official.modules():  # BN statistics and affine parameters far from their defaults
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    ours.load_state_dict(official.state_dict(), strict=False)
    missing = set(official.state_dict()) - set(ours.state_dict())
    assert not missing, missing  # every official tensor has a home in ours, under the same name
    x = torch.randn(3, channels, 9, 9)
    for train in (False, True):
        official.train(train)
        ours.train(train)
        torch.testing.assert_close(ours(x), official(x), rtol=1e-5, atol=1e-5)
