"""Fine-tune a searched architecture with MMDetection / MMSegmentation's Runner and report the metrics.

Transfer settings stay OpenMMLab configs (``transfer_configs/``); this module only fills in what the pipeline
knows (architecture, space, backbone checkpoint, data root, iteration budget), checks it all *before* the Runner is
built (a missing folder or a bad arch fails in a second, not after model construction), then runs MMEngine's own
train + val loops with ``resume=True`` so a stopped run continues from its last checkpoint in ``work_dir``.

Keys written into the config (the configs' placeholders for them are documented at their top):
``model.backbone.arch`` / ``.space`` (always), ``model.backbone.init_cfg`` (when a checkpoint is given), the
``data_root`` of every dataloader's dataset and the ``ann_file`` of evaluators that have one (when a data root is
given), ``train_cfg.max_iters`` (when given), ``work_dir``, ``resume``, ``launcher``.

CLI: ``python -m pinas.openmmlab.runner CONFIG --work-dir DIR --arch ARCH --space SPACE [--checkpoint PT]
[--data-root DIR] [--max-iters N] [--cfg-options k=v ...] [--launcher pytorch]`` (use ``torchrun`` with
``--launcher pytorch``).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import pinas.openmmlab  # noqa: F401  (the backbone, and the globals MMEngine's checkpoints need)
from pinas.io.stage_dirs import TransferDir
from pinas.space import get_space

BACKBONE_TYPE = "PiNASResNeSt"
_SPLITS = ("train", "val")  # the loaders this stage uses (test_* stays as the config says and is not checked)


def _datasets(dataset_cfg: Any) -> list:
    """A dataset config and the ones it wraps (RepeatDataset, ConcatDataset, ClassBalancedDataset...)."""
    if not isinstance(dataset_cfg, dict):
        return []
    inner = [dataset_cfg.get("dataset")] + list(dataset_cfg.get("datasets") or [])
    wrapped = [d for sub in inner if sub is not None for d in _datasets(sub)]
    return wrapped or [dataset_cfg]


def _set_data_root(cfg, data_root: Path) -> None:
    for split in ("train", "val", "test"):
        loader = cfg.get(f"{split}_dataloader")
        for ds in _datasets(loader.get("dataset") if loader else None):
            ds["data_root"] = str(data_root)
        evaluator = cfg.get(f"{split}_evaluator")
        datasets = _datasets(loader.get("dataset") if loader else None)
        if isinstance(evaluator, dict) and "ann_file" in evaluator and datasets and datasets[0].get("ann_file"):
            # e.g. CocoMetric scores against the validation annotation file of the same data root
            evaluator["ann_file"] = str(data_root / datasets[0]["ann_file"])


def _check_data(cfg) -> None:
    """Every folder and annotation file the train/val loaders and evaluator read must exist; name the first not."""
    for split in _SPLITS:
        loader = cfg.get(f"{split}_dataloader")
        for ds in _datasets(loader.get("dataset") if loader else None):
            root = Path(ds.get("data_root") or "")
            where = f"{split}_dataloader.dataset ({ds.get('type')}, data_root {str(root)!r})"
            if ds.get("data_root") and not root.is_dir():
                raise FileNotFoundError(f"{where}: data root {root} does not exist")
            if ds.get("ann_file") and not (root / ds["ann_file"]).is_file():
                raise FileNotFoundError(f"{where}: annotation file {root / ds['ann_file']} does not exist")
            for key, prefix in (ds.get("data_prefix") or {}).items():
                if prefix and not (root / prefix).is_dir():
                    raise FileNotFoundError(f"{where}: data_prefix.{key} folder {root / prefix} does not exist")
        evaluator = cfg.get(f"{split}_evaluator")
        if isinstance(evaluator, dict) and evaluator.get("ann_file") and not Path(evaluator["ann_file"]).is_file():
            raise FileNotFoundError(f"{split}_evaluator: ann_file {evaluator['ann_file']} does not exist")


def _set_max_iters(cfg, max_iters: int) -> None:
    """Shorten/extend an iteration-based schedule; schedulers that ended at the old last iteration follow it."""
    loop = cfg.train_cfg
    if loop.get("type") != "IterBasedTrainLoop":
        raise ValueError(f"max_iters needs train_cfg.type='IterBasedTrainLoop', the config has {loop.get('type')!r}")
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    old = loop["max_iters"]
    loop["max_iters"] = max_iters
    schedulers = cfg.get("param_scheduler") or []
    for sched in schedulers if isinstance(schedulers, list) else [schedulers]:
        if not sched.get("by_epoch", True) and sched.get("end") == old:
            sched["end"] = max_iters


def prepare_config(config: str | Path, work_dir: Path, *, arch: str, space: str, backbone_checkpoint: Path | None,
                   data_root: Path | None, max_iters: int | None = None, cfg_options: dict | None = None,
                   launcher: str = "none"):
    """Load ``config``, apply the stage's settings and validate everything a run reads; returns the Config."""
    from mmengine.config import Config

    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"transfer config {config} does not exist")
    search_space = get_space(space)
    parsed = search_space.parse(arch)  # ArchError names the bad layer / character
    cfg = Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    backbone = cfg.model.get("backbone", {})
    if backbone.get("type") != BACKBONE_TYPE:
        raise ValueError(f"{config}: model.backbone.type is {backbone.get('type')!r}, expected {BACKBONE_TYPE!r}")
    backbone["arch"], backbone["space"] = search_space.format(parsed), search_space.name
    if backbone_checkpoint is not None:
        backbone["init_cfg"] = {"type": "Pretrained", "checkpoint": str(backbone_checkpoint)}
    init_cfg = backbone.get("init_cfg") or {}
    if init_cfg.get("type") == "Pretrained" and not Path(init_cfg["checkpoint"]).is_file():
        raise FileNotFoundError(f"backbone checkpoint {init_cfg['checkpoint']} does not exist")
    if data_root is not None:
        data_root = Path(data_root)
        if not data_root.is_dir():
            raise FileNotFoundError(f"data root {data_root} does not exist")
        _set_data_root(cfg, data_root)
    _check_data(cfg)
    if max_iters is not None:
        _set_max_iters(cfg, max_iters)
    cfg.work_dir = str(work_dir)
    cfg.resume, cfg.load_from = True, None  # continue from work_dir/last_checkpoint when there is one
    cfg.launcher = launcher
    if cfg.get("visualizer"):
        # the Visualizer is a process-wide named instance: with a fixed name a second run writes into the first's
        cfg.visualizer["name"] = f"pinas_transfer_{os.getpid()}_{time.time_ns()}"
    _check_resumable(work_dir, {"config": config.name, "arch": backbone["arch"], "space": search_space.name})
    return cfg


