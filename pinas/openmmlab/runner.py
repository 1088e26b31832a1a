"""Fine-tune a searched architecture with MMDetection / MMSegmentation's Runner and report the metrics.

Transfer settings stay OpenMMLab configs (``transfer_configs/``); this module only fills in what the pipeline
knows (architecture, space, backbone checkpoint, data root, training length, AMP, lr scaling), takes the classes
from the data (:mod:`.datasets`), checks it all *before* the Runner is built (:mod:`.checks`: a missing folder, a
model that does not take the backbone, an empty split, label values outside the classes fail in seconds, not after
model construction or the first epoch), then runs MMEngine's own train + val loops with ``resume=True`` so a
stopped run continues from its last checkpoint in ``work_dir``.

Keys written into the config: ``model.backbone.arch`` / ``.space`` (always), ``model.backbone.init_cfg`` (when a
checkpoint is given), the ``data_root`` of every dataloader's dataset and the ``ann_file`` of evaluators that have
one (when a data root is given), the loaders' ``metainfo.classes`` (COCO-format data) and the heads'
``num_classes``, ``train_cfg.max_iters`` / ``max_epochs`` and the schedulers (with a length), ``optim_wrapper``
(AMP), ``auto_scale_lr.enable``, ``work_dir``, ``resume``, ``launcher``.

CLI: ``python -m pinas.openmmlab.runner CONFIG --work-dir DIR --arch ARCH --space SPACE [--checkpoint PT]
[--data-root DIR] [--length N] [--amp auto|on|off] [--auto-scale-lr] [--cfg-options k=v ...] [--launcher pytorch]
[--check-only]`` (use ``torchrun`` with ``--launcher pytorch``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

import pinas.openmmlab  # noqa: F401  (the backbone, and the globals MMEngine's checkpoints need)
from pinas.io.stage_dirs import TransferDir
from pinas.openmmlab.checks import TransferConfigError, check_transfer, registries
from pinas.openmmlab.datasets import apply_data_classes, check_paths, set_data_root
from pinas.openmmlab.schedule import scale_lr_with_batch, set_train_length, use_amp_optim_wrapper
from pinas.space import get_space

BACKBONE_TYPE = "PiNASResNeSt"


def prepare_config(config: str | Path, work_dir: Path, *, arch: str, space: str, backbone_checkpoint: Path | None,
                   data_root: Path | None, length: int | None = None, cfg_options: dict | None = None,
                   launcher: str = "none", amp: str = "off", auto_scale_lr: bool = False):
    """Load ``config``, apply the stage's settings and validate every path a run reads; returns (Config, classes)."""
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
        set_data_root(cfg, data_root)
    check_paths(cfg)
    classes = apply_data_classes(cfg, registries(cfg)[1])
    if length is not None:
        set_train_length(cfg, length)
    if amp == "on" or (amp == "auto" and torch.cuda.is_available()):
        use_amp_optim_wrapper(cfg)
    if auto_scale_lr:
        scale_lr_with_batch(cfg)
    cfg.work_dir = str(work_dir)
    cfg.resume, cfg.load_from = True, None  # continue from work_dir/last_checkpoint when there is one
    cfg.launcher = launcher
    if cfg.get("visualizer"):
        # the Visualizer is a process-wide named instance: with a fixed name a second run writes into the first's
        cfg.visualizer["name"] = f"pinas_transfer_{os.getpid()}_{time.time_ns()}"
        backends = cfg.visualizer.setdefault("vis_backends", [])
        if not any(b.get("type") == "TensorboardVisBackend" for b in backends):  # beside the other stages' curves
            backends.append({"type": "TensorboardVisBackend"})
    _check_resumable(work_dir, {"config": config.name, "arch": backbone["arch"], "space": search_space.name})
    return cfg, classes


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


def checked_config(config: str | Path, work_dir: Path, **settings):
    """:func:`prepare_config` then :func:`pinas.openmmlab.checks.check_transfer`: (Config, classes) of a config
    that can train on its data, or the first problem as an exception naming it."""
    cfg, classes = prepare_config(config, work_dir, **settings)
    check_transfer(cfg, Path(config), classes)
    return cfg, classes


def no_detection_metrics(evaluator: dict) -> dict[str, float]:
    """The AP of a detector that output nothing (every score under the test threshold): 0, by definition.

    MMDetection's ``CocoMetric`` then logs "The testing results of the whole dataset is empty" and returns no
    metrics at all, which would read downstream as "not evaluated"; other evaluators return nothing here.
    """
    from mmengine.logging import print_log

    if not isinstance(evaluator, dict) or evaluator.get("type") != "CocoMetric":
        return {}
    kinds = evaluator.get("metric", "bbox")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    print_log("the detector output no detection above its test score threshold: its AP is 0", "current", 30)
    return {f"{evaluator.get('prefix') or 'coco'}/{kind}_mAP": 0.0 for kind in kinds}


def run_transfer(config: str | Path, work_dir: Path, **settings) -> dict:
    """Train + validate one transfer config; write and return ``{"metrics": ..., "wall_time_s": ..., ...}``.

    The returned record (also ``work_dir/metrics.json``, written atomically by rank 0) holds the validation metrics
    as MMEngine names them (``coco/bbox_mAP``, ``coco/segm_mAP``... or ``mIoU``, ``aAcc``...), the iteration the
    run started from (0, or the resumed checkpoint's), the final iteration, this call's wall time and the
    process's peak RSS. ``settings`` are :func:`prepare_config`'s; the config is checked
    (:func:`checked_config`) before the Runner is built.
    """
    from mmengine.dist import is_main_process
    from mmengine.runner import Runner

    t0 = time.perf_counter()
    work_dir = Path(work_dir)
    cfg, classes = checked_config(config, work_dir, **settings)
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
    metrics = metrics or no_detection_metrics(cfg.val_evaluator)
    result = {
        "config": str(config), "arch": cfg.model.backbone.arch, "space": cfg.model.backbone.space,
        "classes": list(classes),
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
    parser.add_argument("--length", "--max-iters", type=int, dest="length",
                        help="training length in the config's unit (iterations, or epochs for epoch-based configs)")
    parser.add_argument("--amp", choices=["auto", "on", "off"], default="off", help="auto: AmpOptimWrapper on GPU")
    parser.add_argument("--auto-scale-lr", action="store_true", help="scale the lr to the global batch")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="extra config overrides, key=value")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--check-only", action="store_true", help="validate the config and data, train nothing")
    parser.add_argument("--no-weights", action="store_true",
                        help="build the backbone without its init_cfg weights (a check before they exist)")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg_options = dict(args.cfg_options or {})
    if args.no_weights:
        cfg_options["model.backbone.init_cfg"] = None
    settings = dict(arch=args.arch, space=args.space, backbone_checkpoint=args.checkpoint, data_root=args.data_root,
                    length=args.length, amp=args.amp, auto_scale_lr=args.auto_scale_lr, cfg_options=cfg_options,
                    launcher=args.launcher)
    if args.check_only:  # one JSON line either way: the pipeline's pre-flight check reads it
        try:
            _, classes = checked_config(args.config, args.work_dir, **settings)
        except (TransferConfigError, FileNotFoundError, ValueError) as exc:
            print(json.dumps({"error": str(exc)}))
            return 2
        print(json.dumps({"checked": str(args.config), "classes": list(classes)}))
        return 0
    result = run_transfer(args.config, args.work_dir, **settings)
    print(json.dumps({k: result[k] for k in ("metrics", "start_iter", "end_iter", "wall_time_s", "peak_rss_mib")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
