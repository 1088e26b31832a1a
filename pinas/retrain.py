"""Stage 3: retrain the searched architecture from scratch as a standalone classifier (method doc section 4).

The recipe is ResNeSt-50's (the Pi-NAS repo releases no retraining code, and its vendored PyTorch-Encoding trains
ResNeSt-50 this way): SGD + cosine with warm-up, lr 0.1 per 256 images scaled with the global batch, no weight
decay on BN and biases, label smoothing, mixup, RandAugment(2, 12), an area-0.1 random resized crop, zero-init last
gamma. Evaluation decodes at ``input_size * 8/7`` and centre-crops ``input_size`` (top-1 / top-5 on ``val/``).

As in :mod:`pinas.supernet_training`, images are decoded in loader workers to uint8 squares with no random work,
and every random augmentation runs batched on the device (kornia) from the torch RNG that checkpoints capture, so a
run killed and restarted ends with exactly the weights of an uninterrupted one.

Outputs in ``out_dir``: ``model.pt`` (tensor-only :class:`~pinas.supernet.Classifier` state dict: ``backbone.*``
is what the OpenMMLab backbone loads), ``model_config.json`` (what is needed to rebuild the network),
``metrics.json`` (final top-1/top-5, per-evaluation history, wall time), ``metrics.jsonl`` (step log),
``checkpoints/`` and, last, ``manifest.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from torch import nn

from .artifacts import (
    MANIFEST,
    ArtifactError,
    atomic_torch_save,
    atomic_write_json,
    load_tensors,
    read_manifest,
    verify_manifest,
    write_manifest,
)
from .data import DataError, ImageFolderDataset, Normalize, batch_loader, center_crop, scan_image_folder
from .launch import run_module
from .space import get_space
from .supernet import Classifier, build_subnet
from .training import (
    SINGLE_PROCESS,
    Checkpointer,
    DistInfo,
    EpochBatchSampler,
    ProgressFn,
    StepLog,
    cosine_lr,
    init_distributed,
    resolve_device,
    restore_rng,
    rng_state,
    set_lr,
)

log = logging.getLogger("pinas")
MODEL, MODEL_CONFIG, METRICS, STEP_LOG = "model.pt", "model_config.json", "metrics.json", "metrics.jsonl"
OUTPUTS = [MODEL, MODEL_CONFIG, METRICS, STEP_LOG]

#: Fields that change how a run is executed or reported but not the weights it computes; a checkpoint or finished
#: run written under other values of these is still "the same run".
RUNTIME_FIELDS = frozenset({"device", "num_workers", "checkpoint_every", "checkpoint_unit", "log_every"})

#: kornia's RandAugment draws its operations once per call; applying it to groups this size gives different
#: images of a batch different operations (as per-image RandAugment does) at a few calls per batch.
RANDAUG_GROUP = 8

#: AlexNet "PCA lighting" noise: the eigen-decomposition of ImageNet's RGB covariance (pixel values in 0..1).
_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))

#: The demo profile (demo space, 5 generated shape classes, 64 px crops, CPU): 4 epochs with the paper's linear
#: scaling rule at 1.6x its base lr (0.02 at batch 32), warm-up 0.3 epoch, and the regularisers that pay off only
#: over long schedules (mixup, RandAugment, colour jitter, lighting) off, the crop milder (area 0.5-1).
DEMO_OVERRIDES: dict[str, Any] = {
    "space": "demo", "arch": "11-11-11-11", "epochs": 4, "batch_size": 32, "base_lr": 0.16, "warmup_epochs": 0.3,
    "mixup": 0.0, "randaug_m": 0, "color_jitter": 0.0, "lighting": 0.0, "crop_scale": (0.5, 1.0),
    "eval_every": 2, "num_workers": 0, "checkpoint_every": 1, "log_every": 5, "device": "cpu",
}


class RetrainConfig(BaseModel):
    """Hyper-parameters of retraining; the defaults are the ResNeSt-50 recipe (method doc section 4)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    space: str = "resnest50"
    arch: str = Field("pinas-cls", description="architecture string or named arch; stored stage-grouped")
    epochs: int = Field(270, ge=1)
    batch_size: int = Field(64, ge=1, description="images per process (64 x 32 GPUs = 2048 in the recipe)")
    base_lr: float = Field(0.1, gt=0, description="SGD lr at base_batch; scaled linearly to the global batch")
    base_batch: int = Field(256, ge=1)
    warmup_epochs: float = Field(5, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    no_bn_bias_decay: bool = Field(True, description="no weight decay on BN parameters and biases")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    mixup: float = Field(0.2, ge=0, description="Beta(alpha, alpha) of mixup; 0 turns it off")
    randaug_n: int = Field(2, ge=1, le=14, description="RandAugment operations per image")
    randaug_m: int = Field(12, ge=0, lt=30, description="RandAugment magnitude on the 0-30 scale; 0 turns it off")
    crop_scale: tuple[float, float] = (0.1, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter: float = Field(0.4, ge=0, description="brightness/contrast/saturation jitter; 0 turns it off")
    lighting: float = Field(0.1, ge=0, description="std of AlexNet PCA lighting noise; 0 turns it off")
    input_size: int | None = Field(None, ge=16, description="training/eval crop; default: the space's input size")
    decode_size: int | None = Field(None, description="square the loader decodes to; default input_size * 8/7")
    eval_every: int = Field(1, ge=0, description="epochs between val evaluations (0: only at the end)")
    init_from_supernet: bool = Field(False, description="start from the supernet's weights on the path "
                                                        "(the paper trains from scratch)")
    amp: Literal["auto", "on", "off"] = "auto"
    channels_last: bool = False
    device: str = "auto"
    nproc: int = Field(1, ge=1, description="processes (GPUs); > 1 launches torchrun")
    num_workers: int = Field(4, ge=0)
    checkpoint_every: int = Field(1, ge=1)
    checkpoint_unit: Literal["epochs", "steps"] = "epochs"
    log_every: int = Field(50, ge=1, description="steps between step-log lines")
    seed: int = 0

    @field_validator("space")
    @classmethod
    def _space(cls, value: str) -> str:
        get_space(value)
        return value

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str, info: ValidationInfo) -> str:
        """Parse with the space (so a typo fails here, naming the field) and store the canonical form."""
        if "space" not in info.data:  # the space itself was invalid and is reported on its own
            return value
        space = get_space(info.data["space"])
        return space.format(space.parse(value))

    @model_validator(mode="after")
    def _check(self) -> RetrainConfig:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale {self.crop_scale} must satisfy 0 < min <= max <= 1")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio {self.crop_ratio} must satisfy 0 < min <= max")
        size = self.input_size or get_space(self.space).input_size
        if self.decode_size is not None and self.decode_size < size:
            raise ValueError(f"decode_size {self.decode_size} is smaller than the input size {size}")
        return self

    @property
    def crop_size(self) -> int:
        return self.input_size or get_space(self.space).input_size

    @property
    def decode(self) -> int:
        return self.decode_size or round(self.crop_size * 8 / 7)

    def identity(self) -> dict[str, Any]:
        """The JSON form of the fields that determine the trained weights (see RUNTIME_FIELDS)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in RUNTIME_FIELDS}


# --------------------------------------------------------------------------------------------- augmentation
class RetrainAugment(nn.Module):
    """The recipe's training views, batched on the device: uint8 decoded squares in, normalised crops out.

    RandAugment (on the decoded square, before the crop, as PyTorch-Encoding applies it to the PIL image) ->
    random resized crop (bicubic) -> horizontal flip -> colour jitter -> PCA lighting -> normalise.
    """

    def __init__(self, cfg: RetrainConfig):
        super().__init__()
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment

        size = cfg.crop_size
        self.randaug = RandAugment(n=cfg.randaug_n, m=cfg.randaug_m) if cfg.randaug_m > 0 else None
        self.crop = K.RandomResizedCrop((size, size), scale=cfg.crop_scale, ratio=cfg.crop_ratio, resample="bicubic")
        self.flip = K.RandomHorizontalFlip()
        j = cfg.color_jitter
        self.jitter = K.ColorJitter(j, j, j, p=1.0) if j > 0 else None
        self.lighting = cfg.lighting
        self.register_buffer("pca", torch.tensor(_PCA_EIGVEC) * torch.tensor(_PCA_EIGVAL), persistent=False)
        self.normalize = Normalize()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255) if images.dtype == torch.uint8 else images
        if self.randaug is not None:
            x = torch.cat([self.randaug(g) for g in x.split(RANDAUG_GROUP)])
        x = self.flip(self.crop(x.clamp(0, 1)))
        if self.jitter is not None:
            x = self.jitter(x)
        if self.lighting > 0:
            alpha = torch.randn(x.shape[0], 3, device=x.device) * self.lighting
            x = x + (alpha @ self.pca.T)[:, :, None, None]
        return self.normalize(x.clamp(0, 1))


def mixup(x: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    """Blend each image with its mirror in the batch (batch order is already random); returns (images, lambda)."""
    if alpha <= 0:
        return x, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return x.mul(lam).add_(x.flip(0), alpha=1 - lam), lam


def param_groups(model: nn.Module, weight_decay: float, no_bn_bias_decay: bool = True) -> list[dict]:
    """Two SGD groups: weights with decay, and (``--no-bn-wd``) every 1-d parameter -- BN gammas/betas and biases --
    without. Decaying BN gammas pulls the zero-initialised last gammas towards 0 and fights the normalisation."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if no_bn_bias_decay and p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------------ inputs
