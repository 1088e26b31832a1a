"""The pipeline's stages in one table: what each is called, which config section sets it, what it reads, how it runs
and what it reports.

Everything that walks the stages reads this table: the config's check that a run has what its stages need
(:func:`check_needs`), the Prefect flow on node 0 and on the follower nodes (:func:`plan`), the CLI's summary and
``status``. Adding a stage means a row here and the stage's own module (its config class, its folder class in
:mod:`pinas.io.stage_dirs`, and ``run(cfg, inputs, out_dir, ctx)``), nothing else. Prefect-free, so the table is
also what a test or another orchestrator drives.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pinas.io.stage_dirs import (
    ExportDir,
    ProbeDir,
    RetrainDir,
    SearchDir,
    StageDir,
    StudyDir,
    SupernetDir,
    TransferDir,
)
from pinas.stages import export, linear_probe, retrain, search, study, supernet, transfer
from pinas.stages.common import StageContext, StageInputs

SEARCHED = "searched"  # PipelineConfig.arch: retrain the search stage's best


@dataclass(frozen=True)
class Stage:
    """A row of the table. ``reads`` are the upstream stages whose hand-off files it reads (some only under a
    setting: :func:`reads`); ``datasets`` the dataset roots (a transfer reads its own task's); ``distributed``
    stages run torchrun processes on every node, the others on node 0 only."""

    name: str
    section: str
    config: type[BaseModel]
    folder: type[StageDir]
    run: Callable[[Any, StageInputs, Path, StageContext], Any]
    title: str
    reads: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ("imagenet",)
    distributed: bool = False
    selectable: bool = True  # listed in config.stages by the user (the probe is run when the search needs it)
    per_task: bool = False  # one instance per enabled transfer task, run concurrently
    headline: tuple[str, ...] = ()
    #: one process of a distributed run, ``(cfg, named paths, out_dir, stop_after)``: what torchrun starts
    rank: Callable[[Any, dict[str, Path], Path, int | None], None] | None = None


STAGES: tuple[Stage, ...] = (
    Stage("supernet", "supernet", supernet.SupernetConfig, SupernetDir, supernet.run, "Supernet-Pi training",
          distributed=True, rank=supernet.train_rank, headline=("first_loss", "final_loss")),
    Stage("linear-probe", "linear_probe", linear_probe.LinearProbeConfig, ProbeDir, linear_probe.run, "Linear probe",
          reads=("supernet",), distributed=True, rank=linear_probe.train_rank, selectable=False,
          headline=("val_top1",)),
    Stage("search", "search", search.SearchConfig, SearchDir, search.run, "Architecture search",
          reads=("supernet", "linear-probe"), distributed=True, rank=search.train_rank,
          headline=("best_arch", "best_score", "random_population_median_score")),
    Stage("retrain", "retrain", retrain.RetrainConfig, RetrainDir, retrain.run, "Retraining",
          reads=("search", "supernet"), distributed=True, rank=retrain.train_rank, headline=("top1", "top5")),
    Stage("transfer", "transfer", transfer.TransferTask, TransferDir, transfer.run, "Transfer", reads=("retrain",),
          datasets=(), per_task=True,
          headline=("coco/bbox_mAP", "coco/segm_mAP", "mIoU", "aAcc", "wall_time_s", "peak_rss_mib")),
    Stage("export", "export", export.ExportConfig, ExportDir, export.run, "ONNX export", reads=("retrain", "transfer"),
          headline=("parity_max_abs_diff", "top1_agreement", "latency_ratio_b1", "latency_ratio_b32")),
    # the ranking study's last step (pinas-pipeline study): not a pipeline stage, no stage reads it
    Stage("study", "study", study.StudyScoreConfig, StudyDir, study.run, "Ranking study",
          reads=("supernet", "linear-probe"), selectable=False),
)
BY_NAME = {stage.name: stage for stage in STAGES}
SELECTABLE: tuple[str, ...] = tuple(stage.name for stage in STAGES if stage.selectable)


def reads(stage: Stage, config: Any) -> tuple[str, ...]:
    """The upstream stages ``stage`` reads in a run of ``config`` (a :class:`~pinas.config.PipelineConfig`): the
    search reads the probe only for the linear-probe proxy, the retrain reads the search only for the searched
    architecture and the supernet only with ``init_from_supernet``; the export reads the transfers that run."""
    optional = {("search", "linear-probe"): config.search.evaluator.proxy == "linear_probe",
                ("retrain", "search"): config.arch == SEARCHED,
                ("retrain", "supernet"): config.retrain.init_from_supernet,
                ("export", "transfer"): "transfer" in config.stages}
    return tuple(name for name in stage.reads if optional.get((stage.name, name), True))


def required(stage: Stage, config: Any) -> set[str]:
    """The selectable stages that must run in the same run as ``stage`` (the export documents transfers if they
    ran; it does not need them)."""
    return {name for name in reads(stage, config) if BY_NAME[name].selectable and name != "transfer"}


def check_needs(config: Any) -> None:
    """Every selected stage has the stages it reads in the same run; a ValueError names what is missing."""
    chosen = set(config.stages)
    for name in config.stages:
        missing = required(BY_NAME[name], config) - chosen - {name}
        if missing:
            hint = " (or set arch to an architecture)" if name == "retrain" and "search" in missing else ""
            raise ValueError(f"stages: {name!r} needs {sorted(missing)} in the same run{hint}")


@dataclass(frozen=True)
class Step:
    """One stage of one run: ``name`` is the stage's folder and task name (``transfer-coco`` for a task)."""

    name: str
    stage: Stage
    config: Any  # the stage's config section (a transfer: its task; the retrain: with the chosen arch)
    reads: tuple[str, ...]  # step names
    datasets: tuple[str, ...]
    task: str | None = None


def step_name(stage: str, task: str) -> str:
    """The name of a per-task stage's step: its folder and task name, e.g. ``transfer-coco``."""
    return f"{stage}-{task}"


def plan(config: Any) -> list[Step]:
    """The steps of a run of ``config`` in order (the retrain's architecture is settled by :func:`with_arch`)."""
    steps: list[Step] = []
    tasks = config.transfer.enabled() if "transfer" in config.stages else {}
    for stage in STAGES:
        if stage.selectable and stage.name not in config.stages:
            continue
        if not stage.selectable and not any(stage.name in reads(BY_NAME[s], config) for s in config.stages):
            continue
        upstream: list[str] = []
        for name in reads(stage, config):
            upstream += [step_name(name, t) for t in tasks] if BY_NAME[name].per_task else [name]
        if stage.per_task:
            steps += [Step(step_name(stage.name, task), stage, task_cfg, tuple(upstream), (task,), task)
                      for task, task_cfg in tasks.items()]
        else:
            steps.append(Step(stage.name, stage, getattr(config, stage.section), tuple(upstream), stage.datasets))
    return steps


def with_arch(step: Step, config: Any, records: dict[str, dict]) -> Step:
    """The retrain step with the architecture the run chose (the searched best, or ``config.arch``)."""
    if step.stage.name != "retrain":
        return step
    arch = records["search"]["metrics"]["best_arch"] if config.arch == SEARCHED else config.arch
    cfg = type(step.config).model_validate({**step.config.model_dump(), "arch": arch})  # canonical form
    return replace(step, config=cfg)


def inputs_from(upstream: dict[str, dict]) -> StageInputs:
    """A stage's inputs from the records it reads: stage records (``dir``; a transfer's also names its ``task``)
    and dataset records (``path``, ``fingerprint``)."""
    stages = {name: Path(rec["dir"]) for name, rec in upstream.items() if "dir" in rec and not rec.get("task")}
    transfers = {rec["task"]: Path(rec["dir"]) for rec in upstream.values() if rec.get("task")}
    datasets = {name: Path(rec["path"]) for name, rec in upstream.items() if "fingerprint" in rec}
    return StageInputs(stages=stages, datasets=datasets, transfers=transfers)


def step_names(config: Any) -> list[str]:
    """The folder / task names of a run's stages, in order (what ``status`` expects to find)."""
    return [step.name for step in plan(config)]
