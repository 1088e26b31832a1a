"""Stage: the shared linear probe on the frozen supernet (method doc 3.2), the classifier of the search proxy.

One ``Linear(feature_dim, num_classes)`` on the globally pooled student features is trained over *all* paths at
once: every iteration draws a uniformly random path, the supernet's weights stay frozen and its BNs stay in train
mode (batch statistics, as the released code does), and only the head learns. A candidate is later scored by this
one head after recalibrating its path's BNs (:class:`pinas.evaluator.ProbeProxy`), so the search never trains
anything per candidate.

Outputs in ``out_dir``: ``probe.pt`` (tensor-only ``{"weight", "bias"}``), ``probe.json`` (classes, feature
dimension, space, steps), ``metrics.jsonl`` (the training curve), ``checkpoints/`` (resume) and the manifest.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .artifacts import (
    ArtifactError,
    atomic_torch_save,
    atomic_write_json,
    load_tensors,
    verify_manifest,
    write_manifest,
)
from .data import DataError, ImageFolderDataset, batch_loader, scan_image_folder
from .evaluator import (
    CropFlip,
    EvaluatorConfig,
    build_evaluator,
    check_supernet_dir,
    default_decode_size,
    load_trained_supernet,
)
from .training import (
    SINGLE_PROCESS,
    Checkpointer,
    EpochBatchSampler,
    ProgressFn,
    StepLog,
    read_step_log,
    resolve_device,
    restore_rng,
    rng_state,
    set_lr,
)

log = logging.getLogger("pinas")
ARTIFACT = "probe.pt"
INFO = "probe.json"


class LinearProbeConfig(BaseModel):
    """Linear-probe training; defaults are the paper's (lr 30, momentum 0.9, no weight decay, x0.1 at 60%/80%)."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(100, gt=0)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(30.0, gt=0)
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[float, ...] = Field((0.6, 0.8), description="fractions of training where lr *= lr_decay")
    lr_decay: float = 0.1
    crop_min_scale: float = Field(0.08, gt=0, le=1, description="RandomResizedCrop's smallest area fraction")
    decode_size: int | None = None
    device: str = "auto"
    num_workers: int = 4
    checkpoint_every: int = Field(1000, ge=1, description="steps between checkpoints")
    log_every: int = Field(50, ge=1)
    val_archs: int = Field(3, ge=0, description="random architectures whose val top-1 is reported (needs val_dir)")
    val_recal_batches: int = Field(49, ge=1)
    seed: int = 0


def step_lr(cfg: LinearProbeConfig, step: int, total: int) -> float:
    return cfg.lr * cfg.lr_decay ** sum(step >= m * total for m in cfg.milestones)


def train_probe(cfg: LinearProbeConfig, supernet_dir: Path, train_dir: Path, out_dir: Path,
                progress: ProgressFn | None = None, stop_after: int | None = None) -> dict:
    """Train (or resume) the probe; ``stop_after`` ends early after that many steps (an interruption on purpose,
    checkpointed first)."""
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device, SINGLE_PROCESS)
    model, _ = load_trained_supernet(supernet_dir, device)
    backbone, space = model.student.backbone, model.space
    dataset = ImageFolderDataset(train_dir, cfg.decode_size or default_decode_size(space))
    sampler = EpochBatchSampler(len(dataset), cfg.batch_size, cfg.seed)
    total = max(1, round(cfg.epochs * sampler.batches_per_epoch))

    torch.manual_seed(cfg.seed)
    head = nn.Linear(backbone.feature_dim, len(dataset.classes)).to(device)
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    augment = CropFlip(space.input_size, cfg.crop_min_scale).to(device)
    path_rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed + 1)  # augmentation stream

    checkpoints = Checkpointer(out_dir / "checkpoints")
    start = 0
    state = checkpoints.load_latest(map_location=device)
    if state is not None:
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], path_rng)
        start = int(state["step"])
    steplog = StepLog(out_dir / "metrics.jsonl", start)
    if start >= total and (out_dir / ARTIFACT).is_file():
        return _summary(out_dir)

    def save(step: int) -> None:
        checkpoints.save({"head": head.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(path_rng),
                          "step": step}, step)

    log.info("linear probe: space %s, %d images, %d classes, %d steps, lr %.4g, device %s%s", space.name,
             len(dataset), len(dataset.classes), total, cfg.lr, device, f", resuming at step {start}" if start else "")
    backbone.train()  # frozen weights, BN on batch statistics (the released code's norm_eval=False)
    with torch.random.fork_rng(devices=[]):  # starting a DataLoader draws a seed from the global RNG: keep it out
        batches = iter(batch_loader(dataset, sampler.iter_from(start), cfg.num_workers, device.type == "cuda"))
    window_t, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
    for step in range(start, total):
        if stop_after is not None and step - start >= stop_after:
            save(step)
            return {"stopped_at": step}
        images, labels = next(batches)
        labels = labels.to(device)
        set_lr(optimizer, step_lr(cfg, step, total))
        arch = space.sample(path_rng)
        with torch.no_grad():
            features = backbone(augment(images.to(device)), arch)
        logits = head(features)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += labels.numel()
        correct += int((logits.argmax(1) == labels).sum())
        loss_sum += loss.item() * labels.numel()
        done = step + 1
        if done % cfg.log_every == 0 or done == total:
            elapsed = time.perf_counter() - window_t
            rec = {"step": done, "loss": round(loss_sum / seen, 5), "train_top1": round(100 * correct / seen, 2),
                   "lr": optimizer.param_groups[0]["lr"], "images_per_s": round(seen / max(elapsed, 1e-9), 2)}
            steplog.write(rec)
            log.info("probe step %d/%d loss %.4f top-1 %.1f%% lr %.4g %.1f img/s", done, total, rec["loss"],
                     rec["train_top1"], rec["lr"], rec["images_per_s"])
            if progress:
                progress(done, total, rec)
            window_t, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        if done % cfg.checkpoint_every == 0 and done < total:
            save(done)
    atomic_torch_save({k: v.detach().cpu() for k, v in head.state_dict().items()}, out_dir / ARTIFACT)
    atomic_write_json(out_dir / INFO, {"classes": dataset.classes, "feature_dim": backbone.feature_dim,
                                       "space": space.name, "steps": total, "crop_min_scale": cfg.crop_min_scale})
    save(total)  # a completed run restarts as a no-op
    return _summary(out_dir)