def validate_inputs(cfg: RetrainConfig, data_dir: str | Path, supernet: str | Path | None = None) -> list[str]:
    """Check the data (and supernet) before anything is trained or written; returns the class list."""
    data_dir = Path(data_dir)
    for split in ("train", "val"):
        if not (data_dir / split).is_dir():
            raise DataError(f"data_dir {data_dir}: missing {split}/ folder (expected {data_dir}/{split}/<class>/*)")
    train, train_classes = scan_image_folder(data_dir / "train")
    _, val_classes = scan_image_folder(data_dir / "val")
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise DataError(f"data_dir {data_dir}: train/ and val/ have different classes: only in train/: "
                        f"{only_train or 'none'}, only in val/: {only_val or 'none'}")
    global_batch = cfg.batch_size * cfg.nproc
    if len(train) < global_batch:
        raise DataError(f"data_dir {data_dir}: train/ has {len(train)} images, fewer than one global batch "
                        f"(batch_size {cfg.batch_size} x nproc {cfg.nproc})")
    if cfg.init_from_supernet:
        if supernet is None:
            raise ValueError("init_from_supernet is set but no supernet artifact was given")
        supernet_backbone_state(cfg, supernet)  # fails here, naming the file, if it is missing or does not fit
    return train_classes


def supernet_backbone_state(cfg: RetrainConfig, supernet: str | Path) -> dict[str, torch.Tensor]:
    """The student backbone's weights on ``cfg.arch``'s path, from a ``supernet.pt`` file or a supernet stage dir.

    The student (not the EMA teacher) is used, as OpenSelfSup evaluations of MoCo-style models do.
    """
    path = Path(supernet)
    path = path / "supernet.pt" if path.is_dir() else path
    student = load_tensors(path).get("student", {})
    source = {k[len("backbone."):]: v for k, v in student.items() if k.startswith("backbone.")}
    wanted = build_subnet(get_space(cfg.space), cfg.arch).state_dict()
    missing = [k for k in wanted if k not in source or source[k].shape != wanted[k].shape]
    if missing:
        raise ArtifactError(f"{path}: supernet does not fit space {cfg.space!r} arch {cfg.arch} "
                            f"({len(missing)} entries missing or mis-shaped, e.g. {missing[:3]})")
    return {k: source[k] for k in wanted}


