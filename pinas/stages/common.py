"""What every stage config and stage folder shares: settings that determine the result, and reuse of finished runs."""
from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pinas.engine.checkpoint import check_same_settings
from pinas.engine.launch import SINGLE_NODE, Nodes, run_module
from pinas.io.artifacts import ArtifactError, atomic_write_json
from pinas.io.stage_dirs import StageDir

log = logging.getLogger("pinas")


class StageConfig(BaseModel):
    """A stage's config. ``runtime_fields`` change how a run executes or reports, not what it computes, so a
    checkpoint or finished run made under other values of them is still "the same run"."""

    model_config = ConfigDict(extra="forbid")
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"device", "num_workers", "checkpoint_every", "log_every"})

    def settings(self) -> dict[str, Any]:
        """The JSON form of the fields that determine the result (what checkpoints are checked against)."""
        return self.settings_of(self.model_dump(mode="json"))

    @classmethod
    def settings_of(cls, dumped: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in dumped.items() if k not in cls.runtime_fields}


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


def launch(module: str, cfg: DistributedStageConfig, folder: StageDir, args: list[str],
           rendezvous: Nodes = SINGLE_NODE) -> None:
    """Run a stage's ``main`` under torchrun on this node (the config travels as JSON in the stage folder)."""
    if rendezvous.count != cfg.nodes:
        raise ValueError(f"the stage spans {cfg.nodes} node(s), the rendezvous describes {rendezvous.count}")
    config = folder / "launch_config.json"
    atomic_write_json(config, cfg.model_dump(mode="json"))
    run_module(module, ["--config", str(config), *args], nproc=cfg.nproc, nodes=rendezvous)


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
