"""Stage 1: unsupervised supernet-Pi training (method doc section 2), resumable and distributed.

``train_supernet`` is the loop; it runs in-process for one device, or once per rank under ``torchrun``
(``python -m pinas.supernet_training``), which :func:`run_supernet` launches when ``nproc > 1``. The output folder
holds ``checkpoints/`` (full training state every ``checkpoint_every`` steps), ``metrics.jsonl`` (the loss curve)
and, when training is complete, ``supernet.pt``: the tensor-only student, teacher and queue.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .artifacts import atomic_torch_save, atomic_write_json, load_tensors, write_manifest
from .data import ImageFolderDataset, MocoV2Views, batch_loader
from .launch import run_module
from .pi_model import SupernetPi, TwoPathStudent, zero_off_path_grads
from .space import Arch, get_space
from .supernet import PiNASBackbone
from .training import (
    SINGLE_PROCESS,
    Checkpointer,
    DistInfo,
    EpochBatchSampler,
    ProgressFn,
    StepLog,
    broadcast_object,
    cosine_lr,
    init_distributed,
    read_step_log,
    resolve_device,
    restore_rng,
    rng_state,
    set_lr,
)

log = logging.getLogger("pinas")
ARTIFACT = "supernet.pt"
StepHook = Callable[[int, Arch, Arch], None]


class SupernetConfig(BaseModel):
    """Hyper-parameters of supernet-Pi training; defaults are the paper's (method doc 2.5-2.7)."""

    model_config = ConfigDict(extra="forbid")

    space: str = "resnest50"
    epochs: float = Field(100, gt=0, description="passes over the training images")
    batch_size: int = Field(24, ge=2, description="images per process (each gives 4 views)")
    base_lr: float = Field(0.03, gt=0, description="SGD lr at base_batch; scaled linearly to the global batch")
    base_batch: int = Field(192, ge=1)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    ema_momentum: float = Field(0.999, ge=0, lt=1)
    temperature: float = Field(0.2, gt=0)
    queue_size: int = Field(49152, ge=1)
    feature_dim: int = 128
    projector_hidden: int = 2048
    decode_size: int | None = Field(None, description="square the loader decodes to; default input_size * 8/7")
    crop_min_scale: float = Field(0.2, gt=0, le=1, description="smallest crop area of RandomResizedCrop")
    color_jitter: float = Field(0.4, ge=0, description="brightness/contrast/saturation jitter strength")
    hue: float = Field(0.4, ge=0, le=0.5, description="hue jitter (OpenSelfSup's MoCo v2 uses 0.4)")
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.5, ge=0, le=1)
    amp: Literal["auto", "on", "off"] = "auto"
    channels_last: bool = False
    device: str = "auto"
    nproc: int = Field(1, ge=1, description="processes (GPUs); > 1 launches torchrun")
    num_workers: int = 4
    checkpoint_every: int = Field(1000, ge=1, description="steps between checkpoints")
    log_every: int = Field(50, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> SupernetConfig:
        get_space(self.space)
        global_batch = self.batch_size * self.nproc
        if self.queue_size % global_batch:
            raise ValueError(f"queue_size {self.queue_size} must be a multiple of the global batch "
                             f"batch_size*nproc = {global_batch}")
        return self


def _amp_enabled(cfg: SupernetConfig, device: torch.device) -> bool:
    return cfg.amp == "on" or (cfg.amp == "auto" and device.type == "cuda")


def training_views(cfg: SupernetConfig, size: int) -> MocoV2Views:
    """The view pipeline this supernet was trained with (the contrastive proxy scores with the same one)."""
    return MocoV2Views(size, cfg.crop_min_scale, cfg.color_jitter, cfg.hue, cfg.grayscale_p, cfg.blur_p)


def four_views(views: MocoV2Views, images: torch.Tensor, channels_last: bool = False) -> tuple[torch.Tensor, ...]:
    """Four independently augmented views of every image, made in one batched call on the device."""
    with torch.no_grad():
        x = views(images.repeat(4, 1, 1, 1))
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


def train_supernet(cfg: SupernetConfig, train_dir: Path, out_dir: Path, progress: ProgressFn | None = None,
                   stop_after: int | None = None, on_step: StepHook | None = None) -> dict:
    """Train (or resume) the supernet; returns a summary.

    ``stop_after`` ends early after that many steps, checkpointing first (an interruption on purpose);
    ``on_step(step, alpha, beta)`` is called on every rank with the path pair about to be trained.
    """
    out_dir = Path(out_dir)
    info = init_distributed(cfg.device)
    device = resolve_device(cfg.device, info)
    space = get_space(cfg.space)
    decode = cfg.decode_size or round(space.input_size * 8 / 7)
    dataset = ImageFolderDataset(train_dir, decode)
    sampler = EpochBatchSampler(len(dataset), cfg.batch_size, cfg.seed, info)
    total = max(1, round(cfg.epochs * sampler.batches_per_epoch))
    global_batch = cfg.batch_size * info.world_size
    lr = cfg.base_lr * global_batch / cfg.base_batch

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = SupernetPi(PiNASBackbone(space), cfg.projector_hidden, cfg.feature_dim, cfg.queue_size,
                       cfg.temperature, cfg.ema_momentum).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    student: torch.nn.Module = TwoPathStudent(model.student)
    if info.enabled:
        student = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    optimizer = torch.optim.SGD(model.student.parameters(), lr=lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    amp = _amp_enabled(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    augment = training_views(cfg, space.input_size).to(device)
    path_rng = np.random.default_rng(cfg.seed)

    checkpoints = Checkpointer(out_dir / "checkpoints")
    start = 0
    torch.manual_seed(cfg.seed * 1000 + info.rank + 1)  # per-rank augmentation stream
    state = checkpoints.load_latest(map_location=device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) == info.world_size:
            restore_rng(rngs[info.rank], path_rng)
        else:
            log.warning("checkpoint has RNG states for %d ranks, running %d: streams re-seeded", len(rngs),
                        info.world_size)
        start = int(state["step"])
    steplog = StepLog(out_dir / "metrics.jsonl", start) if info.is_main else None
    model.train()

    def save(step: int) -> None:
        rngs = [None] * info.world_size
        mine = rng_state(path_rng)
        if info.enabled:
            torch.distributed.all_gather_object(rngs, mine)
        else:
            rngs = [mine]
        if info.is_main:
            checkpoints.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "scaler": scaler.state_dict(), "rng": rngs, "step": step,
                              "config": cfg.model_dump()}, step)

    if info.is_main:
        log.info("supernet-Pi: space %s, %d images, %d steps (%d/epoch), global batch %d, lr %.4g, device %s%s",
                 space.name, len(dataset), total, sampler.batches_per_epoch, global_batch, lr, device,
                 f", resuming at step {start}" if start else "")
    batches = iter(batch_loader(dataset, sampler.iter_from(start), cfg.num_workers, device.type == "cuda"))
    window_t, window_imgs = time.perf_counter(), 0
    step = start
    for step in range(start, total):
        if stop_after is not None and step - start >= stop_after:
            save(step)
            return {"stopped_at": step}
        images, _ = next(batches)
        images = images.to(device, non_blocking=True)
        set_lr(optimizer, cosine_lr(lr, step, total))
        alpha, beta = broadcast_object(space.sample_pair(path_rng) if info.is_main else None, info)
        if on_step:
            on_step(step, alpha, beta)
        loss = pi_step(model, student, optimizer, scaler, four_views(augment, images, cfg.channels_last),
                       alpha, beta, info, amp)
        window_imgs += images.shape[0] * info.world_size
        done = step + 1
        if info.is_main and (done % cfg.log_every == 0 or done == total or done == start + 1):
            elapsed = time.perf_counter() - window_t
            rec = {"step": done, "loss": round(loss.item(), 5), "lr": optimizer.param_groups[0]["lr"],
                   "images_per_s": round(window_imgs / max(elapsed, 1e-9), 2)}
            steplog.write(rec)
            log.info("supernet step %d/%d loss %.4f lr %.4g %.1f img/s", done, total, rec["loss"], rec["lr"],
                     rec["images_per_s"])
            if progress:
                progress(done, total, rec)
            window_t, window_imgs = time.perf_counter(), 0
        if done % cfg.checkpoint_every == 0 and done < total:
            save(done)
    if start < total:
        save(total)  # a completed run started again only re-derives the artifact from this checkpoint
    if info.is_main:
        atomic_torch_save(model.artifact_state(), out_dir / ARTIFACT)
        atomic_write_json(out_dir / "config.json", {"supernet": cfg.model_dump(), "train_dir": str(train_dir)})
    if info.enabled:
        torch.distributed.barrier()
    return _summary(out_dir)


def run_supernet(cfg: SupernetConfig, train_dir: Path, out_dir: Path, progress: ProgressFn | None = None) -> dict:
    """The stage: train in this process (or under torchrun for ``cfg.nproc > 1``), then write the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.nproc == 1:
        train_supernet(cfg, train_dir, out_dir, progress)
    else:
        atomic_write_json(out_dir / "launch_config.json", cfg.model_dump())
        run_module("pinas.supernet_training", ["--config", str(out_dir / "launch_config.json"),
                                               "--train-dir", str(train_dir), "--out", str(out_dir)],
                   nproc=cfg.nproc)
    return write_manifest(out_dir, "supernet", [ARTIFACT, "metrics.jsonl", "config.json"], cfg.model_dump(),
                          metrics=_summary(out_dir))


def _summary(out_dir: Path) -> dict:
    """Steps done and the loss at the first and last logged step, from ``metrics.jsonl``."""
    records = read_step_log(out_dir / "metrics.jsonl")
    return {"steps": records[-1]["step"] if records else 0,
            "first_loss": records[0]["loss"] if records else None,
            "final_loss": records[-1]["loss"] if records else None}


def load_supernet(path: Path, cfg: SupernetConfig, device: str | torch.device = "cpu") -> SupernetPi:
    """Rebuild the trained student/teacher/queue from a ``supernet.pt`` artifact."""
    model = SupernetPi(PiNASBackbone(get_space(cfg.space)), cfg.projector_hidden, cfg.feature_dim, cfg.queue_size,
                       cfg.temperature, cfg.ema_momentum)
    model.load_artifact_state(load_tensors(path))
    return model.to(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Supernet-Pi training (one process; torchrun starts several)")
    parser.add_argument("--config", required=True, type=Path, help="JSON of SupernetConfig")
    parser.add_argument("--train-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = SupernetConfig.model_validate(json.loads(args.config.read_text()))
    train_supernet(cfg, args.train_dir, args.out, stop_after=args.stop_after)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
