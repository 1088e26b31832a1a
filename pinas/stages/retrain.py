"""Stage 3: retrain the searched architecture from scratch as a standalone classifier (method doc section 4).

The recipe is ResNeSt-50's (the Pi-NAS repo releases no retraining code, and its vendored PyTorch-Encoding trains
ResNeSt-50 this way): global batch 2048, SGD + cosine with warm-up, lr 0.1 per 256 images scaled with the global
batch, no weight decay on BN and biases, label smoothing, mixup, RandAugment(2, 12) on the full image, an area-0.1
random resized crop (bicubic), zero-init last gamma. Evaluation follows the preprocessing record
(:class:`~pinas.data.preprocess.EvalPreprocessing`: the short side resized to ``decode_size``, by default 8/7 of the
input, and the centre ``input_size`` taken; top-1 / top-5 on ``val/``), which the stage writes into
``model_config.json`` for the export and the deployed model.

As in the supernet stage, the loader workers cut each training view from the full image, seeded by (seed, step,
image), and the colour jitter and lighting run batched on the device from the torch RNG that checkpoints capture,
so a run killed and restarted ends with exactly the weights of an uninterrupted one.

Outputs (:class:`~pinas.io.stage_dirs.RetrainDir`): ``model.pt`` (tensor-only
:class:`~pinas.models.backbone.Classifier` state dict: ``backbone.*`` is what the OpenMMLab backbone loads),
``model_config.json`` (what is needed to rebuild the network), ``metrics.json`` (final top-1/top-5, per-evaluation
history, wall time), ``metrics.jsonl`` (step log), ``checkpoints/`` and, last, ``manifest.json``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator
from torch import nn

from pinas.data.images import DataError, ImageFolderDataset, TrainCrops, batch_loader, scan_image_folder
from pinas.data.preprocess import EvalPreprocessing
from pinas.data.transforms import Normalize, Views, center_crop, mixup, retrain_views
from pinas.engine.distributed import (
    SINGLE_PROCESS,
    DistInfo,
    barrier,
    init_distributed,
    resolve_device,
    use_amp,
    wrap_ddp,
)
from pinas.engine.launch import SINGLE_NODE, Nodes
from pinas.engine.loop import ProgressFn, TrainLoop, default_hooks
from pinas.engine.sampler import EpochBatchSampler
from pinas.engine.schedules import cosine_lr, set_lr
from pinas.io.artifacts import ArtifactError
from pinas.io.stage_dirs import RetrainDir, SupernetDir
from pinas.models.backbone import Classifier, build_subnet
from pinas.space import get_space
from pinas.stages.common import (
    NO_CONTEXT,
    StageConfig,
    StageContext,
    StageInputs,
    TrainingStageConfig,
    finished_run,
    launch,
)

log = logging.getLogger("pinas")
OUTPUTS = RetrainDir.OUTPUTS

class RetrainConfig(TrainingStageConfig):
    """Hyper-parameters of retraining; the defaults are the ResNeSt-50 recipe (method doc section 4)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
    runtime_fields: ClassVar[frozenset[str]] = StageConfig.runtime_fields | {"checkpoint_unit"}

    space: str = "resnest50"
    arch: str = Field("pinas-cls", description="architecture string or named arch; stored stage-grouped")
    epochs: int = Field(270, ge=1)
    batch_size: int = Field(2048, ge=1, description="global batch: images per step over all processes (the "
                                                    "recipe's 64 per GPU x 32)")
    base_lr: float = Field(0.1, gt=0, description="SGD lr at base_batch; scaled linearly to batch_size")
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
    decode_size: int | None = Field(None, description="evaluation: the short side is resized to this, then the "
                                                      "centre input_size is taken; default input_size * 8/7")
    eval_every: int = Field(1, ge=0, description="epochs between val evaluations (0: only at the end)")
    init_from_supernet: bool = Field(False, description="start from the supernet's weights on the path "
                                                        "(the paper trains from scratch)")
    amp: Literal["auto", "on", "off"] = "auto"
    channels_last: bool = False
    device: str = "auto"
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
    def preprocessing(self) -> EvalPreprocessing:
        """How this network is evaluated (and deployed)."""
        return EvalPreprocessing.for_input(self.crop_size, self.decode_size)


