"""Scoring one architecture on the trained supernet: BN recalibration, then a proxy, behind a cache.

Why recalibrate: during supernet training a block's BN statistics are a running mix over whatever paths happened
to precede it, so they do not describe the inputs the block sees inside one particular architecture. Before a
candidate is scored, the BNs on its path get "precise BN" statistics: reset, then the arithmetic mean of the
per-batch statistics over a fixed set of training batches (PyTorch's ``momentum=None`` cumulative average).
Only the path's BN buffers are touched and they are restored afterwards (:func:`precise_bn`), so evaluating on
the live supernet leaves it exactly as it was and the next candidate starts from the same state; no copy needed.

Why fixed batches: every input (recalibration batches, held-out views) is a pure function of a seed and its
batch index (:class:`FixedBatches`), drawn once and kept in memory while it fits, so two evaluations of one
architecture are bit-identical and every candidate is judged on the same images.

Proxies (higher score is better; the raw loss / accuracy is kept beside it):

* :class:`ContrastiveProxy` (label-free, the default): the supernet-Pi cross-path InfoNCE of the candidate path
  against random paths that differ from it at every layer, on held-out images, with the trained queue as negatives
  and the training temperature; score = -loss.
* :class:`ProbeProxy`: top-1 (%) of the shared linear probe (:mod:`pinas.linear_probe`) on a labelled split.
* :class:`BNGammaProxy`: BN-NAS's data-free indicator, the sum over layers of the mean |gamma| of the chosen
  block's last BN. Costs nothing; used as a pre-filter by the search.

:class:`Evaluator` wraps a proxy with the evaluation cache: one architecture is never computed twice.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import Dataset

from .artifacts import ArtifactError, verify_manifest
from .data import ImageFolderDataset, MocoV2Views, Normalize, batch_loader, center_crop
from .pi_model import SupernetPi, info_nce
from .space import Arch, SearchSpace
from .supernet import PiNASBackbone
from .supernet_training import ARTIFACT as SUPERNET_ARTIFACT
from .supernet_training import SupernetConfig, load_supernet

log = logging.getLogger("pinas")
Batch = tuple[torch.Tensor, torch.Tensor]
ProxyName = Literal["contrastive", "linear_probe", "bn_gamma"]


class EvaluatorConfig(BaseModel):
    """How one candidate is scored; defaults follow the released search (method doc 3.3)."""

    model_config = ConfigDict(extra="forbid")

    proxy: ProxyName = "contrastive"
    batch_size: int = Field(128, ge=2, description="images per batch for recalibration and scoring")
    recal_batches: int = Field(49, ge=1, description="training batches of precise-BN recalibration per path")
    heldout_images: int | None = Field(None, ge=2, description="held-out (val) images scored; None = all")
    reference_paths: int = Field(2, ge=1, description="contrastive proxy: random differing paths per candidate")
    decode_size: int | None = Field(None, description="square the loader decodes to; default input_size * 8/7")
    cache_mb: int = Field(4096, ge=0, description="memory for preprocessed batches kept between candidates")
    channels_last: bool = Field(True, description="NHWC activations: much faster convolutions and BN statistics "
                                                  "on CPU (and tensor cores on GPU)")
    num_workers: int = Field(0, ge=0)
    device: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class Evaluation:
    """One scored architecture. ``score`` is higher-is-better; ``loss``/``acc`` are the proxy's raw values."""

    arch: str
    proxy: str
    score: float
    loss: float | None = None
    acc: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------- deterministic batches
def _seeded(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2 ** 63)


