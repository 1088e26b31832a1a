"""Stage 4: one OpenMMLab transfer task (COCO, ADE20K or Cityscapes) on the retrained backbone.

:func:`pinas.openmmlab.runner.run_transfer` runs an MMDetection / MMSegmentation config with MMEngine's Runner and
resumes from its own ``last_checkpoint``; this stage picks the config per dataset, takes the architecture and weights
from the retrain stage's folder, runs ``python -m pinas.openmmlab.runner`` in a child process (under ``torchrun`` for
several GPUs), and writes the stage manifest.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pinas.engine.launch import run_module
from pinas.engine.placement import DevicePool, Placement, share
from pinas.io.stage_dirs import RetrainDir, TransferDir
from pinas.stages.common import NO_CONTEXT, StageContext, StageInputs

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "transfer_configs"
TransferName = Literal["coco", "ade20k", "cityscapes"]


def resolve_config(path: str) -> Path:
    candidate = Path(path).expanduser()
    resolved = candidate if candidate.is_absolute() else CONFIGS_DIR / candidate
    if not resolved.is_file():
        raise ValueError(f"transfer config {path} not found (looked at {resolved})")
    return resolved


class TransferTask(BaseModel):
    """One downstream task: an OpenMMLab config (relative paths resolve in ``transfer_configs/``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false: this task is not run (tasks are never dropped silently)")
    config: str
    length: int | None = Field(None, ge=1, description="training length in the config's own unit: iterations, or "
                               "epochs for an epoch-based config (the schedulers follow); default: the config's")
    amp: Literal["auto", "on", "off"] = Field("auto", description="auto: AmpOptimWrapper on GPU")
    auto_scale_lr: bool = Field(True, description="scale the lr to the global batch (batch per process x nproc) "
                                                  "against the config's auto_scale_lr.base_batch_size")
    cfg_options: dict[str, Any] = Field(default_factory=dict, description="extra MMEngine config overrides")
    nproc: int | None = Field(None, ge=1, description="processes (GPUs); > 1 launches torchrun. Default: its share of "
                                                     "the pipeline's devices (transfer.placement)")

    @field_validator("config")
    @classmethod
    def _config_exists(cls, value: str) -> str:
        resolve_config(value)  # a missing file is reported with the config, before anything trains
        return value


def _paper_tasks() -> dict[str, TransferTask]:
    return {"coco": TransferTask(config="mask-rcnn_pinas-trans_fpn_syncbn_1x_coco.py"),
            "ade20k": TransferTask(config="deeplabv3_pinas-trans_os8_ade20k.py"),
            "cityscapes": TransferTask(config="deeplabv3_pinas-trans_os8_cityscapes.py")}


class TransferConfig(BaseModel):
    """The transfer tasks; each is an independent stage of the pipeline.

    A ``tasks`` section is merged over the paper's three tasks, so ``tasks: {coco: {nproc: 8}}`` changes one field of
    one task; ``enabled: false`` is how a task is left out.
    """

    model_config = ConfigDict(extra="forbid")

    tasks: dict[TransferName, TransferTask] = Field(default_factory=_paper_tasks)
    placement: Placement = Field("parallel", description="parallel: the tasks share the devices, each on its own "
                                 "part; sequential: one task after another, each on all of them")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="where the transfers train: auto = the "
                                                   "node's GPUs when it has any")
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"device", "placement"})

    @field_validator("tasks", mode="before")
    @classmethod
    def _merge_over_the_paper_tasks(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        merged = {name: task.model_dump() for name, task in _paper_tasks().items()}
        for name, task in value.items():
            given = task.model_dump(exclude_unset=True) if isinstance(task, TransferTask) else task
            merged[name] = {**merged.get(name, {}), **given} if isinstance(given, dict) else given
        return merged

    def kind(self) -> Literal["cuda", "cpu"]:
        """The device kind the transfers train on (``device``, ``auto`` resolved on this node)."""
        return "cuda" if self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available()) else "cpu"

    def enabled(self) -> dict[str, TransferTask]:
        """The tasks that run, in pipeline order."""
        return {name: task for name, task in self.tasks.items() if task.enabled}

    def placed(self, pool: DevicePool) -> dict[str, tuple[TransferTask, int]]:
        """Each enabled task with its process count settled, and how many of the pool's devices it leases."""
        tasks, out = self.enabled(), {}
        processes, devices = share(self.placement, pool.size, len(tasks), pool.kind)
        for name, task in tasks.items():
            nproc = task.nproc or processes
            lease = nproc if pool.kind == "cuda" else max(nproc, devices)
            if lease > pool.size:
                raise ValueError(f"transfer.tasks.{name}.nproc = {nproc} needs {lease} devices, this node has "
                                 f"{pool.size}")
            out[name] = (task.model_copy(update={"nproc": nproc}), lease)
        return out