def _config_diff(saved: dict[str, Any], cfg: RetrainConfig) -> list[str]:
    mine = cfg.identity()
    return sorted(k for k in set(saved) | set(mine) if k not in RUNTIME_FIELDS and saved.get(k) != mine.get(k))


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ImageFolderDataset, input_size: int, device: torch.device,
             batch_size: int, info: DistInfo = SINGLE_PROCESS, num_workers: int = 0, amp: bool = False,
             channels_last: bool = False) -> dict[str, float]:
    """Top-1 / top-5 (percent) of centre crops; each rank takes every world_size-th image, counts are summed."""
    was_training = model.training
    model.eval()
    normalize = Normalize().to(device)
    k = min(5, len(dataset.classes))
    mine = list(range(info.rank, len(dataset), info.world_size))
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-k hits, images
    for images, labels in batch_loader(dataset, batches, num_workers, device.type == "cuda"):
        x = normalize(center_crop(images.to(device, non_blocking=True), input_size))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, enabled=amp):
            logits = model(x)
        hits = logits.float().topk(k, dim=1).indices == labels.to(device)[:, None]
        counts += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), torch.tensor(len(labels), device=device)])
    if info.enabled:
        torch.distributed.all_reduce(counts)
    model.train(was_training)
    top1, topk, n = counts.tolist()
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * topk / n, "images": int(n)}


