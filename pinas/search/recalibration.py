"""BN recalibration ("precise BN") of one path of the supernet, on fixed, reproducible batches.

Why recalibrate: during supernet training a block's BN statistics are a running mix over whatever paths happened
to precede it, so they do not describe the inputs the block sees inside one particular architecture. Before a
candidate is scored, the BNs on its path get "precise BN" statistics: reset, then the arithmetic mean of the
per-batch statistics over a fixed set of training batches (PyTorch's ``momentum=None`` cumulative average).
Only the path's BN buffers are touched and they are restored afterwards (:func:`precise_bn`), so evaluating on
the live supernet leaves it exactly as it was and the next candidate starts from the same state; no copy needed.

Why fixed batches: every input (recalibration batches, held-out views) is a pure function of a seed and its
batch index (:class:`FixedBatches`), drawn once and kept in memory while it fits, so two evaluations of one
architecture are bit-identical and every candidate is judged on the same images.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pinas.data.images import loader
from pinas.models.backbone import PiNASBackbone

Batch = tuple[torch.Tensor, torch.Tensor]


def _seeded(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2 ** 63)


class FixedBatches:
    """A fixed sequence of preprocessed (x, y) batches; batch i is a pure function of (indices, seed, i).

    ``dataset`` is an evaluation view (:class:`~pinas.data.images.ImageFolderDataset`) or training crops
    (:class:`~pinas.data.images.TrainCrops`, which draw batch i's crops as step i). ``transform`` runs on the device
    and may be random: it runs under a forked torch RNG seeded with (seed, i), so the result does not depend on what
    ran before. Preprocessed batches stay in memory up to ``cache_bytes`` (every candidate reuses
    them); batches beyond the budget are decoded and transformed again each pass, identically.
    """

    def __init__(self, dataset: Dataset, batches: Sequence[Sequence[int]],
                 transform: Callable[[torch.Tensor], torch.Tensor], device: torch.device, seed: int = 0,
                 cache_bytes: int = 0, num_workers: int = 0, channels_last: bool = False):
        if not batches:
            raise ValueError("no batches")
        self.dataset, self.batches = dataset, [list(b) for b in batches]
        self.transform, self.device, self.seed = transform, device, seed
        self.cache_bytes, self.num_workers = cache_bytes, num_workers
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._cache: dict[int, Batch] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def num_images(self) -> int:
        return sum(len(b) for b in self.batches)

    def _prepare(self, index: int, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(_seeded(self.seed, index))
            x = self.transform(images.to(self.device)).contiguous(memory_format=self.memory_format)
        return x, labels.to(self.device)

    def __iter__(self) -> Iterator[Batch]:
        missing = [i for i in range(len(self.batches)) if i not in self._cache]
        batches = iter(loader(self.dataset, [self.dataset.batch_keys(i, self.batches[i]) for i in missing],
                              self.num_workers)) if missing else None
        for i in range(len(self.batches)):
            if i in self._cache:
                yield self._cache[i]
                continue
            batch = self._prepare(i, *next(batches))
            size = batch[0].numel() * batch[0].element_size()
            if self._cached_bytes + size <= self.cache_bytes:
                self._cache[i] = batch
                self._cached_bytes += size
            yield batch


def recal_batches(num_images: int, batch_size: int, num_batches: int, seed: int) -> list[list[int]]:
    """``num_batches`` equal batches from a seeded permutation (equal sizes: precise BN averages batch stats)."""
    batch_size = min(batch_size, num_images)
    num_batches = max(1, min(num_batches, num_images // batch_size))
    order = np.random.default_rng(seed).permutation(num_images)
    return [order[i * batch_size:(i + 1) * batch_size].tolist() for i in range(num_batches)]


def heldout_batches(num_images: int, batch_size: int, limit: int | None) -> list[list[int]]:
    """Sequential batches over an evenly spread subset of at most ``limit`` images (every class kept)."""
    idx = np.arange(num_images) if limit is None or limit >= num_images else \
        np.linspace(0, num_images - 1, num=limit).round().astype(int)
    return [idx[i:i + batch_size].tolist() for i in range(0, len(idx), batch_size)]


def path_batchnorms(backbone: PiNASBackbone, arch: Sequence[int]) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BN layers a forward along ``arch`` runs through (stem, chosen candidates, shared shortcuts)."""
    seen: dict[int, nn.modules.batchnorm._BatchNorm] = {}
    for module in backbone.path_modules(arch):
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                seen.setdefault(id(m), m)
    return list(seen.values())


@contextmanager
def restored(modules: Sequence[nn.Module], bns: Sequence[nn.modules.batchnorm._BatchNorm]):
    """Put every BN buffer and momentum of ``bns`` and every train flag under ``modules`` back as it was,
    whatever happens inside."""
    saved = [(bn.momentum, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in bns]
    modes = [(m, m.training) for module in modules for m in module.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, (momentum, mean, var, count) in zip(bns, saved):
                bn.momentum = momentum
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)
        for m, mode in modes:
            m.training = mode


@contextmanager
def precise_bn(paths: Sequence[tuple[PiNASBackbone, Sequence[int]]], batches: Iterable[Batch]):
    """Recalibrate the BNs of each (backbone, arch) path on ``batches``, yield with the backbones in eval mode,
    then restore those BNs' buffers, momenta and every module's train flag exactly.

    Inside the block, the running mean/var of a path BN is the mean over batches of its per-batch statistics;
    parameters and off-path buffers are never written.
    """
    bns = [bn for backbone, arch in paths for bn in path_batchnorms(backbone, arch)]
    bns = list({id(bn): bn for bn in bns}.values())
    with restored([backbone for backbone, _ in paths], bns):
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: the arithmetic mean of the batch statistics
        for backbone, _ in paths:
            backbone.train()
        with torch.no_grad():
            for x, _ in batches:
                for backbone, arch in paths:
                    backbone(x, arch)
        for backbone, _ in paths:
            backbone.eval()
        yield