def _check_resumable(work_dir: Path, identity: dict) -> None:
    """Refuse to resume a work_dir that holds another model's checkpoints (MMEngine would load them non-strictly)."""
    folder = TransferDir(work_dir)
    previous = folder.read_run()
    if folder.last_checkpoint() is not None and previous is not None:
        if previous != identity:
            raise ValueError(f"work_dir {work_dir} holds a run of {previous}, not {identity}: use another work_dir")


def _metrics_hook():
    from mmengine.hooks import Hook

    class RecordMetrics(Hook):
        """Keeps the iteration training started from (after resume) and the latest validation metrics."""

        priority = "VERY_LOW"

        def __init__(self):
            self.start_iter: int | None = None
            self.metrics: dict | None = None
            self.metrics_iter: int | None = None

        def before_train(self, runner) -> None:
            self.start_iter = runner.iter

        def after_val_epoch(self, runner, metrics=None) -> None:
            self.metrics, self.metrics_iter = dict(metrics or {}), runner.iter

    return RecordMetrics()


def peak_rss_mib() -> float:
    """This process's own peak RSS: /proc's VmHWM, which starts afresh at exec. getrusage's ru_maxrss is carried
    over from the parent at fork + exec, so a child of a large pipeline process would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_transfer(config: str | Path, work_dir: Path, *, arch: str, space: str, backbone_checkpoint: Path | None,
                 data_root: Path | None, max_iters: int | None = None, cfg_options: dict | None = None,
                 launcher: str = "none") -> dict:
    """Train + validate one transfer config; write and return ``{"metrics": ..., "wall_time_s": ..., ...}``.

    The returned record (also ``work_dir/metrics.json``, written atomically by rank 0) holds the validation metrics
    as MMEngine names them (``coco/bbox_mAP``, ``coco/segm_mAP``... or ``mIoU``, ``aAcc``...), the iteration the
    run started from (0, or the resumed checkpoint's), the final iteration, this call's wall time and the
    process's peak RSS (``getrusage``: the peak of the whole process, so earlier work in it counts too).
    """
    from mmengine.dist import is_main_process
    from mmengine.runner import Runner

    t0 = time.perf_counter()
    work_dir = Path(work_dir)
    cfg = prepare_config(config, work_dir, arch=arch, space=space, backbone_checkpoint=backbone_checkpoint,
                         data_root=data_root, max_iters=max_iters, cfg_options=cfg_options, launcher=launcher)
    runner = Runner.from_cfg(cfg)
    if is_main_process():
        TransferDir(work_dir).write_run({"config": Path(config).name, "arch": cfg.model.backbone.arch,
                                         "space": cfg.model.backbone.space})
    record = _metrics_hook()
    runner.register_hook(record)
    runner.train()
    metrics = record.metrics
    if metrics is None or record.metrics_iter != runner.iter:
        metrics = runner.val()  # the final weights were not validated in this call (e.g. resumed a finished run)
    result = {
        "config": str(config), "arch": cfg.model.backbone.arch, "space": cfg.model.backbone.space,
        "metrics": {k: float(v) if isinstance(v, (int, float, np.number)) else v for k, v in metrics.items()},
        "start_iter": record.start_iter, "end_iter": runner.iter,
        "wall_time_s": round(time.perf_counter() - t0, 2),
        "peak_rss_mib": peak_rss_mib(),
    }
    if is_main_process():
        TransferDir(work_dir).write_metrics(result)
    return result


def main(argv: list[str] | None = None) -> int:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(prog="python -m pinas.openmmlab.runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--arch", required=True, help="architecture string or named arch of --space")
    parser.add_argument("--space", default="resnest50", help="search-space preset (resnest50, demo)")
    parser.add_argument("--checkpoint", type=Path, help="retrained classifier state dict (backbone.* keys)")
    parser.add_argument("--data-root", type=Path, help="dataset root folder (e.g. .../coco)")
    parser.add_argument("--max-iters", type=int)
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="extra config overrides, key=value")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    result = run_transfer(args.config, args.work_dir, arch=args.arch, space=args.space,
                          backbone_checkpoint=args.checkpoint, data_root=args.data_root, max_iters=args.max_iters,
                          cfg_options=args.cfg_options, launcher=args.launcher)
    print({k: result[k] for k in ("metrics", "start_iter", "end_iter", "wall_time_s", "peak_rss_mib")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
