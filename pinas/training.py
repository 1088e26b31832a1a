"""What every training stage shares: distributed set-up, resumable checkpoints, RNG capture, step logging.

The stages write their own small loops (the supernet-Pi step is two paths, an EMA teacher and a queue; nothing like
a standard ``train_step``), and this module gives each of them the same guarantees:

* **Resume is exact.** A checkpoint holds model/optimizer/scheduler/scaler state *and* the torch and numpy RNG
  states and the step counter; the data order is a pure function of (seed, epoch) (:class:`EpochBatchSampler`), so a
  run killed and restarted from its last checkpoint computes the same steps as one that was never interrupted.
* **Checkpoints are never torn.** They are written atomically and the previous one is kept until the new one is
  complete; loading falls back to the older file when the newest is unreadable.
* **Everything is tensor-only**, so checkpoints load with ``torch.load(weights_only=True)``.
* **Distributed**: under ``torchrun`` (env ``WORLD_SIZE`` > 1) a process group is started (NCCL on GPU, gloo on
  CPU); the helpers below are no-ops in a single process.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .artifacts import ArtifactError, atomic_torch_save, atomic_write_bytes, load_tensors

log = logging.getLogger("pinas")
#: ``progress(done, total, record)``: how a stage reports its loop (the flow turns it into a Prefect progress bar)
ProgressFn = Callable[[int, int, dict], None]


# --------------------------------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = DistInfo()


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes in the environment; single-process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def resolve_device(requested: str, info: DistInfo) -> torch.device:
    """``auto`` picks CUDA when present; each rank takes its local GPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no GPU")
        return torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return torch.device(requested)


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (used for the sampled path pair)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def all_gather_cat(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along dim 0 (rank order)."""
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


# -------------------------------------------------------------------------------------------------- data order
class EpochBatchSampler:
    """Batches of indices for this rank; the order depends only on (seed, epoch), so resuming is a skip.

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


# ------------------------------------------------------------------------------------------------- RNG capture
def rng_state(np_rng: np.random.Generator | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    if np_rng is not None:
        state["numpy"] = json.dumps(np_rng.bit_generator.state)
    return state


def restore_rng(state: dict[str, Any], np_rng: np.random.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if np_rng is not None and "numpy" in state:
        np_rng.bit_generator.state = json.loads(state["numpy"])


# ------------------------------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """``checkpoint-<step>.pt`` files in a folder; keeps the newest ``keep`` complete ones."""

    def __init__(self, folder: str | os.PathLike, keep: int = 2):
        self.folder = Path(folder)
        self.keep = max(1, keep)

    def paths(self) -> list[Path]:
        return sorted(self.folder.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = atomic_torch_save(state, self.folder / f"checkpoint-{step:08d}.pt")
        for old in self.paths()[:-self.keep]:
            old.unlink(missing_ok=True)
        for torn in self.folder.glob(".checkpoint-*.tmp"):  # left by a process killed in the middle of a save
            torn.unlink(missing_ok=True)
        return path

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The newest readable checkpoint, or None; an unreadable newest one is reported and skipped."""
        for path in reversed(self.paths()):
            try:
                state = load_tensors(path, map_location)
            except ArtifactError as exc:
                log.warning("skipping unreadable checkpoint: %s", exc)
                continue
            log.info("resuming from %s", path)
            return state
        return None

    def latest_step(self) -> int | None:
        paths = self.paths()
        return int(paths[-1].stem.split("-")[1]) if paths else None


# ---------------------------------------------------------------------------------------------------- logging
class StepLog:
    """Per-step metrics as JSON lines; on resume, lines past the checkpoint's step are dropped (they are redone)."""

    def __init__(self, path: str | os.PathLike, resume_step: int = 0):
        self.path = Path(path)
        kept = [rec for rec in read_step_log(self.path) if rec.get("step", 0) <= resume_step]
        atomic_write_bytes(self.path, "".join(json.dumps(rec) + "\n" for rec in kept).encode())
        self._t0 = time.perf_counter()

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        return read_step_log(self.path)


def read_step_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a step log (a line torn by a kill is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def cosine_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0) -> float:
    """Linear warm-up then cosine annealing to ``final_lr``, evaluated per step (a pure function: resume-safe)."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    # a Python float: numpy scalars in optimizer state would make checkpoints fail torch.load(weights_only=True)
    return float(final_lr + 0.5 * (base_lr - final_lr) * (1 + np.cos(np.pi * min(1.0, progress))))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
