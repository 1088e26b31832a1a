"""What every stage config and stage folder shares: settings that determine the result, and reuse of finished runs."""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pinas.engine.checkpoint import check_same_settings
from pinas.engine.launch import SINGLE_NODE, Nodes, run_module
from pinas.engine.loop import ProgressFn
from pinas.io.artifacts import ArtifactError, atomic_write_json
from pinas.io.stage_dirs import StageDir

log = logging.getLogger("pinas")


def result_settings(cls: type[BaseModel], dumped: dict[str, Any]) -> dict[str, Any]:
    """``dumped`` (the JSON form of a ``cls``) without the fields that do not change a result: the ``runtime_fields``
    a model class declares, at every level of nesting (e.g. ``search.evaluator.device``).

    This is the one rule for what a stage's result depends on: its checkpoints and finished runs are checked against
    it, and the pipeline's cache key and stage folder are computed from it, so a runtime-only change (workers,
    logging, the device) resumes in the same folder instead of starting over."""
    runtime = getattr(cls, "runtime_fields", frozenset())
    out = {}
    for name, value in dumped.items():
        if name in runtime:
            continue
        field = cls.model_fields.get(name)
        nested = field.annotation if field is not None else None
        if isinstance(value, dict) and isinstance(nested, type) and issubclass(nested, BaseModel):
            value = result_settings(nested, value)
        out[name] = value
    return out


class StageConfig(BaseModel):
    """A stage's config. ``runtime_fields`` change how a run executes or reports, not what it computes, so a
    checkpoint or finished run made under other values of them is still "the same run" (:func:`result_settings`)."""

    model_config = ConfigDict(extra="forbid")
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"device", "num_workers", "checkpoint_every", "log_every"})

    def settings(self) -> dict[str, Any]:
        """The JSON form of the fields that determine the result (what checkpoints are checked against)."""
        return self.settings_of(self.model_dump(mode="json"))

    @classmethod
    def settings_of(cls, dumped: dict[str, Any]) -> dict[str, Any]:
        return result_settings(cls, dumped)


class DistributedStageConfig(StageConfig):
    """A stage that runs on ``nproc`` processes on each of ``nodes`` machines (torchrun); in a pipeline both
    default to its ``devices`` and ``nodes.count``."""

    nproc: int = Field(1, ge=1, description="processes (GPUs) per node; > 1 launches torchrun (default: the "
                                            "pipeline's devices)")
    nodes: int = Field(1, ge=1, description="machines the stage spans (the pipeline's nodes.count)")

    @property
    def world_size(self) -> int:
        return self.nproc * self.nodes

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class TrainingStageConfig(DistributedStageConfig):
    """A stage that trains with SGD on batches of images. ``batch_size`` is always the **global** batch (every
    process of every node together), so a config means the same training on 1 GPU or 8: each process takes
    ``batch_size / world size`` images (:meth:`process_batch`), and the lr is ``base_lr`` at ``base_batch`` images,
    scaled linearly to ``batch_size`` (:attr:`lr`)."""

    batch_size: int = Field(ge=1, description="global batch: images per step over all processes")
    base_lr: float = Field(gt=0, description="SGD lr at base_batch images; scaled linearly to batch_size")
    base_batch: int = Field(ge=1)

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / self.base_batch

    def process_batch(self, world_size: int) -> int:
        """Images per process per step when ``world_size`` processes share the global batch."""
        if self.batch_size % world_size:
            raise ValueError(f"batch_size {self.batch_size} (the global batch) does not divide among "
                             f"{world_size} processes")
        return self.batch_size // world_size

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainingStageConfig:
        self.process_batch(self.world_size)
        return self


@dataclass(frozen=True)
class StageInputs:
    """What a stage reads, by name: finished upstream stage folders (``supernet``, ``linear-probe``, ``retrain``),
    finished transfers by task, dataset roots (``imagenet``, ``coco``, ...)."""

    stages: Mapping[str, Path] = field(default_factory=dict)
    datasets: Mapping[str, Path] = field(default_factory=dict)
    transfers: Mapping[str, Path] = field(default_factory=dict)

    def stage(self, name: str) -> Path:
        if name not in self.stages:
            raise ValueError(f"this stage reads the {name} stage's folder, and none was given")
        return Path(self.stages[name])

    def dataset(self, name: str) -> Path:
        if name not in self.datasets:
            raise ValueError(f"this stage reads the {name} dataset, and none was given")
        return Path(self.datasets[name])


@dataclass(frozen=True)
class StageContext:
    """How a stage runs, never what it computes: progress reports, the nodes of a distributed stage, the devices
    leased to it (environment variables of its processes)."""

    progress: ProgressFn | None = None
    nodes: Nodes = field(default_factory=lambda: SINGLE_NODE)
    env: Mapping[str, str] = field(default_factory=dict)


NO_CONTEXT = StageContext()  # one process on this node, no progress reports


def launch(stage: str, cfg: DistributedStageConfig, folder: StageDir, paths: Mapping[str, Path | None],
           rendezvous: Nodes = SINGLE_NODE, stop_after: int | None = None) -> None:
    """Run ``stage``'s per-process function under torchrun on this node, through the one entry point
    :mod:`pinas.stages.rank` (the config travels as JSON in the stage folder, the inputs as named paths)."""
    if rendezvous.count != cfg.nodes:
        raise ValueError(f"the stage spans {cfg.nodes} node(s), the rendezvous describes {rendezvous.count}")
    config = folder / "launch_config.json"
    atomic_write_json(config, cfg.model_dump(mode="json"))
    named = json.dumps({name: str(path) for name, path in paths.items() if path is not None})
    args = [stage, "--config", str(config), "--paths", named, "--out", str(folder.path)]
    run_module("pinas.stages.rank", args + ([] if stop_after is None else ["--stop-after", str(stop_after)]),
               nproc=cfg.nproc, nodes=rendezvous)


def finished_run(folder: StageDir, cfg: StageConfig) -> dict[str, Any] | None:
    """The manifest of a finished run of ``cfg`` in ``folder``, or None when it must (re)run.

    A finished run made with other settings is an error naming them; a damaged one is redone (with a warning).
    """
    if not folder.finished:
        return None
    saved = folder.manifest().get("config", {})
    check_same_settings(cfg.settings_of(saved), cfg.settings(), folder.path, f"finished {folder.stage} run")
    try:
        return folder.verify()
    except ArtifactError as exc:
        log.warning("finished %s in %s is damaged (%s): redoing its outputs", folder.stage, folder.path, exc)
        return None
