"""Stage 1: unsupervised supernet-Pi training (method doc section 2), resumable and distributed.

``train_supernet`` trains in this process, or once per rank under ``torchrun`` (``python -m pinas.stages.supernet``),
which :func:`run_supernet` launches when ``nproc > 1``. The folder (:class:`~pinas.io.stage_dirs.SupernetDir`)
holds ``checkpoints/`` (full training state every ``checkpoint_every`` steps), ``metrics.jsonl`` (the loss curve)
and, when training is complete, ``supernet.pt``: the tensor-only student, teacher and queue.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from pinas.data.images import ImageList, SearchHoldout, TrainCrops, batch_loader
from pinas.data.transforms import crop_flip, supernet_views
from pinas.engine.distributed import (
    SINGLE_PROCESS,
    DistInfo,
    barrier,
    broadcast_object,
    init_distributed,
    resolve_device,
    use_amp,
    wrap_ddp,
)
from pinas.engine.launch import SINGLE_NODE, Nodes
from pinas.engine.loop import ProgressFn, TrainLoop, default_hooks
from pinas.engine.sampler import EpochBatchSampler
from pinas.engine.schedules import cosine_lr, set_lr
from pinas.engine.steplog import read_step_log
from pinas.io.stage_dirs import SupernetDir
from pinas.models.backbone import PiNASBackbone
from pinas.models.supernet_pi import Objective, PathClassifier, SupernetPi, TwoPathStudent, zero_off_path_grads
from pinas.space import Arch, get_space
from pinas.stages.common import NO_CONTEXT, StageContext, StageInputs, TrainingStageConfig, finished_run, launch

log = logging.getLogger("pinas")
StepHook = Callable[[int, Arch, Arch], None]


class SupernetConfig(TrainingStageConfig):
    """Hyper-parameters of supernet-Pi training; defaults are the paper's (method doc 2.5-2.7)."""

    space: str = "resnest50"
    objective: Objective = Field(
        "pi", description="pi: cross-path contrast (the method); same_path: MoCo contrast within one path, the "
                          "same step on the pair (alpha, alpha) (pinas's no-cross-path baseline); spos: SPOS's "
                          "single-path sampling, supervised cross-entropy on the labels, with the Pi recipe "
                          "(lr, decay, views, epochs), not SPOS's own")
    epochs: float = Field(100, gt=0, description="passes over the training images")
    batch_size: int = Field(192, ge=2, description="global batch: images per step over all processes (each gives "
                                                   "4 views); the paper's 24 per GPU x 8")
    base_lr: float = Field(0.03, gt=0, description="SGD lr at base_batch; scaled linearly to batch_size")
    base_batch: int = Field(192, ge=1)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    ema_momentum: float = Field(0.999, ge=0, lt=1)
    temperature: float = Field(0.2, gt=0)
    queue_size: int = Field(49152, ge=1)
    feature_dim: int = 128
    projector_hidden: int = 2048
    shuffle_bn_splits: int = Field(8, ge=1, description="in one process: the teacher normalises its keys over "
                                   "this many shuffled sub-batches (MoCo's shuffle-BN; 8 sub-batches of the "
                                   "paper's 192 are its 24 per GPU); under torchrun the processes are the "
                                   "sub-batches")
    crop_min_scale: float = Field(0.2, gt=0, le=1, description="smallest crop area of RandomResizedCrop")
    color_jitter: float = Field(0.4, ge=0, description="brightness/contrast/saturation jitter strength")
    hue: float = Field(0.4, ge=0, le=0.5, description="hue jitter (OpenSelfSup's MoCo v2 uses 0.4)")
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.5, ge=0, le=1)
    holdout: SearchHoldout = Field(SearchHoldout(), description="train/ images the supernet never trains on (the "
                                                                "search scores on them)")
    amp: Literal["auto", "on", "off"] = "auto"
    channels_last: bool = False
    device: str = "auto"
    num_workers: int = 4
    checkpoint_every: int = Field(1000, ge=1, description="steps between checkpoints")
    log_every: int = Field(50, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> SupernetConfig:
        get_space(self.space)
        if self.queue_size % self.batch_size:
            raise ValueError(f"queue_size {self.queue_size} must be a multiple of the global batch batch_size "
                             f"{self.batch_size}")
        if self.world_size == 1 and self.objective != "spos" and self.batch_size < 2 * self.shuffle_bn_splits:
            raise ValueError(f"shuffle_bn_splits {self.shuffle_bn_splits} leaves sub-batches of fewer than 2 of the "
                             f"batch_size {self.batch_size} images (BN needs 2); use fewer splits")
        return self


def four_views(colour: torch.nn.Module, crops: torch.Tensor, channels_last: bool = False) -> tuple[torch.Tensor, ...]:
    """The four views of every image: the loader's ``(N, 4, 3, H, W)`` uint8 crops through the device's colour ops
    in one batched call, returned view by view."""
    with torch.no_grad():
        x = colour(crops)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return tuple(x.chunk(4))


def pi_step(model: SupernetPi, student: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, x: tuple[torch.Tensor, ...], alpha: Arch, beta: Arch,
            info: DistInfo = SINGLE_PROCESS, amp: bool = False) -> torch.Tensor:
    """One supernet-Pi iteration on views x1..x4 and the path pair (alpha, beta); returns the loss.

    ``student`` is ``TwoPathStudent(model.student)``, possibly DDP-wrapped. Gradients of parameters off both paths
    are set to None before the step, so SGD's momentum and weight decay leave those candidates untouched.
    """
    x1, x2, x3, x4 = x
    device_type = x1.device.type
    with torch.autocast(device_type, enabled=amp):
        q_alpha, q_beta = student(x1, x3, alpha, beta)
        model.momentum_update(alpha)
        k_alpha = model.keys(x2, alpha, info)
        model.momentum_update(beta)
        k_beta = model.keys(x4, beta, info)
    loss = model.loss(q_alpha.float(), q_beta.float(), k_alpha.float(), k_beta.float())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    backbone = model.student.backbone
    on_path = {"backbone." + n for n in backbone.path_parameter_names(alpha) | backbone.path_parameter_names(beta)}
    on_path |= {"projector." + n for n, _ in model.student.projector.named_parameters()}
    zero_off_path_grads(model.student, on_path)
    scaler.step(optimizer)
    scaler.update()
    model.enqueue(k_alpha, k_beta, info)
    return loss.detach()


def spos_step(model: SupernetPi, classifier: torch.nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, x: torch.Tensor, labels: torch.Tensor, arch: Arch,
              amp: bool = False) -> torch.Tensor:
    """One SPOS iteration: cross-entropy of the single path ``arch`` on labelled images; returns the loss.

    ``classifier`` is ``PathClassifier(model.student.backbone, model.classifier)``, possibly DDP-wrapped. As in
    :func:`pi_step`, gradients off the path are set to None so the other candidates do not move.
    """
    with torch.autocast(x.device.type, enabled=amp):
        logits = classifier(x, arch)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    zero_off_path_grads(model.student, {"backbone." + n for n in model.student.backbone.path_parameter_names(arch)})
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def train_supernet(cfg: SupernetConfig, train_dir: Path, out_dir: Path, progress: ProgressFn | None = None,
                   stop_after: int | None = None, on_step: StepHook | None = None) -> dict:
    """Train (or resume) the supernet; returns a summary.

    ``stop_after`` ends early after that many steps, checkpointing first (an interruption on purpose);
    ``on_step(step, alpha, beta)`` is called on every rank with the path pair about to be trained.
    """
    folder = SupernetDir(out_dir)
    info = init_distributed(cfg.device)
    device = resolve_device(cfg.device, info)
    space = get_space(cfg.space)
    images, held = cfg.holdout.split(ImageList.scan(train_dir))
    spos = cfg.objective == "spos"
    views = crop_flip(space.input_size, cfg.crop_min_scale) if spos else \
        supernet_views(space.input_size, cfg.model_dump())
    dataset = TrainCrops(images, views.crops, cfg.seed)
    sampler = EpochBatchSampler(len(dataset), cfg.process_batch(info.world_size), cfg.seed, info)
    total = max(1, round(cfg.epochs * sampler.batches_per_epoch))

    if spos and len(dataset.classes) < 2:
        raise ValueError(f"supernet.objective spos trains on labels: {train_dir} has {len(dataset.classes)} class")
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = SupernetPi(PiNASBackbone(space), cfg.projector_hidden, cfg.feature_dim, cfg.queue_size,
                       cfg.temperature, cfg.ema_momentum, len(dataset.classes) if spos else None,
                       cfg.shuffle_bn_splits).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if spos:
        student = wrap_ddp(PathClassifier(model.student.backbone, model.classifier), device, info,
                           find_unused_parameters=True)
    else:
        student = wrap_ddp(TwoPathStudent(model.student), device, info, find_unused_parameters=True)
    colour = views.device.to(device)
    optimizer = torch.optim.SGD(list(model.student.parameters()) + (list(model.classifier.parameters()) if spos
                                                                    else []),
                                lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    amp = use_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    path_rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed * 1000 + info.rank + 1)  # per-rank augmentation stream

    def draw_paths() -> tuple[Arch, Arch]:
        """Two paths differing at every layer (pi); one path, twice (same_path, spos)."""
        if cfg.objective == "pi":
            return space.sample_pair(path_rng)
        arch = space.sample(path_rng)
        return arch, arch

    def step(i: int, batch) -> dict:
        crops = batch[0].to(device, non_blocking=True)
        set_lr(optimizer, cosine_lr(cfg.lr, i, total))
        alpha, beta = broadcast_object(draw_paths() if info.is_main else None, info)
        if on_step:
            on_step(i, alpha, beta)
        if spos:
            with torch.no_grad():
                x = colour(crops)
            x = x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x
            loss = spos_step(model, student, optimizer, scaler, x, batch[1].to(device), alpha, amp)
        else:  # same_path is pi_step on the pair (alpha, alpha): each query's positive is the same path's key
            loss = pi_step(model, student, optimizer, scaler, four_views(colour, crops, cfg.channels_last),
                           alpha, beta, info, amp)
        return {"loss": loss, "images": crops.shape[0] * info.world_size, "lr": optimizer.param_groups[0]["lr"]}

    loop = TrainLoop(
        "supernet-Pi", out_dir, total, sampler.batches_per_epoch, step,
        lambda start: batch_loader(dataset, sampler.iter_from(start), cfg.num_workers, device.type == "cuda",
                                   start),
        state={"model": model, "optimizer": optimizer, "scaler": scaler},
        settings={**cfg.settings(), "train_images": len(dataset), "classes": dataset.classes},
        hooks=default_hooks(out_dir, cfg.log_every, cfg.checkpoint_every, progress), info=info, np_rng=path_rng,
        device=device, description=f"space {space.name}, {len(dataset)} images ({len(held)} "
                                   f"more held out for the search), {total} steps ({sampler.batches_per_epoch}/"
                                   f"epoch), global batch {cfg.batch_size}, lr {cfg.lr:.4g}, device {device}")
    model.train()
    stopped = loop.run(stop_after)
    if stopped is not None:
        return {"stopped_at": stopped}
    if info.is_main:
        folder.write(model, cfg.settings(), train_dir)  # what it was trained with, not how it ran
    barrier(info)
    return _summary(folder)


def run_supernet(cfg: SupernetConfig, train_dir: Path, out_dir: Path, progress: ProgressFn | None = None,
                 rendezvous: Nodes = SINGLE_NODE) -> dict | None:
    """The stage: train in this process (or under torchrun when distributed), then write the manifest.

    On a node other than 0 (``rendezvous.rank > 0``) this node's processes join the job and node 0 writes the
    outputs: returns None.
    """
    folder = SupernetDir(out_dir)
    finished = finished_run(folder, cfg)
    if finished is not None:
        return finished
    folder.path.mkdir(parents=True, exist_ok=True)
    if not cfg.distributed:
        train_supernet(cfg, train_dir, folder.path, progress)
    else:
        launch("supernet", cfg, folder, {"train_dir": train_dir}, rendezvous)
        if rendezvous.rank:
            return None
    return folder.write_manifest(SupernetDir.OUTPUTS, cfg.model_dump(mode="json"), metrics=_summary(folder))


def run(cfg: SupernetConfig, inputs: StageInputs, out_dir: Path, ctx: StageContext = NO_CONTEXT) -> dict | None:
    """The pipeline's entry (:mod:`pinas.stages.graph`): trains on ``imagenet/train``."""
    return run_supernet(cfg, inputs.dataset("imagenet") / "train", out_dir, ctx.progress, ctx.nodes)


def _summary(folder: SupernetDir) -> dict:
    """Steps done and the loss at the first and last logged step, from ``metrics.jsonl``."""
    records = read_step_log(folder / SupernetDir.STEP_LOG)
    return {"steps": records[-1]["step"] if records else 0,
            "first_loss": records[0]["loss"] if records else None,
            "final_loss": records[-1]["loss"] if records else None}


def train_rank(cfg: SupernetConfig, paths: dict[str, Path], out_dir: Path, stop_after: int | None = None) -> None:
    """One process of a distributed run (started by :mod:`pinas.stages.rank`)."""
    train_supernet(cfg, paths["train_dir"], out_dir, stop_after=stop_after)