def _summary(out_dir: Path) -> dict:
    records = read_step_log(out_dir / "metrics.jsonl")
    last = records[-1] if records else {}
    return {"steps": last.get("step", 0), "final_loss": last.get("loss"), "final_train_top1": last.get("train_top1")}


def load_probe(probe_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Linear, dict]:
    """The trained head of a finished ``linear_probe`` stage folder (digests checked) and its ``probe.json``."""
    probe_dir = Path(probe_dir)
    if not probe_dir.is_dir():
        raise ArtifactError(f"probe_dir {probe_dir} does not exist")
    verify_manifest(probe_dir)
    return _read_probe(probe_dir, device)


def _read_probe(probe_dir: Path, device: str | torch.device) -> tuple[nn.Linear, dict]:
    state = load_tensors(probe_dir / ARTIFACT)
    head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return head.to(device).eval(), json.loads((probe_dir / INFO).read_text())


def check_classes(expected: list[str], folder: Path, what: str) -> None:
    """Fail naming the folder when its classes differ from the ones the probe was trained on."""
    _, classes = scan_image_folder(folder)
    if classes != list(expected):
        raise DataError(f"{what} {folder}: classes {classes} differ from the probe's {list(expected)}")


def run_linear_probe(cfg: LinearProbeConfig, supernet_dir: Path, train_dir: Path, out_dir: Path,
                     val_dir: Path | None = None, progress: ProgressFn | None = None) -> dict:
    """The stage: train the probe, report val top-1 of ``cfg.val_archs`` random architectures when ``val_dir``
    is given, write the manifest. Inputs are checked before any training."""
    out_dir = Path(out_dir)
    check_supernet_dir(supernet_dir)
    _, classes = scan_image_folder(train_dir)
    if len(classes) < 2:
        raise DataError(f"train_dir {train_dir}: a classifier needs at least 2 classes, found {classes}")
    if val_dir is not None:
        check_classes(classes, Path(val_dir), "val_dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = train_probe(cfg, Path(supernet_dir), Path(train_dir), out_dir, progress)
    if val_dir is not None and cfg.val_archs:
        metrics.update(probe_val_top1(cfg, Path(supernet_dir), Path(train_dir), Path(val_dir), out_dir))
    return write_manifest(out_dir, "linear_probe", [ARTIFACT, INFO, "metrics.jsonl"], cfg.model_dump(), metrics)


def probe_val_top1(cfg: LinearProbeConfig, supernet_dir: Path, train_dir: Path, val_dir: Path,
                   probe_dir: Path) -> dict:
    """Val top-1 (%) of the probe on ``cfg.val_archs`` seeded random architectures, each BN-recalibrated."""
    device = resolve_device(cfg.device, SINGLE_PROCESS)
    model, _ = load_trained_supernet(supernet_dir, device)
    probe = _read_probe(probe_dir, device)
    ecfg = EvaluatorConfig(proxy="linear_probe", batch_size=cfg.batch_size, recal_batches=cfg.val_recal_batches,
                           decode_size=cfg.decode_size, num_workers=cfg.num_workers, seed=cfg.seed)
    evaluator = build_evaluator(ecfg, model, train_dir, val_dir, probe, device)
    rng = np.random.default_rng(cfg.seed)
    accs = {model.space.format(a): evaluator(a).acc for a in (model.space.sample(rng) for _ in range(cfg.val_archs))}
    return {"val_top1_mean": round(float(np.mean(list(accs.values()))), 3), "val_top1": accs}
