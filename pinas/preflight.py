"""Every check a run can make before it trains anything, so a bad setting costs seconds, not a trained supernet.

:func:`check_run` looks at the resolved config together with the data it will read: enough images for each stage's
batch, classes for the classifier stages, search constraints that some architecture of the space can meet (params
and MACs from the cost model at the data's number of classes, latency from the latency table), and every enabled
transfer task's OpenMMLab config against its dataset (the model takes the backbone, no split is empty after the
config's filtering, segmentation labels lie in the classes; :mod:`pinas.openmmlab.checks`, in child processes).
All problems are reported together, one line each, naming the field or file. A passed check of the transfers is
remembered under the run root (keyed by their settings and the data's fingerprints), so an unchanged re-run does
not pay for it again.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from pinas import __version__
from pinas.config import SEARCHED, PipelineConfig
from pinas.data.images import DataError, ImageList, scan_image_folder
from pinas.io.artifacts import atomic_write_json
from pinas.search.constraints import Constraints, LatencyTable, cost_model
from pinas.space import get_space
from pinas.stages.graph import plan
from pinas.stages.retrain import validate_inputs
from pinas.stages.transfer import child_env, runner_args

CHECKED_DIR = "preflight"  # under the run root: one file per passed transfer check


class PreflightError(ValueError):
    """Settings that cannot work with this data; one line per problem."""


def check_run(config: PipelineConfig, datasets: dict[str, dict], run_root: Path) -> None:
    """Raise :class:`PreflightError` listing every problem found, or return when the run can start."""
    problems: list[str] = []
    imagenet = Path(datasets["imagenet"]["path"])
    try:
        train, classes = scan_image_folder(imagenet / "train")
    except DataError as exc:
        raise PreflightError(f"data.imagenet: {exc}") from None
    stages = set(config.stages)
    if "supernet" in stages:
        problems += _supernet_problems(config, config.supernet.objective, imagenet, train, classes)
    if "search" in stages:
        problems += _search_problems(config, imagenet, train, classes)
    if "retrain" in stages:
        arch = config.arch if config.arch != SEARCHED else get_space(config.retrain.space).format(
            get_space(config.retrain.space).default_arch())
        try:
            validate_inputs(config.retrain.model_copy(update={"arch": arch}), imagenet)
        except (DataError, ValueError) as exc:
            problems.append(f"retrain: {exc}")
    problems += _device_problems(config)
    if "transfer" in stages:
        problems += _transfer_problems(config, datasets, Path(run_root))
    if problems:  # the holdout is checked for the supernet and the search alike: each problem once
        raise PreflightError("the run cannot start:\n" + "\n".join(f"  {p}" for p in dict.fromkeys(problems)))


def _device_problems(config: PipelineConfig) -> list[str]:
    """More processes per node than the node has GPUs (or, on CPU, cores), and transfers on CUDA without GPUs or
    without mmcv's CUDA ops (Mask R-CNN's RoIAlign and NMS would fail deep inside MMDetection, hours in)."""
    problems = []
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = os.cpu_count() or 1
    sections = [step.stage.section for step in plan(config) if step.stage.distributed]
    devices = {s: getattr(config, s).evaluator.device if s == "search" else getattr(config, s).device
               for s in sections}  # the search runs where its evaluator does
    on_gpu = [s for s in sections if devices[s] == "cuda" or (devices[s] == "auto" and gpus)]
    have = {s: (gpus, f"{gpus} GPU(s)") if s in on_gpu else (cores, f"{cores} CPU core(s)") for s in sections}
    over = [s for s in sections if getattr(config, s).nproc > have[s][0]]
    if over and not config.oversubscribe:
        problems.append(f"devices = {config.devices}: {', '.join(over)} would run "
                        f"{max(getattr(config, s).nproc for s in over)} processes per node, and this node has "
                        f"{have[over[0]][1]}; set devices (or the stage's nproc) to at most {have[over[0]][0]}, "
                        "or oversubscribe: true to run them anyway")
    if "transfer" in config.stages and config.transfer.kind() == "cuda":
        if not gpus:
            problems.append("transfer.device = cuda, and this node has no GPU torch can use")
        ops = mmcv_cuda_ops()
        if ops != "ok":
            problems.append(f"transfer: the transfers run on CUDA, but {ops}; build mmcv with its CUDA ops on this "
                            "machine (MMCV_WITH_OPS=1 FORCE_CUDA=1 pip install mmcv==2.1.0 --no-binary mmcv, with "
                            "nvcc on PATH) or install OpenMMLab's prebuilt wheel for your torch/CUDA pair, or set "
                            "transfer.device: cpu")
    return problems


def mmcv_cuda_ops() -> str:
    """"ok" when mmcv's compiled ops have CUDA kernels, else what is wrong (checked in this process: the
    extension only reports how it was compiled, no GPU is touched)."""
    try:
        from mmcv.ops import get_compiling_cuda_version
    except ImportError as exc:
        return f"mmcv's compiled ops do not load ({exc})"
    version = get_compiling_cuda_version()
    return "ok" if version and version != "not available" else "mmcv's ops were compiled without CUDA"


def check_study(config: PipelineConfig, imagenet: Path) -> None:
    """The checks of :func:`check_run` that the ranking study's supernets need, for each of its objectives."""
    try:
        train, classes = scan_image_folder(imagenet / "train")
    except DataError as exc:
        raise PreflightError(f"data.imagenet: {exc}") from None
    problems = sorted({p for objective in config.study.supernets
                       for p in _supernet_problems(config, objective, imagenet, train, classes)})
    if problems:
        raise PreflightError("the study cannot start:\n" + "\n".join(f"  {p}" for p in problems))


