"""Checkpoints of a training loop: atomic, never torn, tensor-only, and tied to the settings that made them.

* A checkpoint holds the state of every stateful object *and* the torch / numpy RNG states and the step counter, so
  a run killed and restarted from its last checkpoint computes the same steps as one that was never interrupted.
* Files are written atomically and the previous one is kept until the new one is complete; loading falls back to
  the older file when the newest is unreadable.
* Everything is tensor-only (numpy generator states travel as JSON strings), so checkpoints load with
  ``torch.load(weights_only=True)``.
* Each checkpoint records the settings it was made with; resuming under other settings is refused with the
  differing fields named (:func:`check_same_settings`), because a resumed run would silently mix two recipes.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pinas.io.artifacts import ArtifactError, atomic_torch_save, load_tensors

log = logging.getLogger("pinas")


class SettingsMismatch(ValueError):
    """A checkpoint or finished run in a folder was made with other settings than the ones asked for now."""


def settings_diff(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``field: saved -> current`` for every (dotted, nested) field whose value differs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def check_same_settings(saved: dict[str, Any], current: dict[str, Any], where: Path, what: str) -> None:
    """Raise :class:`SettingsMismatch` naming the fields when ``saved`` (from ``where``) differs from ``current``."""
    diff = settings_diff(saved, current)
    if diff:
        raise SettingsMismatch(f"{where} holds a {what} made with a different config ({'; '.join(diff)}); use "
                               "another folder or the same config")


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
