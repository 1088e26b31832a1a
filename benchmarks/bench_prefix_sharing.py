"""Prefix sharing in the search: block evaluations and wall time per generation, prefix tree vs per candidate.

For SPOS-style generations (25 mutations at p 0.1 and 25 crossovers of the top 10 candidates so far, the first
generation random, the parents chosen by the scores), on the demo and the resnest50 presets, each generation's
candidates are scored by the contrastive proxy (2 reference paths each) both ways on the same randomly initialised
supernet, small images on the CPU. Prints per generation: searchable-block evaluations (one block on one batch) of
each way and their ratio (goal: >= 1.5x fewer with the tree), the same with the stem passes, wall times and their
ratio, and that the scores agree.

    python benchmarks/bench_prefix_sharing.py [--spaces demo resnest50] [--generations 3] [--size 32]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch.utils.data import Dataset

from pinas.data.transforms import MocoV2Colour
from pinas.models.backbone import PiNASBackbone
from pinas.models.supernet_pi import SupernetPi
from pinas.search.proxies import ContrastiveProxy
from pinas.search.recalibration import FixedBatches
from pinas.space import get_space


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


def generations(space, rng, count: int, scores: dict, population: int = 50, parents: int = 10):
    """SPOS generations (the search's operators); ``scores`` is filled by the caller with each generation's proxy
    scores, which choose the next generation's parents, as in the search."""
    for g in range(count):
        if g == 0:
            children = [space.sample(rng) for _ in range(population)]
        else:
            top = sorted(scores, key=lambda a: -scores[a])[:parents]
            children = [space.mutate(top[rng.integers(len(top))], rng, 0.1) for _ in range(population // 2)]
            children += [space.crossover(top[rng.integers(len(top))], top[rng.integers(len(top))], rng)
                         for _ in range(population - len(children))]
        yield [a for a in dict.fromkeys(children) if a not in scores]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", nargs="+", default=["demo", "resnest50"])
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="image side (the saving does not depend on it)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(f"load {os.getloadavg()[0]:.2f}, {args.threads} thread(s), {args.size} px, contrastive proxy with 3 "
          "reference paths, 2 recalibration batches of 4 images, 1 held-out batch of 2 (x 4 views)")
    for name in args.spaces:
        space = get_space(name)
        torch.manual_seed(0)
        model = SupernetPi(PiNASBackbone(space), 64, 16, 32, 0.2, 0.99).eval()
        colour = MocoV2Colour(args.size)
        recal = FixedBatches(RandomImages(8, args.size, 1), [[0, 1, 2, 3], [4, 5, 6, 7]], colour, cpu, 3,
                             cache_bytes=1 << 30)
        heldout = FixedBatches(RandomImages(2, args.size, 2, views=4), [[0, 1]], colour, cpu, 4,
                               cache_bytes=1 << 30)
        proxies = {sharing: ContrastiveProxy(model, recal, heldout, 1, prefix_sharing=sharing)
                   for sharing in (False, True)}
        totals = {False: [0, 0, 0.0], True: [0, 0, 0.0]}
        scores: dict = {}
        for g, archs in enumerate(generations(space, np.random.default_rng(0), args.generations, scores)):
            results = {}
            for sharing, proxy in proxies.items():
                blocks, stems, t0 = proxy.counter.blocks, proxy.counter.stems, time.perf_counter()
                scored = proxy.score_many(archs)
                seconds = time.perf_counter() - t0
                counts = (proxy.counter.blocks - blocks, proxy.counter.stems - stems)
                for i, v in enumerate((*counts, seconds)):
                    totals[sharing][i] += v
                results[sharing] = ([s for s, _, _ in scored], *counts, seconds)
            (per, pb, pst, ps), (tree, tb, tst, ts) = results[False], results[True]
            agree = np.allclose(per, tree, rtol=1e-6)
            scores.update(zip(archs, tree))
            print(f"{name:>9} generation {g}: {len(archs)} candidates; searchable blocks per candidate {pb} vs "
                  f"prefix tree {tb} -> {pb / tb:.2f}x fewer; with the stem passes ({pst} vs {tst}) "
                  f"{(pb + pst) / (tb + tst):.2f}x; wall {ps:.1f} s vs {ts:.1f} s -> {ps / ts:.2f}x; "
                  f"scores equal: {agree}")
        (pb, pst, ps), (tb, tst, ts) = totals[False], totals[True]
        print(f"{name:>9} all generations: {pb / tb:.2f}x fewer searchable-block evaluations "
              f"({(pb + pst) / (tb + tst):.2f}x with the stem), {ps / ts:.2f}x less wall time")


if __name__ == "__main__":
    main()
