"""The data order of training: a pure function of (seed, epoch), so resuming at a step is a skip, not a replay."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pinas.engine.distributed import SINGLE_PROCESS, DistInfo


class EpochBatchSampler:
    """Batches of indices for this rank; the order depends only on (seed, epoch).

    Each epoch is a seeded permutation cut into global batches of ``batch_size * world_size`` (the last partial one
    dropped); rank r takes the r-th slice of every global batch.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, info: DistInfo = SINGLE_PROCESS):
        self.num_samples, self.batch_size, self.seed, self.info = num_samples, batch_size, seed, info
        global_batch = batch_size * info.world_size
        if num_samples < global_batch:
            raise ValueError(f"{num_samples} training images are fewer than one global batch of {global_batch}")
        self.batches_per_epoch = num_samples // global_batch

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        global_batch = self.batch_size * self.info.world_size
        for b in range(start, self.batches_per_epoch):
            chunk = order[b * global_batch:(b + 1) * global_batch]
            yield chunk[self.info.rank * self.batch_size:(self.info.rank + 1) * self.batch_size].tolist()

    def iter_from(self, step: int) -> Iterator[list[int]]:
        """Endless stream of batches starting at global step ``step``."""
        epoch, offset = divmod(step, self.batches_per_epoch)
        while True:
            yield from self.epoch_batches(epoch, offset)
            epoch, offset = epoch + 1, 0
