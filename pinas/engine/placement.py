"""Devices shared by stages that run at the same time (the transfers): never two jobs on one device.

A :class:`DevicePool` holds the GPUs of this node (or, on a CPU machine, its cores). A job leases the number it
needs and waits while they are taken; the lease names the devices, and :meth:`DevicePool.env` turns it into the
child process's environment: ``CUDA_VISIBLE_DEVICES`` on GPU (torchrun's local ranks then map onto exactly those
GPUs), the intra-op thread count on CPU. ``placement`` decides how many each job asks for: ``parallel`` splits the
pool between the jobs, ``sequential`` gives each job the whole pool, one job after another.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Literal

Placement = Literal["parallel", "sequential"]


class DevicePool:
    """``size`` devices of one ``kind`` ("cuda": GPU ids; "cpu": cores); leases are disjoint at every moment."""

    def __init__(self, size: int, kind: Literal["cuda", "cpu"]):
        if size < 1:
            raise ValueError(f"a device pool needs at least one device, got {size}")
        self.size, self.kind = size, kind
        self._free = list(range(size))
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def lease(self, count: int) -> Iterator[list[int]]:
        """``count`` devices for the ``with`` block, waiting until that many are free."""
        if not 1 <= count <= self.size:
            raise ValueError(f"a job asks for {count} device(s); the pool has {self.size}")
        with self._changed:
            self._changed.wait_for(lambda: len(self._free) >= count)
            taken, self._free = self._free[:count], self._free[count:]
        try:
            yield taken
        finally:
            with self._changed:
                self._free = sorted(self._free + taken)
                self._changed.notify_all()

    def env(self, devices: list[int], processes: int) -> dict[str, str]:
        """The environment of a child running ``processes`` processes on ``devices``."""
        if self.kind == "cuda":
            return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, devices)), "OMP_NUM_THREADS": "1"}
        return {"OMP_NUM_THREADS": str(max(1, len(devices) // processes)), "CUDA_VISIBLE_DEVICES": ""}


def share(placement: Placement, pool_size: int, jobs: int, kind: Literal["cuda", "cpu"]) -> tuple[int, int]:
    """(processes, devices) a job gets by default: its part of the pool (``parallel``) or all of it."""
    devices = pool_size if placement == "sequential" else max(1, pool_size // max(1, jobs))
    return (devices if kind == "cuda" else 1), devices
