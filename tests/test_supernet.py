"""Supernet and standalone subnet: structure, extraction equality, and path-restricted gradients."""
import numpy as np
import pytest
import torch

from pinas.models.backbone import Classifier, PiNASBackbone, build_subnet, extract_subnet
from pinas.models.blocks import CandidateBlock
from pinas.space import DEMO, RESNEST50


def _randomise_bn(model: torch.nn.Module, seed: int) -> None:
    """Give BNs non-trivial statistics and affine params so extraction is tested on everything it copies."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("space, size", [(DEMO, 64), (RESNEST50, 96)], ids=["demo", "resnest50"])
def test_extracted_subnet_equals_the_supernet_path(space, size):
    torch.manual_seed(0)
    supernet = PiNASBackbone(space).eval()
    _randomise_bn(supernet, 0)
    rng = np.random.default_rng(0)
    x = torch.randn(2, 3, size, size)
    for _ in range(3 if space is DEMO else 2):
        arch = space.sample(rng)
        subnet = extract_subnet(supernet, arch).eval()
        assert sum(p.numel() for p in subnet.parameters()) < sum(p.numel() for p in supernet.parameters())
        with torch.no_grad():
            for a, b in zip(supernet(x, arch, return_stages=True), subnet(x, return_stages=True)):
                assert (a - b).abs().max().item() <= 1e-5
            assert (supernet(x, arch) - subnet(x)).abs().max().item() <= 1e-5


def test_stage_outputs_have_the_expected_shapes():
    net = PiNASBackbone(DEMO).eval()
    outs = net(torch.randn(1, 3, 64, 64), DEMO.default_arch(), return_stages=True)
    assert [o.shape[1] for o in outs] == list(DEMO.out_channels)
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]
    assert net(torch.randn(1, 3, 64, 64), DEMO.default_arch()).shape == (1, DEMO.out_channels[-1])


def test_output_stride_8_with_dilations():
    net = build_subnet(DEMO, DEMO.default_arch(), strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)).eval()
    outs = net(torch.randn(1, 3, 64, 64), return_stages=True)
    assert [o.shape[-1] for o in outs] == [16, 8, 8, 8]


def test_only_the_chosen_candidates_receive_gradients():
    torch.manual_seed(0)
    model = Classifier(PiNASBackbone(DEMO), 5)
    arch = DEMO.sample(np.random.default_rng(3))
    loss = model(torch.randn(4, 3, 64, 64), arch).logsumexp(1).mean()
    loss.backward()
    on_path = {"backbone." + n for n in model.backbone.path_parameter_names(arch)}
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            assert (p.grad is not None) == (name in on_path), name
    for i, (layer, choice) in enumerate(zip(model.backbone.layers(), arch)):
        for c, block in layer.candidates.items():
            assert all((p.grad is not None) == (int(c) == choice) for p in block.parameters()), (i, c)


def test_last_bn_gamma_starts_at_zero_and_convs_are_kaiming():
    net = PiNASBackbone(DEMO)
    blocks = [m for m in net.modules() if isinstance(m, CandidateBlock)]
    assert len(blocks) == DEMO.num_layers * DEMO.num_choices
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    assert all(torch.all(b.bn1.weight == 1) for b in blocks)
    # at gamma 0 every block is its shortcut: the supernet output does not depend on the path
    x = torch.randn(2, 3, 64, 64)
    net.eval()
    rng = np.random.default_rng(0)
    assert torch.allclose(net(x, DEMO.sample(rng)), net(x, DEMO.sample(rng)))


def test_subnet_refuses_another_architecture_and_supernet_needs_one():
    arch = DEMO.default_arch()
    sub = build_subnet(DEMO, arch)
    with pytest.raises(ValueError, match="this subnet is"):
        sub(torch.randn(1, 3, 64, 64), (0,) * DEMO.num_layers)
    with pytest.raises(ValueError, match="needs an architecture"):
        PiNASBackbone(DEMO)(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("radix, cardinality", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_split_attention_matches_a_per_channel_reference(radix, cardinality):
    """Reference: channel j of cardinal group k is sum_i softmax_i(a[k, i, j]) * U_i[j] (sigmoid for radix 1)."""
    from pinas.models.blocks import SplitAttentionConv
    torch.manual_seed(0)
    gw = 8
    sa = SplitAttentionConv(gw, radix, cardinality, 8, torch.nn.BatchNorm2d).eval()
    x = torch.randn(3, gw, 5, 5)
    with torch.no_grad():
        u = torch.relu(sa.bn0(sa.conv(x)))
        splits = u.chunk(radix, dim=1)
        pooled = sum(splits).mean(dim=(2, 3), keepdim=True)
        a = sa.fc2(torch.relu(sa.bn1(sa.fc1(pooled)))).flatten(1)  # (B, c * r * gw/c)
        per_group = gw // cardinality
        expected = torch.zeros(3, gw, 5, 5)
        for j in range(gw):
            k, o = divmod(j, per_group)
            logits = torch.stack([a[:, k * radix * per_group + i * per_group + o] for i in range(radix)], dim=1)
            weights = torch.sigmoid(logits) if radix == 1 else logits.softmax(dim=1)
            expected[:, j] = sum(weights[:, i, None, None] * splits[i][:, j] for i in range(radix))
        assert torch.allclose(sa(x), expected, atol=1e-6)