def training_views(cfg: RetrainConfig) -> Views:
    """The recipe's training views with this config's strengths (a zero turns a step off)."""
    return retrain_views(cfg.crop_size, cfg.crop_scale, cfg.crop_ratio, cfg.randaug_n, cfg.randaug_m,
                         cfg.color_jitter, cfg.lighting)


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
    if len(train) < cfg.batch_size:
        raise DataError(f"data_dir {data_dir}: train/ has {len(train)} images, fewer than one global batch "
                        f"(batch_size {cfg.batch_size})")
    if cfg.init_from_supernet:
        if supernet is None:
            raise ValueError("init_from_supernet is set but no supernet artifact was given")
        supernet_backbone_state(cfg, supernet)  # fails here, naming the file, if it is missing or does not fit
    return train_classes


def supernet_backbone_state(cfg: RetrainConfig, supernet: str | Path) -> dict[str, torch.Tensor]:
    """The student backbone's weights on ``cfg.arch``'s path, from a supernet stage folder (or its ``supernet.pt``).

    The student (not the EMA teacher) is used, as OpenSelfSup evaluations of MoCo-style models do.
    """
    path = Path(supernet)
    source = SupernetDir(path if path.is_dir() else path.parent).student_backbone_state()
    wanted = build_subnet(get_space(cfg.space), cfg.arch).state_dict()
    missing = [k for k in wanted if k not in source or source[k].shape != wanted[k].shape]
    if missing:
        raise ArtifactError(f"{path}: supernet does not fit space {cfg.space!r} arch {cfg.arch} "
                            f"({len(missing)} entries missing or mis-shaped, e.g. {missing[:3]})")
    return {k: source[k] for k in wanted}


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ImageFolderDataset, preprocessing: EvalPreprocessing, device: torch.device,
             batch_size: int, info: DistInfo = SINGLE_PROCESS, num_workers: int = 0, amp: bool = False,
             channels_last: bool = False) -> dict[str, float]:
    """Top-1 / top-5 (percent) of centre crops; each rank takes every world_size-th image, counts are summed."""
    was_training = model.training
    model.eval()
    normalize = Normalize(preprocessing.mean, preprocessing.std).to(device)
    k = min(5, len(dataset.classes))
    mine = list(range(info.rank, len(dataset), info.world_size))
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-k hits, images
    for images, labels in batch_loader(dataset, batches, num_workers, device.type == "cuda"):
        x = normalize(center_crop(images.to(device, non_blocking=True), preprocessing.crop))
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
    data_dir, folder = Path(data_dir), RetrainDir(out_dir)
    info = init_distributed(cfg.device)
    device = resolve_device(cfg.device, info)
    space = get_space(cfg.space)
    views = training_views(cfg)
    train_set = TrainCrops(data_dir / "train", views.crops, cfg.seed)
    val_set = ImageFolderDataset(data_dir / "val", cfg.preprocessing.resize)
    if train_set.classes != val_set.classes:
        raise DataError(f"data_dir {data_dir}: train/ and val/ have different classes")
    batch = cfg.process_batch(info.world_size)
    sampler = EpochBatchSampler(len(train_set), batch, cfg.seed, info)
    per_epoch = sampler.batches_per_epoch
    total, warmup = cfg.epochs * per_epoch, round(cfg.warmup_epochs * per_epoch)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = Classifier(build_subnet(space, cfg.arch), len(train_set.classes))
    if cfg.init_from_supernet:
        model.backbone.load_state_dict(supernet_backbone_state(cfg, supernet))
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = wrap_ddp(model, device, info)
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.no_bn_bias_decay), lr=cfg.lr,
                                momentum=cfg.momentum)
    amp = use_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    colour = views.device.to(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    torch.manual_seed(cfg.seed * 1000 + info.rank + 1)  # per-rank augmentation stream

    def step(i: int, batch) -> dict:
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        set_lr(optimizer, cosine_lr(cfg.lr, i, total, warmup))
        with torch.no_grad():
            x, lam = mixup(colour(images), cfg.mixup)
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
        return {"loss": loss.detach(), "images": images.shape[0] * info.world_size,
                "lr": optimizer.param_groups[0]["lr"]}

    def validate(loop: TrainLoop) -> dict:
        if info.enabled:  # DDP syncs BN statistics at the *next* forward: evaluate (and save) rank 0's on every rank
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
        result = evaluate(model, val_set, cfg.preprocessing, device, batch, info, cfg.num_workers, amp,
                          cfg.channels_last)
        return {"step": loop.step, "epoch": loop.epoch, "top1": result["top1"], "top5": result["top5"]}

    checkpoint_every = cfg.checkpoint_every * (per_epoch if cfg.checkpoint_unit == "epochs" else 1)
    loop = TrainLoop(
        f"retrain {space.name} {cfg.arch}", folder.path, total, per_epoch, step,
        lambda start: batch_loader(train_set, sampler.iter_from(start), cfg.num_workers, device.type == "cuda",
                                   start),
        state={"model": model, "optimizer": optimizer, "scaler": scaler},
        settings={**cfg.settings(), "train_images": len(train_set), "classes": train_set.classes},
        hooks=default_hooks(folder.path, cfg.log_every, checkpoint_every, progress, validate, cfg.eval_every),
        info=info, device=device,
        description=f"{len(train_set)} images, {len(train_set.classes)} classes, {total} steps ({per_epoch}/epoch), "
                    f"global batch {cfg.batch_size}, lr {cfg.lr:.4g}, device {device}")
    model.train()
    stopped = loop.run(stop_after)
    if stopped is not None:
        return {"stopped_at": stopped}
    if info.is_main:
        final = loop.history[-1]
        folder.write(model, {"space": cfg.space, "arch": cfg.arch, "num_classes": len(train_set.classes),
                             "classes": list(train_set.classes), "input_size": cfg.crop_size,
                             "preprocessing": cfg.preprocessing.to_dict()},
                     {"top1": final["top1"], "top5": final["top5"], "epochs": cfg.epochs, "steps": final["step"],
                      "history": loop.history, "wall_s": round(loop.wall_s, 3)})
    barrier(info)
    return folder.metrics()


def run_retrain(cfg: RetrainConfig, data_dir: str | Path, out_dir: str | Path, progress: ProgressFn | None = None,
                supernet: str | Path | None = None, rendezvous: Nodes = SINGLE_NODE) -> dict | None:
    """The stage: validate, train here (or under torchrun when distributed), write the manifest.

    ``supernet`` (the supernet stage folder or its ``supernet.pt``) is needed only with ``cfg.init_from_supernet``.
    A finished run in ``out_dir`` with the same config is returned as it is. On a node other than 0 this node's
    processes join the job and node 0 writes the outputs: returns None.
    """
    data_dir, folder = Path(data_dir), RetrainDir(out_dir)
    classes = validate_inputs(cfg, data_dir, supernet)  # before anything is written
    finished = finished_run(folder, cfg)
    if finished is not None:
        return finished
    folder.path.mkdir(parents=True, exist_ok=True)
    if not cfg.distributed:
        train_retrain(cfg, data_dir, folder.path, progress, supernet)
    else:
        launch("retrain", cfg, folder, {"data_dir": data_dir, "supernet": supernet}, rendezvous)
        if rendezvous.rank:
            return None
    metrics = folder.metrics()
    summary = {k: metrics[k] for k in ("top1", "top5", "steps", "wall_s")}
    return folder.write_manifest(OUTPUTS, cfg.model_dump(mode="json"), summary,
                                 extra={"data_dir": str(data_dir), "classes": classes})

def run(cfg: RetrainConfig, inputs: StageInputs, out_dir: Path, ctx: StageContext = NO_CONTEXT) -> dict | None:
    """The pipeline's entry (:mod:`pinas.stages.graph`): trains on ``imagenet`` (from the supernet's weights when
    ``cfg.init_from_supernet``)."""
    supernet = inputs.stage("supernet") if cfg.init_from_supernet else None
    return run_retrain(cfg, inputs.dataset("imagenet"), out_dir, ctx.progress, supernet, ctx.nodes)


def train_rank(cfg: RetrainConfig, paths: dict[str, Path], out_dir: Path, stop_after: int | None = None) -> None:
    """One process of a distributed run (started by :mod:`pinas.stages.rank`)."""
    train_retrain(cfg, paths["data_dir"], out_dir, supernet=paths.get("supernet"), stop_after=stop_after)
