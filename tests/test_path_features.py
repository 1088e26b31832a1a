"""Prefix sharing: a generation's paths scored as a prefix tree give the scores of scoring each path on its own."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from pinas.data.transforms import MocoV2Colour
from pinas.models.backbone import PiNASBackbone
from pinas.models.supernet_pi import SupernetPi
from pinas.search.path_features import BlockCounter, features_by_prefix, features_per_path
from pinas.search.proxies import ContrastiveProxy
from pinas.search.recalibration import FixedBatches
from pinas.space import DEMO, RESNEST50


class RandomImages(Dataset):
    """Random uint8 crops, ``views`` of them per image, as the loader hands them over."""

    def __init__(self, n: int, size: int, seed: int, views: int = 1):
        shape = (n, views, 3, size, size) if views > 1 else (n, 3, size, size)
        self.images = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)

    def __len__(self):
        return len(self.images)

    def batch_keys(self, step, indices):
        return list(indices)

    def __getitem__(self, i):
        return self.images[i], 0


def spos_generation(space, rng, parents=3, children=10):
    """Mutation (p 0.1) and crossover children of a few parents: the shared prefixes a real generation has."""
    tops = [space.sample(rng) for _ in range(parents)]
    kids = [space.mutate(tops[rng.integers(parents)], rng, 0.1) for _ in range(children // 2)]
    kids += [space.crossover(tops[rng.integers(parents)], tops[rng.integers(parents)], rng)
             for _ in range(children - len(kids))]
    return list(dict.fromkeys(tops + kids))


def _supernet(space, seed):
    torch.manual_seed(seed)
    model = SupernetPi(PiNASBackbone(space), 64, 16, 32, 0.2, 0.99)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # every block matters (bn3 starts at gamma 0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("space", [DEMO, RESNEST50], ids=["demo", "resnest50"])
def test_prefix_tree_features_and_scores_equal_the_per_path_ones(space):
    model = _supernet(space, 0)
    size, cpu = 32, torch.device("cpu")  # small images: the tree's arithmetic does not depend on their size
    colour = MocoV2Colour(size)
    recal = FixedBatches(RandomImages(6, size, 1), [[0, 1, 2], [3, 4, 5]], colour, cpu, seed=3)
    heldout = FixedBatches(RandomImages(2, size, 2, views=4), [[0, 1]], colour, cpu, seed=4)
    archs = spos_generation(space, np.random.default_rng(5), children=6)
    requests = [(a, v) for a in archs for v in (0, 2)]
    per, shared = BlockCounter(), BlockCounter()
    reference = features_per_path(model.student.backbone, requests, recal, heldout, counter=per)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trie = features_by_prefix(model.student.backbone, requests, recal, heldout, counter=shared)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the supernet is left as it was
    assert reference.keys() == trie.keys()
    for key in reference:
        for a, b in zip(reference[key], trie[key], strict=True):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6 * a.abs().max().item())
    assert shared.blocks < per.blocks  # and it did less work
    scores = [ContrastiveProxy(model, recal, heldout, 1, prefix_sharing=sharing).score_many(archs)
              for sharing in (False, True)]
    np.testing.assert_allclose([s for s, _, _ in scores[1]], [s for s, _, _ in scores[0]], rtol=1e-6)