def _supernet_problems(config: PipelineConfig, objective: str, imagenet: Path, train: list,
                       classes: list[str]) -> list[str]:
    problems = _holdout_problems(config, imagenet)
    kept = len(train) - config.data.search_holdout.count(len(train))
    if not problems and kept < config.supernet.batch_size:
        problems.append(f"supernet.batch_size: {imagenet / 'train'} has {kept} images besides the search "
                        f"holdout, fewer than one global batch ({config.supernet.batch_size})")
    if objective == "spos" and len(classes) < 2:
        problems.append(f"supernet.objective spos trains a classifier: {imagenet / 'train'} has the classes "
                        f"{classes}, it needs at least 2")
    return problems


def _holdout_problems(config: PipelineConfig, imagenet: Path) -> list[str]:
    try:
        config.data.search_holdout.split(ImageList.scan(imagenet / "train"))
    except DataError as exc:
        return [f"data.search_holdout: {exc}"]
    return []


def _search_problems(config: PipelineConfig, imagenet: Path, train: list, classes: list[str]) -> list[str]:
    search, problems = config.search, _holdout_problems(config, imagenet)
    if search.evaluator.proxy == "linear_probe":
        if len(classes) < 2:
            problems.append(f"search.evaluator.proxy: linear_probe needs labelled images of at least 2 classes, "
                            f"{imagenet / 'train'} has {classes}")
        elif len(train) - config.data.search_holdout.count(len(train)) < config.linear_probe.batch_size:
            problems.append(f"linear_probe.batch_size: the training images besides the search holdout are fewer "
                            f"than one global batch of {config.linear_probe.batch_size}")
    space = get_space(config.supernet.space)
    latency = None
    if search.latency_table:
        try:
            latency = LatencyTable.load(search.latency_table, space)
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"search.latency_table: {exc}")
    try:
        Constraints.from_config(search, latency).check_reachable(
            lambda: cost_model(space, search.num_classes or len(classes)), latency)
    except ValueError as exc:
        problems.append(f"search: {exc}")
    return problems


def _transfer_problems(config: PipelineConfig, datasets: dict[str, dict], run_root: Path) -> list[str]:
    """Check every enabled task in a child process of its own (MMEngine keeps global state); all at once."""
    space = get_space(config.retrain.space)
    arch = config.arch if config.arch != SEARCHED else space.format(space.default_arch())  # any arch: same channels
    runs, problems = {}, []
    for name, task in config.transfer.enabled().items():
        key = hashlib.sha256(json.dumps({"task": task.model_dump(), "space": space.name, "version": __version__,
                                         "data": datasets[name]["fingerprint"]}, sort_keys=True).encode())
        done = run_root / CHECKED_DIR / f"{name}-{key.hexdigest()[:16]}.json"
        if done.is_file():
            continue
        work_dir = run_root / CHECKED_DIR / f"unused-work-dir-{name}"  # a check builds no Runner, writes nothing
        args = runner_args(task, work_dir, arch, space.name, Path(datasets[name]["path"]))
        runs[name] = (done, subprocess.Popen([sys.executable, "-m", "pinas.openmmlab.runner", *args, "--check-only",
                                              "--no-weights"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True, env={**os.environ, **child_env()}))
    for name, (done, proc) in runs.items():
        out, err = proc.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else {"error": f"the check crashed:\n{err[-2000:]}"}
        if "error" in result:
            problems.append(f"transfer.tasks.{name} ({config.transfer.tasks[name].config}): {result['error']}")
        else:
            atomic_write_json(done, result)
    return problems
