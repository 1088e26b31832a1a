"""Stage: the shared linear probe on the frozen supernet (method doc 3.2), the classifier of the search proxy.

One ``Linear(feature_dim, num_classes)`` on the globally pooled student features is trained over *all* paths at
once: every iteration draws a uniformly random path, the supernet's weights stay frozen and its BNs stay in train
mode (batch statistics, as the released code does), and only the head learns. A candidate is later scored by this
one head after recalibrating its path's BNs (:class:`pinas.search.proxies.ProbeProxy`), so the search never trains
anything per candidate.

Outputs (:class:`~pinas.io.stage_dirs.ProbeDir`): ``probe.pt`` (tensor-only ``{"weight", "bias"}``), ``probe.json``
(classes, feature dimension, space, steps), ``metrics.jsonl`` (the training curve), ``checkpoints/`` and the
manifest.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pinas.data.images import (
    DataError,
    ImageList,
    SearchHoldout,
    TrainCrops,
    batch_loader,
    check_classes,
    scan_image_folder,
)
from pinas.data.transforms import crop_flip
from pinas.engine.distributed import barrier, broadcast_object, init_distributed, resolve_device, wrap_ddp
from pinas.engine.launch import SINGLE_NODE, Nodes
from pinas.engine.loop import ProgressFn, TrainLoop, default_hooks
from pinas.engine.sampler import EpochBatchSampler
from pinas.engine.schedules import set_lr, step_decay_lr
from pinas.engine.steplog import read_step_log
from pinas.io.stage_dirs import ProbeDir, SupernetDir
from pinas.search.evaluation import EvaluatorConfig, build_evaluator
from pinas.stages.common import NO_CONTEXT, StageContext, StageInputs, TrainingStageConfig, finished_run, launch

log = logging.getLogger("pinas")


class LinearProbeConfig(TrainingStageConfig):
    """Linear-probe training; defaults are the paper's (global batch 256, lr 30, momentum 0.9, no weight decay,
    x0.1 at 60%/80%)."""

    epochs: float = Field(100, gt=0)
    batch_size: int = Field(256, ge=2, description="global batch: images per step over all processes (the "
                                                   "official 32 per GPU x 8)")
    base_lr: float = Field(30.0, gt=0, description="SGD lr at base_batch; scaled linearly to batch_size")
    base_batch: int = Field(256, ge=1)
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[float, ...] = Field((0.6, 0.8), description="fractions of training where lr *= lr_decay")
    lr_decay: float = 0.1
    crop_min_scale: float = Field(0.08, gt=0, le=1, description="RandomResizedCrop's smallest area fraction")
    holdout: SearchHoldout = Field(SearchHoldout(), description="train/ images the probe never trains on (the "
                                                                "search scores on them)")
    device: str = "auto"
    num_workers: int = 4
    checkpoint_every: int = Field(1000, ge=1, description="steps between checkpoints")
    log_every: int = Field(50, ge=1)
    val_archs: int = Field(3, ge=0, description="random architectures whose val top-1 is reported (needs val_dir)")
    val_recal_batches: int = Field(49, ge=1)
    seed: int = 0


def train_probe(cfg: LinearProbeConfig, supernet_dir: Path, train_dir: Path, out_dir: Path,
                progress: ProgressFn | None = None, stop_after: int | None = None) -> dict:
    """Train (or resume) the probe; ``stop_after`` ends early after that many steps (an interruption on purpose,
    checkpointed first)."""
    folder = ProbeDir(out_dir)
    info = init_distributed(cfg.device)
    device = resolve_device(cfg.device, info)
    model = SupernetDir(supernet_dir).load(device)
    backbone, space = model.student.backbone, model.space
    views = crop_flip(space.input_size, cfg.crop_min_scale)
    dataset = TrainCrops(cfg.holdout.split(ImageList.scan(train_dir))[0], views.crops, cfg.seed)
    sampler = EpochBatchSampler(len(dataset), cfg.process_batch(info.world_size), cfg.seed, info)
    total = max(1, round(cfg.epochs * sampler.batches_per_epoch))

    torch.manual_seed(cfg.seed)  # the same initial head on every rank
    head = nn.Linear(backbone.feature_dim, len(dataset.classes)).to(device)
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.zeros_(head.bias)
    net = wrap_ddp(head, device, info)
    optimizer = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    normalize = views.device.to(device)
    path_rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed * 1000 + info.rank + 1)  # per-rank augmentation stream

    def step(i: int, batch) -> dict:
        images, labels = batch[0].to(device), batch[1].to(device)
        set_lr(optimizer, step_decay_lr(cfg.lr, i, total, cfg.milestones, cfg.lr_decay))
        arch = broadcast_object(space.sample(path_rng) if info.is_main else None, info)  # one path for all ranks
        with torch.no_grad():
            features = backbone(normalize(images), arch)
        logits = net(features)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        top1 = 100.0 * (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": loss.detach(), "train_top1": top1, "images": labels.numel() * info.world_size,
                "lr": optimizer.param_groups[0]["lr"]}

    loop = TrainLoop(
        "linear probe", out_dir, total, sampler.batches_per_epoch, step,
        lambda start: batch_loader(dataset, sampler.iter_from(start), cfg.num_workers, device.type == "cuda",
                                   start),
        state={"head": head, "optimizer": optimizer},
        settings={**cfg.settings(), "supernet": SupernetDir(supernet_dir).manifest()["files"],
                  "train_images": len(dataset), "classes": dataset.classes},
        hooks=default_hooks(out_dir, cfg.log_every, cfg.checkpoint_every, progress), info=info, np_rng=path_rng,
        device=device, description=f"space {space.name}, {len(dataset)} images, {len(dataset.classes)} classes, "
                                   f"{total} steps, global batch {cfg.batch_size} over {info.world_size} process(es), "
                                   f"lr {cfg.lr:.4g}, device {device}")
    backbone.train()  # frozen weights, BN on batch statistics (the released code's norm_eval=False)
    stopped = loop.run(stop_after)
    if stopped is not None:
        return {"stopped_at": stopped}
    if info.is_main:
        folder.write(head, {"classes": dataset.classes, "feature_dim": backbone.feature_dim, "space": space.name,
                            "steps": total, "crop_min_scale": cfg.crop_min_scale})
    barrier(info)
    return _summary(folder)


def _summary(folder: ProbeDir) -> dict:
    records = read_step_log(folder / ProbeDir.STEP_LOG)
    last = records[-1] if records else {}
    return {"steps": last.get("step", 0), "final_loss": last.get("loss"), "final_train_top1": last.get("train_top1")}


def run_linear_probe(cfg: LinearProbeConfig, supernet_dir: Path, train_dir: Path, out_dir: Path,
                     val_dir: Path | None = None, progress: ProgressFn | None = None,
                     rendezvous: Nodes = SINGLE_NODE) -> dict | None:
    """The stage: train the probe (under torchrun when distributed: one path per step for all ranks, drawn on rank
    0), report val top-1 of ``cfg.val_archs`` random architectures when ``val_dir`` is given, write the manifest.
    Inputs are checked before any training. On a node other than 0: joins the job, returns None."""
    folder = ProbeDir(out_dir)
    SupernetDir(supernet_dir).settings()  # a finished, intact supernet stage
    _, classes = scan_image_folder(train_dir)
    if len(classes) < 2:
        raise DataError(f"train_dir {train_dir}: a classifier needs at least 2 classes, found {classes}")
    if val_dir is not None:
        check_classes(classes, Path(val_dir), "val_dir")
    finished = finished_run(folder, cfg)
    if finished is not None:
        return finished
    folder.path.mkdir(parents=True, exist_ok=True)
    if not cfg.distributed:
        metrics = train_probe(cfg, Path(supernet_dir), Path(train_dir), folder.path, progress)
    else:
        launch("linear-probe", cfg, folder, {"supernet": supernet_dir, "train_dir": train_dir}, rendezvous)
        if rendezvous.rank:
            return None
        metrics = _summary(folder)
    if val_dir is not None and cfg.val_archs:
        metrics.update(probe_val_top1(cfg, Path(supernet_dir), Path(train_dir), Path(val_dir), folder))
    return folder.write_manifest(ProbeDir.OUTPUTS, cfg.model_dump(mode="json"), metrics)


def probe_val_top1(cfg: LinearProbeConfig, supernet_dir: Path, train_dir: Path, val_dir: Path,
                   folder: ProbeDir) -> dict:
    """Val top-1 (%) of the probe on ``cfg.val_archs`` seeded random architectures, each BN-recalibrated on the
    probe's training images (this is the probe's own validation; the search never scores on ``val_dir``)."""
    device = resolve_device(cfg.device)
    model = SupernetDir(supernet_dir).load(device)
    probe = folder.load(device, verify=False)  # written by this run just now; its manifest comes after this
    ecfg = EvaluatorConfig(proxy="linear_probe", batch_size=cfg.process_batch(cfg.world_size),
                           recal_batches=cfg.val_recal_batches, num_workers=cfg.num_workers, seed=cfg.seed)
    train = cfg.holdout.split(ImageList.scan(train_dir))[0]
    evaluator = build_evaluator(ecfg, model, train, ImageList.scan(val_dir), probe, device)
    rng = np.random.default_rng(cfg.seed)
    accs = {model.space.format(a): evaluator(a).acc for a in (model.space.sample(rng) for _ in range(cfg.val_archs))}
    return {"val_top1_mean": round(float(np.mean(list(accs.values()))), 3), "val_top1": accs}

def run(cfg: LinearProbeConfig, inputs: StageInputs, out_dir: Path,
        ctx: StageContext = NO_CONTEXT) -> dict | None:
    """The pipeline's entry (:mod:`pinas.stages.graph`): the supernet's probe, trained on ``imagenet/train``, reported
    on ``imagenet/val``."""
    root = inputs.dataset("imagenet")
    return run_linear_probe(cfg, inputs.stage("supernet"), root / "train", out_dir, root / "val", ctx.progress,
                            ctx.nodes)


def train_rank(cfg: LinearProbeConfig, paths: dict[str, Path], out_dir: Path, stop_after: int | None = None) -> None:
    """One process of a distributed run (started by :mod:`pinas.stages.rank`)."""
    train_probe(cfg, paths["supernet"], paths["train_dir"], out_dir, stop_after=stop_after)
