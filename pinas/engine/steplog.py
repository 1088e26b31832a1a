"""Per-step metrics as JSON lines (the training curves), consistent with the checkpoint a run resumed from."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pinas.io.artifacts import atomic_write_bytes


class StepLog:
    """Appends one JSON line per record; on resume, lines past the checkpoint's step are dropped (they are redone)."""

    def __init__(self, path: str | os.PathLike, resume_step: int = 0):
        self.path = Path(path)
        kept = [rec for rec in read_step_log(self.path) if rec.get("step", 0) <= resume_step]
        atomic_write_bytes(self.path, "".join(json.dumps(rec) + "\n" for rec in kept).encode())

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


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