class FixedBatches:
    """A fixed sequence of preprocessed (x, y) batches; batch i is a pure function of (indices, seed, i).

    ``transform`` may be random: it runs under a forked torch RNG seeded with (seed, i), so the result does not
    depend on what ran before. Preprocessed batches stay in memory up to ``cache_bytes`` (every candidate reuses
    them); batches beyond the budget are decoded and transformed again each pass, identically.
    """

    def __init__(self, dataset: Dataset, batches: Sequence[Sequence[int]],
                 transform: Callable[[torch.Tensor], torch.Tensor], device: torch.device, seed: int = 0,
                 cache_bytes: int = 0, num_workers: int = 0, channels_last: bool = False):
        if not batches:
            raise ValueError("no batches")
        self.dataset, self.batches = dataset, [list(b) for b in batches]
        self.transform, self.device, self.seed = transform, device, seed
        self.cache_bytes, self.num_workers = cache_bytes, num_workers
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._cache: dict[int, Batch] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def num_images(self) -> int:
        return sum(len(b) for b in self.batches)

    def _prepare(self, index: int, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(_seeded(self.seed, index))
            x = self.transform(images.to(self.device)).contiguous(memory_format=self.memory_format)
        return x, labels.to(self.device)

    def __iter__(self) -> Iterator[Batch]:
        missing = [i for i in range(len(self.batches)) if i not in self._cache]
        loader = iter(batch_loader(self.dataset, [self.batches[i] for i in missing], self.num_workers)) \
            if missing else None
        for i in range(len(self.batches)):
            if i in self._cache:
                yield self._cache[i]
                continue
            batch = self._prepare(i, *next(loader))
            size = batch[0].numel() * batch[0].element_size()
            if self._cached_bytes + size <= self.cache_bytes:
                self._cache[i] = batch
                self._cached_bytes += size
            yield batch


def recal_batches(num_images: int, batch_size: int, num_batches: int, seed: int) -> list[list[int]]:
    """``num_batches`` equal batches from a seeded permutation (equal sizes: precise BN averages batch stats)."""
    batch_size = min(batch_size, num_images)
    num_batches = max(1, min(num_batches, num_images // batch_size))
    order = np.random.default_rng(seed).permutation(num_images)
    return [order[i * batch_size:(i + 1) * batch_size].tolist() for i in range(num_batches)]


def heldout_batches(num_images: int, batch_size: int, limit: int | None) -> list[list[int]]:
    """Sequential batches over an evenly spread subset of at most ``limit`` images (every class kept)."""
    idx = np.arange(num_images) if limit is None or limit >= num_images else \
        np.linspace(0, num_images - 1, num=limit).round().astype(int)
    return [idx[i:i + batch_size].tolist() for i in range(0, len(idx), batch_size)]


class CenterCrop(nn.Module):
    """Deterministic evaluation view: centre crop to the network's input size, then normalise."""

    def __init__(self, size: int):
        super().__init__()
        self.size, self.normalize = size, Normalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(center_crop(x, self.size))


class CropFlip(nn.Module):
    """RandomResizedCrop + horizontal flip (the linear probe's training augmentation, method doc 3.2)."""

    def __init__(self, size: int, min_scale: float = 0.08):
        super().__init__()
        import kornia.augmentation as K

        self.augment = nn.Sequential(K.RandomResizedCrop((size, size), scale=(min_scale, 1.0)),
                                     K.RandomHorizontalFlip())
        self.normalize = Normalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.augment(x.float().div_(255) if x.dtype == torch.uint8 else x).clamp_(0, 1))


class FourViews(nn.Module):
    """Four MoCo v2 views of every image, stacked view-major: (4B, C, H, W), as supernet-Pi training draws them."""

    def __init__(self, views: int | MocoV2Views):
        super().__init__()
        self.views = MocoV2Views(views) if isinstance(views, int) else views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.views(x.repeat(4, 1, 1, 1))


# ----------------------------------------------------------------------------------------------- precise BN
def path_batchnorms(backbone: PiNASBackbone, arch: Sequence[int]) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BN layers a forward along ``arch`` runs through (stem, chosen candidates, shared shortcuts)."""
    seen: dict[int, nn.modules.batchnorm._BatchNorm] = {}
    for module in backbone.path_modules(arch):
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                seen.setdefault(id(m), m)
    return list(seen.values())


@contextmanager
def precise_bn(paths: Sequence[tuple[PiNASBackbone, Sequence[int]]], batches: Iterable[Batch]):
    """Recalibrate the BNs of each (backbone, arch) path on ``batches``, yield with the backbones in eval mode,
    then restore those BNs' buffers, momenta and every module's train flag exactly.

    Inside the block, the running mean/var of a path BN is the mean over batches of its per-batch statistics;
    parameters and off-path buffers are never written.
    """
    bns = [bn for backbone, arch in paths for bn in path_batchnorms(backbone, arch)]
    bns = list({id(bn): bn for bn in bns}.values())
    saved = [(bn.momentum, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in bns]
    modes = [(m, m.training) for backbone, _ in paths for m in backbone.modules()]
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: the arithmetic mean of the batch statistics
        for backbone, _ in paths:
            backbone.train()
        with torch.no_grad():
            for x, _ in batches:
                for backbone, arch in paths:
                    backbone(x, arch)
        for backbone, _ in paths:
            backbone.eval()
        yield
    finally:
        with torch.no_grad():
            for bn, (momentum, mean, var, count) in zip(bns, saved):
                bn.momentum = momentum
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)
        for m, mode in modes:
            m.training = mode


# -------------------------------------------------------------------------------------------------- proxies
class Proxy(Protocol):
    name: str

    def __call__(self, arch: Arch) -> tuple[float, float | None, float | None]:
        """(score, loss, acc) of one architecture."""


@dataclass
class Timings:
    """Where evaluation time goes: BN recalibration vs the proxy forward, and images pushed through a backbone."""

    recal_s: float = 0.0
    proxy_s: float = 0.0
    recal_images: int = 0
    proxy_images: int = 0
    evaluations: int = 0

    @property
    def images_per_s(self) -> float:
        return (self.recal_images + self.proxy_images) / max(self.recal_s + self.proxy_s, 1e-9)


class BNGammaProxy:
    """BN-NAS score: sum over layers of mean |gamma| of the chosen candidate's last BN (no data, no forward)."""

    name = "bn_gamma"

    def __init__(self, backbone: PiNASBackbone):
        space = backbone.space
        self.table = np.zeros((space.num_layers, space.num_choices))
        for (layer, choice), gamma in backbone.last_bn_gammas().items():
            self.table[layer, choice] = gamma.detach().abs().mean().item()

    def __call__(self, arch: Arch) -> tuple[float, None, None]:
        return float(self.table[np.arange(len(arch)), list(arch)].sum()), None, None


def chunked_info_nce(q: torch.Tensor, k_pos: torch.Tensor, queue: torch.Tensor, temperature: float,
                     chunk: int = 1024) -> float:
    """:func:`pinas.pi_model.info_nce` over many queries, in chunks (the logits of 50k x 49k would not fit)."""
    total = sum(info_nce(q[i:i + chunk], k_pos[i:i + chunk], queue, temperature).item() * len(q[i:i + chunk])
                for i in range(0, len(q), chunk))
    return total / len(q)


class ContrastiveProxy:
    """Cross-path InfoNCE of the candidate against random fully-differing reference paths, on held-out views.

    As in training, with views v1..v4 of an image: queries come from the student (v1 on the candidate, v3 on the
    reference), keys from the teacher (v2 on the candidate, v4 on the reference), positives are cross-path
    (q_cand with k_ref, q_ref with k_cand), negatives the trained queue. Each path is recalibrated (student and
    teacher BNs) before it embeds; the candidate's embeddings are reused for every reference path. The reference
    paths are drawn from a generator seeded with (seed, arch), so they are fixed for a given architecture.
    """

    name = "contrastive"

    def __init__(self, model: SupernetPi, recal: FixedBatches, heldout: FixedBatches, reference_paths: int = 2,
                 seed: int = 0):
        self.model, self.recal, self.heldout = model, recal, heldout
        self.reference_paths, self.seed = reference_paths, seed
        self.timings = Timings()

    def _embed(self, arch: Arch, q_view: int, k_view: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Student queries of view ``q_view`` and teacher keys of view ``k_view`` on ``arch``, BN recalibrated."""
        student, teacher = self.model.student, self.model.teacher
        t0 = time.perf_counter()
        with precise_bn([(student.backbone, arch), (teacher.backbone, arch)], self.recal):
            t1 = time.perf_counter()
            qs, ks = [], []
            with torch.no_grad():
                for x, _ in self.heldout:
                    views = x.chunk(4)
                    qs.append(student(views[q_view], arch))
                    ks.append(teacher(views[k_view], arch))
        t = self.timings
        t.recal_s, t.proxy_s = t.recal_s + t1 - t0, t.proxy_s + time.perf_counter() - t1
        t.recal_images += 2 * self.recal.num_images
        t.proxy_images += 2 * self.heldout.num_images
        return torch.cat(qs), torch.cat(ks)

    def references(self, arch: Arch) -> list[Arch]:
        """The reference paths of ``arch``: fixed for a given (seed, arch), differing from it at every layer."""
        rng = np.random.default_rng([self.seed, *arch])
        return [self.model.space.sample_differing(arch, rng) for _ in range(self.reference_paths)]

    def __call__(self, arch: Arch) -> tuple[float, float, None]:
        queue, tau = self.model.queue.detach(), self.model.temperature
        q_c, k_c = self._embed(arch, 0, 1)  # the candidate plays training's alpha (views 1, 2) ...
        losses = []
        for ref in self.references(arch):
            q_r, k_r = self._embed(ref, 2, 3)  # ... and each reference its beta (views 3, 4)
            losses.append(chunked_info_nce(q_c, k_r, queue, tau) + chunked_info_nce(q_r, k_c, queue, tau))
        self.timings.evaluations += 1
        loss = float(np.mean(losses))
        return -loss, loss, None


class ProbeProxy:
    """Top-1 (%) of the shared linear probe on a labelled held-out split, after recalibrating the path's BNs."""

    name = "linear_probe"

    def __init__(self, backbone: PiNASBackbone, head: nn.Linear, recal: FixedBatches, heldout: FixedBatches):
        self.backbone, self.head, self.recal, self.heldout = backbone, head, recal, heldout
        self.timings = Timings()

    def __call__(self, arch: Arch) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        with precise_bn([(self.backbone, arch)], self.recal):
            t1 = time.perf_counter()
            correct, loss_sum, count = 0, 0.0, 0
            with torch.no_grad():
                for x, y in self.heldout:
                    logits = self.head(self.backbone(x, arch))
                    loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                    correct += int((logits.argmax(1) == y).sum())
                    count += y.numel()
        t2 = time.perf_counter()
        t = self.timings
        t.recal_s, t.proxy_s = t.recal_s + t1 - t0, t.proxy_s + t2 - t1
        t.recal_images, t.proxy_images = t.recal_images + self.recal.num_images, t.proxy_images + count
        t.evaluations += 1
        acc = 100.0 * correct / count
        return acc, loss_sum / count, acc


# ----------------------------------------------------------------------------------------------- evaluator
class Evaluator:
    """A proxy behind the evaluation cache: the same architecture always returns the same, stored, result."""

    def __init__(self, space: SearchSpace, proxy: Proxy):
        self.space, self.proxy = space, proxy
        self.cache: dict[Arch, Evaluation] = {}
        self.hits = self.misses = 0

    def __call__(self, arch: Sequence[int] | str) -> Evaluation:
        arch = self.space.parse(arch)
        if arch in self.cache:
            self.hits += 1
            return self.cache[arch]
        self.misses += 1
        score, loss, acc = self.proxy(arch)
        result = Evaluation(self.space.format(arch), self.proxy.name, float(score), loss, acc)
        self.cache[arch] = result
        return result

    def remember(self, evaluation: Evaluation) -> None:
        """Seed the cache with a stored result (a resumed search does not recompute what it already scored)."""
        self.cache[self.space.parse(evaluation.arch)] = evaluation


# --------------------------------------------------------------------------------------------- construction
def check_supernet_dir(supernet_dir: str | Path) -> SupernetConfig:
    """The config of a finished ``supernet`` stage folder, after checking its manifest digests."""
    supernet_dir = Path(supernet_dir)
    if not supernet_dir.is_dir():
        raise ArtifactError(f"supernet_dir {supernet_dir} does not exist")
    manifest = verify_manifest(supernet_dir)
    if SUPERNET_ARTIFACT not in manifest["files"]:
        raise ArtifactError(f"supernet_dir {supernet_dir}: manifest lists no {SUPERNET_ARTIFACT}")
    return SupernetConfig.model_validate(manifest["config"])


def load_trained_supernet(supernet_dir: str | Path, device: str | torch.device = "cpu"
                          ) -> tuple[SupernetPi, SupernetConfig]:
    """The supernet-Pi of a finished ``supernet`` stage folder (frozen, eval mode) and its config."""
    cfg = check_supernet_dir(supernet_dir)
    model = load_supernet(Path(supernet_dir) / SUPERNET_ARTIFACT, cfg, device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, cfg


def default_decode_size(space: SearchSpace) -> int:
    """The loader's square, 8/7 of the input (256 for 224), so crops see a little context, as in training."""
    return round(space.input_size * 8 / 7)


def build_evaluator(cfg: EvaluatorConfig, model: SupernetPi, train_dir: str | Path | None,
                    val_dir: str | Path | None, probe: tuple[nn.Linear, dict] | None = None,
                    device: torch.device | None = None, views: MocoV2Views | None = None) -> Evaluator:
    """An :class:`Evaluator` for ``cfg.proxy`` on a loaded supernet; ``probe`` is the trained head and its
    ``probe.json`` (see :func:`pinas.linear_probe.load_probe`), needed for ``linear_probe``. With
    ``cfg.channels_last`` the model's weights are switched to the NHWC layout in place (values unchanged).

    Recalibration uses ``train_dir`` images with the augmentation the scored network was trained on (MoCo v2 views
    for the contrastive proxy, the probe's crop + flip for the probe); scoring uses the held-out ``val_dir``.
    ``views`` is the supernet's own view pipeline (:func:`pinas.supernet_training.training_views`; default: the
    paper's MoCo v2 settings).
    """
    space = model.space
    if cfg.proxy == "bn_gamma":
        return Evaluator(space, BNGammaProxy(model.student.backbone))
    device = device or next(model.parameters()).device
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # same values, NHWC layout
    size = space.input_size
    decode = cfg.decode_size or default_decode_size(space)
    train = ImageFolderDataset(train_dir, decode)
    val = ImageFolderDataset(val_dir, decode)
    budget = cfg.cache_mb * 2 ** 20

    def batches(dataset, idx, transform, seed):
        return FixedBatches(dataset, idx, transform.to(device), device, seed, budget, cfg.num_workers,
                            cfg.channels_last)

    recal_idx = recal_batches(len(train), cfg.batch_size, cfg.recal_batches, cfg.seed)
    held_idx = heldout_batches(len(val), cfg.batch_size, cfg.heldout_images)
    if cfg.proxy == "contrastive":
        views = views or MocoV2Views(size)
        proxy = ContrastiveProxy(model, batches(train, recal_idx, views, cfg.seed),
                                 batches(val, held_idx, FourViews(views), cfg.seed + 1), cfg.reference_paths,
                                 cfg.seed)
    else:
        if probe is None:
            raise ValueError("proxy 'linear_probe' needs the trained probe (run the linear_probe stage)")
        head, info = probe
        proxy = ProbeProxy(model.student.backbone, head.to(device).eval(),
                           batches(train, recal_idx, CropFlip(size, info.get("crop_min_scale", 0.08)), cfg.seed),
                           batches(val, held_idx, CenterCrop(size), cfg.seed + 1))
    return Evaluator(space, proxy)