# ------------------------------------------------------------------------------------------------- training
def train_retrain(cfg: RetrainConfig, data_dir: str | Path, out_dir: str | Path, progress: ProgressFn | None = None,
                  supernet: str | Path | None = None, stop_after: int | None = None) -> dict:
    """Train (or resume) in this process (one rank under torchrun); rank 0 writes the outputs at the end.

    ``stop_after`` ends early after that many steps of this call, checkpointing first (an interruption on purpose).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    info = init_distributed(cfg.device)
    device = resolve_device(cfg.device, info)
    space = get_space(cfg.space)
    train_set = ImageFolderDataset(data_dir / "train", cfg.decode)
    val_set = ImageFolderDataset(data_dir / "val", cfg.decode)
    if train_set.classes != val_set.classes:
        raise DataError(f"data_dir {data_dir}: train/ and val/ have different classes")
    sampler = EpochBatchSampler(len(train_set), cfg.batch_size, cfg.seed, info)
    per_epoch = sampler.batches_per_epoch
    total, warmup = cfg.epochs * per_epoch, round(cfg.warmup_epochs * per_epoch)
    global_batch = cfg.batch_size * info.world_size
    lr = cfg.base_lr * global_batch / cfg.base_batch
    ckpt_every = cfg.checkpoint_every * (per_epoch if cfg.checkpoint_unit == "epochs" else 1)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = Classifier(build_subnet(space, cfg.arch), len(train_set.classes))
    if cfg.init_from_supernet:
        model.backbone.load_state_dict(supernet_backbone_state(cfg, supernet))
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.no_bn_bias_decay), lr=lr,
                                momentum=cfg.momentum)
    amp = cfg.amp == "on" or (cfg.amp == "auto" and device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    augment = RetrainAugment(cfg).to(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    checkpoints = Checkpointer(out_dir / "checkpoints")
    start, history, wall_before = 0, [], 0.0
    torch.manual_seed(cfg.seed * 1000 + info.rank + 1)  # per-rank augmentation stream
    state = checkpoints.load_latest(map_location=device)
    if state is not None:
        diff = _config_diff(state["config"], cfg)
        if diff:
            raise ValueError(f"{out_dir} holds a retrain checkpoint made with other settings ({', '.join(diff)}); "
                             "use another out_dir or the same config")
        if (state["train_images"], state["classes"]) != (len(train_set), train_set.classes):
            raise DataError(f"{out_dir} holds a retrain checkpoint of {state['train_images']} training images in "
                            f"classes {state['classes']}; {data_dir} has {len(train_set)} in {train_set.classes}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if len(state["rng"]) == info.world_size:
            restore_rng(state["rng"][info.rank])
        else:
            log.warning("checkpoint has RNG states for %d ranks, running %d: streams re-seeded",
                        len(state["rng"]), info.world_size)
        start, history, wall_before = int(state["step"]), list(state["history"]), float(state["wall_s"])
    steplog = StepLog(out_dir / STEP_LOG, start) if info.is_main else None
    t_start = time.perf_counter()

    def wall() -> float:
        return wall_before + time.perf_counter() - t_start

    def save(step: int, wall_s: float | None = None) -> None:
        mine = rng_state()
        rngs = [mine]
        if info.enabled:
            rngs = [None] * info.world_size
            torch.distributed.all_gather_object(rngs, mine)
        if info.is_main:
            checkpoints.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "scaler": scaler.state_dict(), "rng": rngs, "step": step, "history": history,
                              "train_images": len(train_set), "classes": train_set.classes,
                              "wall_s": wall() if wall_s is None else wall_s,
                              "config": cfg.model_dump(mode="json")}, step)

    def run_eval(done: int) -> None:
        if info.enabled:  # DDP syncs BN statistics at the *next* forward: evaluate (and save) rank 0's on every rank
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
        result = evaluate(model, val_set, cfg.crop_size, device, cfg.batch_size, info, cfg.num_workers, amp,
                          cfg.channels_last)
        rec = {"step": done, "epoch": done / per_epoch, "top1": result["top1"], "top5": result["top5"]}
        history.append(rec)
        if info.is_main:
            steplog.write(rec)
            log.info("retrain eval epoch %.3g: top-1 %.2f%% top-5 %.2f%%", rec["epoch"], rec["top1"], rec["top5"])
            if progress:
                progress(done, total, rec)

    if info.is_main:
        log.info("retrain %s %s: %d images, %d classes, %d steps (%d/epoch), global batch %d, lr %.4g, device %s%s",
                 space.name, cfg.arch, len(train_set), len(train_set.classes), total, per_epoch, global_batch, lr,
                 device, f", resuming at step {start}" if start else "")
    model.train()
    batches = iter(batch_loader(train_set, sampler.iter_from(start), cfg.num_workers, device.type == "cuda"))
    window_t, window_imgs = time.perf_counter(), 0
    for step in range(start, total):
        if stop_after is not None and step - start >= stop_after:
            save(step)
            return {"stopped_at": step}
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        set_lr(optimizer, cosine_lr(lr, step, total, warmup))
        with torch.no_grad():
            x, lam = mixup(augment(images), cfg.mixup)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, enabled=amp):
            logits = net(x)
        logits = logits.float()
        loss = criterion(logits, labels)
        if lam < 1:
            loss = lam * loss + (1 - lam) * criterion(logits, labels.flip(0))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        window_imgs += images.shape[0] * info.world_size
        done = step + 1
        if info.is_main and (done % cfg.log_every == 0 or done == total or done == start + 1):
            elapsed = time.perf_counter() - window_t
            rec = {"step": done, "epoch": done / per_epoch, "loss": round(loss.item(), 5),
                   "lr": optimizer.param_groups[0]["lr"], "images_per_s": round(window_imgs / max(elapsed, 1e-9), 2)}
            steplog.write(rec)
            log.info("retrain step %d/%d loss %.4f lr %.4g %.1f img/s", done, total, rec["loss"], rec["lr"],
                     rec["images_per_s"])
            if progress:
                progress(done, total, rec)
            window_t, window_imgs = time.perf_counter(), 0
        epoch_end = done % per_epoch == 0
        if done == total or (epoch_end and cfg.eval_every and (done // per_epoch) % cfg.eval_every == 0):
            run_eval(done)
        if done % ckpt_every == 0 and done < total:
            save(done)
    wall_s = wall_before if start >= total else wall()
    if start < total:
        save(total, wall_s)  # a completed run restarted loads this and only rewrites the same outputs
    if info.is_main:
        _write_outputs(cfg, out_dir, model, train_set.classes, history, wall_s)
    if info.enabled:
        torch.distributed.barrier()
    return json.loads((out_dir / METRICS).read_text())


def _write_outputs(cfg: RetrainConfig, out_dir: Path, model: Classifier, classes: list[str], history: list[dict],
                   wall_s: float) -> None:
    state = {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
             for k, v in model.state_dict().items()}
    atomic_torch_save(state, out_dir / MODEL)
    atomic_write_json(out_dir / MODEL_CONFIG, {"space": cfg.space, "arch": cfg.arch, "num_classes": len(classes),
                                               "classes": list(classes), "input_size": cfg.crop_size})
    final = history[-1]
    atomic_write_json(out_dir / METRICS, {"top1": final["top1"], "top5": final["top5"], "epochs": cfg.epochs,
                                          "steps": final["step"], "history": history, "wall_s": round(wall_s, 3)})


def run_retrain(cfg: RetrainConfig, data_dir: str | Path, out_dir: str | Path, progress: ProgressFn | None = None,
                supernet: str | Path | None = None) -> dict:
    """The stage: validate, train here (or under torchrun for ``cfg.nproc > 1``), write the manifest.

    ``supernet`` (a ``supernet.pt`` or the supernet stage folder) is needed only with ``cfg.init_from_supernet``.
    A finished run in ``out_dir`` with the same config is returned as it is.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    classes = validate_inputs(cfg, data_dir, supernet)  # before anything is written
    if (out_dir / MANIFEST).is_file():
        manifest = read_manifest(out_dir)
        diff = _config_diff(manifest.get("config", {}), cfg)
        if diff:
            raise ValueError(f"{out_dir} holds a finished retrain made with other settings ({', '.join(diff)}); "
                             "use another out_dir or the same config")
        try:
            return verify_manifest(out_dir)
        except ArtifactError as exc:
            log.warning("finished retrain in %s is damaged (%s): redoing its outputs", out_dir, exc)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.nproc == 1:
        train_retrain(cfg, data_dir, out_dir, progress, supernet)
    else:
        atomic_write_json(out_dir / "launch_config.json", cfg.model_dump(mode="json"))
        args = ["--config", str(out_dir / "launch_config.json"), "--data-dir", str(data_dir), "--out", str(out_dir)]
        run_module("pinas.retrain", args + (["--supernet", str(supernet)] if supernet else []), nproc=cfg.nproc)
    metrics = json.loads((out_dir / METRICS).read_text())
    summary = {k: metrics[k] for k in ("top1", "top5", "steps", "wall_s")}
    return write_manifest(out_dir, "retrain", OUTPUTS, cfg.model_dump(mode="json"), summary,
                          extra={"data_dir": str(data_dir), "classes": classes})


def load_retrained(out_dir: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """The retrained classifier of a retrain output folder, in eval mode (tensor-only load)."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / MODEL_CONFIG).read_text())
    model = Classifier(build_subnet(get_space(meta["space"]), meta["arch"]), meta["num_classes"])
    model.load_state_dict(load_tensors(out_dir / MODEL))
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Retrain a searched architecture (one process; torchrun starts "
                                                 "several)")
    parser.add_argument("--config", required=True, type=Path, help="JSON of RetrainConfig")
    parser.add_argument("--data-dir", required=True, type=Path, help="ImageFolder root with train/ and val/")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--supernet", type=Path, default=None, help="supernet.pt (with init_from_supernet)")
    parser.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = RetrainConfig.model_validate(json.loads(args.config.read_text()))
    train_retrain(cfg, args.data_dir, args.out, supernet=args.supernet, stop_after=args.stop_after)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
