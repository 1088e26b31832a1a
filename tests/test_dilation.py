"""Output stride 8 as ResNeSt builds it, checked against a per-layer formulation written here from the rules.

The formulation below is independent of ``pinas.models``: plain ``torch.nn.functional`` calls on the state dict,
following ResNeSt's / PyTorch-Encoding's dilated network (the backbone of Pi-NAS's segmentation results):

* only the first block of a stage strides; it runs at the contracted dilation (1 in a dilation-2 stage, 2 in a
  dilation-4 stage), the other blocks at the stage's dilation, the 3x3 padding equal to the dilation;
* the first block of stages 2-4 keeps its avd ``AvgPool2d(3, stride, padding=1)`` after the 3x3 conv even when the
  stride is 1; stage 1 has none;
* a first block's shortcut is [AvgPool2d(stride, ceil_mode, no pad counted) when strided] -> 1x1 conv -> BN.

Every candidate appears, the BN statistics and affine parameters are randomised so that every layer matters, and
the supernet path, the standalone subnet and the OpenMMLab backbone are all compared, at output stride 8 and 32.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pinas.models.backbone import PiNASBackbone
from pinas.openmmlab import PiNASResNeSt
from pinas.space import DEMO, RESNEST50

OS8 = ((1, 2, 1, 1), (1, 1, 2, 4))
OS32 = ((1, 2, 2, 2), (1, 1, 1, 1))


def _bn(x, sd, prefix):
    return F.batch_norm(x, sd[prefix + "running_mean"], sd[prefix + "running_var"], sd[prefix + "weight"],
                        sd[prefix + "bias"], training=False, eps=1e-5)


def _split_attention(x, sd, p, radix, cardinality, dilation):
    u = F.relu(_bn(F.conv2d(x, sd[p + "conv.weight"], padding=dilation, dilation=dilation,
                            groups=cardinality * radix), sd, p + "bn0."))
    width = u.shape[1] // radix
    splits = [u[:, i * width:(i + 1) * width] for i in range(radix)]
    pooled = sum(splits).mean(dim=(2, 3), keepdim=True)
    z = F.relu(_bn(F.conv2d(pooled, sd[p + "fc1.weight"], sd[p + "fc1.bias"], groups=cardinality), sd, p + "bn1."))
    a = F.conv2d(z, sd[p + "fc2.weight"], sd[p + "fc2.bias"], groups=cardinality)  # (B, radix * width, 1, 1)
    if radix == 1:
        return u * torch.sigmoid(a)
    # the fc2 channels are (cardinality, radix, width / cardinality); softmax over radix
    a = a.view(a.shape[0], cardinality, radix, width // cardinality).softmax(dim=2)
    return sum(s * a[:, :, i].reshape(a.shape[0], width, 1, 1) for i, s in enumerate(splits))


def reference_stages(space, arch, sd, x, strides, dilations, prefix=""):
    """The four stage outputs of ``arch`` from the state dict ``sd``, by the rules in the module docstring."""
    s = prefix + "stem."
    x = F.relu(_bn(F.conv2d(x, sd[s + "0.weight"], stride=2, padding=1), sd, s + "1."))
    x = F.relu(_bn(F.conv2d(x, sd[s + "3.weight"], padding=1), sd, s + "4."))
    x = F.relu(_bn(F.conv2d(x, sd[s + "6.weight"], padding=1), sd, s + "7."))
    x = F.max_pool2d(x, 3, 2, 1)
    outs, layer = [], 0
    for stage, depth in enumerate(space.depths):
        for block in range(depth):
            first = block == 0
            stride = strides[stage] if first else 1
            dilation = {1: 1, 2: 1, 4: 2}[dilations[stage]] if first else dilations[stage]
            avd = first and (stage > 0 or stride > 1)
            cand = space.candidates[arch[layer]]
            p = f"{prefix}stages.{stage}.{block}."
            b = f"{p}candidates.{arch[layer]}."
            out = F.relu(_bn(F.conv2d(x, sd[b + "conv1.weight"]), sd, b + "bn1."))
            out = _split_attention(out, sd, b + "split_attention.", cand.radix, cand.cardinality, dilation)
            if avd:
                out = F.avg_pool2d(out, 3, stride, 1)
            out = _bn(F.conv2d(out, sd[b + "conv3.weight"]), sd, b + "bn3.")
            if p + "downsample.1.weight" in sd:
                short = F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else x
                short = _bn(F.conv2d(short, sd[p + "downsample.1.weight"]), sd, p + "downsample.2.")
            else:
                short = x
            x = F.relu(out + short)
            layer += 1
        outs.append(x)
    return outs


def _randomise(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                for t, lo, hi in ((m.weight, 0.5, 1.5), (m.bias, -0.2, 0.2), (m.running_mean, -0.1, 0.1),
                                  (m.running_var, 0.5, 1.5)):
                    t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)
    return module.eval()


def _close(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * w.abs().max().item())


ARCHS = [(DEMO, "01-23-32-10"), (DEMO, "33-22-11-00"), (DEMO, "12-30-03-21"), (RESNEST50, "pinas-trans")]


@pytest.mark.parametrize("geometry", [OS8, OS32], ids=["os8", "os32"])
@pytest.mark.parametrize("space,arch", ARCHS, ids=[f"{s.name}-{a}" for s, a in ARCHS])
def test_stage_outputs_equal_the_per_layer_formulation(space, arch, geometry):
    strides, dilations = geometry
    arch = space.parse(arch)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    subnet = _randomise(PiNASBackbone(space, arch, strides=strides, dilations=dilations), 0)
    with torch.no_grad():
        want = reference_stages(space, arch, subnet.state_dict(), x, strides, dilations)
        _close(subnet(x, return_stages=True), want)
        mm = PiNASResNeSt(arch=space.format(arch), space=space.name, strides=strides, dilations=dilations).eval()
        mm.load_state_dict(subnet.state_dict())
        _close(mm(x), want)
    expected = [4, 8, 8, 8] if geometry is OS8 else [4, 8, 16, 32]
    assert [64 // t.shape[-1] for t in want] == expected


def test_the_supernet_path_is_the_subnet_at_os8():
    supernet = _randomise(PiNASBackbone(DEMO, strides=OS8[0], dilations=OS8[1]), 3)
    arch = DEMO.parse("21-03-12-30")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _close(supernet(x, arch, return_stages=True),
               reference_stages(DEMO, arch, supernet.state_dict(), x, *OS8))