def runner_args(task: TransferTask, work_dir: Path, arch: str, space: str, data_root: Path) -> list[str]:
    """The ``python -m pinas.openmmlab.runner`` arguments of a task (the pre-flight check uses the same)."""
    args = [str(resolve_config(task.config)), "--work-dir", str(work_dir), "--arch", arch, "--space", space,
            "--data-root", str(data_root), "--amp", task.amp]
    if task.auto_scale_lr:
        args.append("--auto-scale-lr")
    if task.length:
        args += ["--length", str(task.length)]
    if task.cfg_options:
        args += ["--cfg-options", *(f"{k}={mmengine_literal(v)}" for k, v in task.cfg_options.items())]
    return args


def mmengine_literal(value: Any) -> str:
    """A YAML value as MMEngine's ``--cfg-options`` reads it back. YAML has no tuples, and OpenMMLab's sizes and
    scales must be tuples, so a pair of numbers becomes one (``[256, 160]`` -> ``(256, 160)``); longer lists stay
    lists (``in_channels``)."""
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return f"({value[0]}, {value[1]})"
        return "[" + ", ".join(mmengine_literal(v) for v in value) + "]"
    if value is None:
        return "None"
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) else str(value)


def child_env() -> dict[str, str]:
    """One intra-op thread per child unless the user says otherwise (torchrun's own default): the transfers run
    side by side, and oversubscribed threads are several times slower (docs/measurements.md)."""
    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def run(cfg: TransferTask, inputs: StageInputs, out_dir: Path, ctx: StageContext = NO_CONTEXT) -> dict:
    """The pipeline's entry (:mod:`pinas.stages.graph`): one task, named by the one dataset it reads."""
    if len(inputs.datasets) != 1:
        raise ValueError(f"a transfer reads one dataset (its task's), got {sorted(inputs.datasets)}")
    (task, root), = inputs.datasets.items()
    return run_transfer_stage(task, cfg, inputs.stage("retrain"), Path(root), out_dir, env=dict(ctx.env))


def run_transfer_stage(name: str, task: TransferTask, retrain_dir: Path, data_root: Path, out_dir: Path,
                       env: dict[str, str] | None = None) -> dict:
    """Fine-tune the retrained backbone on one task; returns the stage manifest (metrics from the final val).

    ``env``: the devices it runs on (:meth:`pinas.engine.placement.DevicePool.env`)."""
    config = resolve_config(task.config)
    retrain, folder = RetrainDir(retrain_dir), TransferDir(out_dir, task=name)
    retrain.require("retrain folder")
    model_cfg = retrain.model_config()
    # always a child process: MMEngine keeps global state (default scope, message hub), so two runners in one
    # process would interfere, and the pipeline runs the three transfers at the same time
    args = runner_args(task, folder.path, model_cfg["arch"], model_cfg["space"], data_root) + [
        "--checkpoint", str(retrain / RetrainDir.MODEL)]
    nproc = task.nproc or 1
    if nproc > 1:
        args += ["--launcher", "pytorch"]
    run_module("pinas.openmmlab.runner", args, nproc=nproc, env={**child_env(), **(env or {})},
               log_file=folder / TransferDir.LOG)
    result = folder.metrics()
    # MMEngine's newest checkpoint joins the manifest so corruption is caught
    last = folder.last_checkpoint()
    files = [TransferDir.METRICS] + ([last.name] if last is not None and last.is_file() else [])
    metrics = {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float))}
    metrics.update(wall_time_s=result["wall_time_s"], peak_rss_mib=result["peak_rss_mib"])
    return folder.write_manifest(files, task.model_dump(), metrics,
                                 extra={"arch": model_cfg["arch"], "space": model_cfg["space"],
                                        "config_file": str(config)})
