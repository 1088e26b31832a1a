"""Per-step metrics as JSON lines (the training curves) and as TensorBoard scalars, both consistent with the
checkpoint a run resumed from.

The TensorBoard events go to ``tensorboard/`` beside the step log (``tensorboard --logdir runs/stages`` shows every
stage). A resumed run opens its writer with ``purge_step`` at the step it resumed from, so TensorBoard's reader drops
the events the killed run wrote past that step and the curve continues without duplicates, as the step log does.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pinas.io.artifacts import atomic_write_bytes

TENSORBOARD_DIR = "tensorboard"


class StepLog:
    """Appends one JSON line per record, and its numbers as TensorBoard scalars at the record's step; on resume,
    lines past the checkpoint's step are dropped (they are redone)."""

    def __init__(self, path: str | os.PathLike, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(path)
        kept = [rec for rec in read_step_log(self.path) if rec.get("step", 0) <= resume_step]
        atomic_write_bytes(self.path, "".join(json.dumps(rec) + "\n" for rec in kept).encode())
        self.events = SummaryWriter(str(self.path.parent / TENSORBOARD_DIR), purge_step=resume_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = int(record.get("step", 0))
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.events.add_scalar(key, value, step)
        self.events.flush()  # a kill loses nothing written so far

    def close(self) -> None:
        self.events.close()


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
