"""Scoring architectures: the evaluator config, the evaluation cache, and building an evaluator for a proxy.

:class:`Evaluator` wraps a proxy (:mod:`pinas.search.proxies`) with the evaluation cache, so one architecture is
never computed twice; :func:`build_evaluator` wires a proxy to the recalibration and held-out batches it needs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from pinas.data.images import ImageFolderDataset
from pinas.data.transforms import CenterCrop, CropFlip, FourViews, MocoV2Views
from pinas.engine.distributed import SINGLE_PROCESS, DistInfo, gather_objects
from pinas.models.supernet_pi import SupernetPi
from pinas.search.proxies import BNGammaProxy, ContrastiveProxy, ProbeProxy, Proxy
from pinas.search.recalibration import FixedBatches, heldout_batches, recal_batches
from pinas.space import Arch, SearchSpace

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
    prefix_sharing: bool = Field(True, description="compute the common prefixes of a generation's paths once "
                                                   "(the same scores, fewer block evaluations)")
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


class Evaluator:
    """A proxy behind the evaluation cache: the same architecture always returns the same, stored, result.

    :meth:`evaluate_many` scores a whole generation at once: under torchrun each rank scores a contiguous share of
    the new architectures (in sorted order, so a share keeps its common prefixes) and the results are gathered, so
    every rank ends with the same cache.
    """

    def __init__(self, space: SearchSpace, proxy: Proxy, info: DistInfo = SINGLE_PROCESS):
        self.space, self.proxy, self.info = space, proxy, info
        self.cache: dict[Arch, Evaluation] = {}
        self.hits = self.misses = 0

    def __call__(self, arch: Sequence[int] | str) -> Evaluation:
        return self.evaluate_many([arch])[0]

    def evaluate_many(self, archs: Sequence[Sequence[int] | str]) -> list[Evaluation]:
        archs = [self.space.parse(a) for a in archs]
        todo = sorted({a for a in archs if a not in self.cache})
        self.hits += len(archs) - len(todo)
        self.misses += len(todo)
        share = -(-len(todo) // self.info.world_size)  # ceil
        mine = todo[self.info.rank * share:(self.info.rank + 1) * share]
        scored = list(zip(mine, self.proxy.score_many(mine) if mine else []))
        for part in gather_objects(scored, self.info):
            for arch, (score, loss, acc) in part:
                self.cache[arch] = Evaluation(self.space.format(arch), self.proxy.name, float(score), loss, acc)
        return [self.cache[a] for a in archs]

    def remember(self, evaluation: Evaluation) -> None:
        """Seed the cache with a stored result (a resumed search does not recompute what it already scored)."""
        self.cache[self.space.parse(evaluation.arch)] = evaluation


def default_decode_size(space: SearchSpace) -> int:
    """The loader's square, 8/7 of the input (256 for 224), so crops see a little context, as in training."""
    return round(space.input_size * 8 / 7)


def build_evaluator(cfg: EvaluatorConfig, model: SupernetPi, train_dir: str | Path | None,
                    val_dir: str | Path | None, probe: tuple[nn.Linear, dict] | None = None,
                    device: torch.device | None = None, views: MocoV2Views | None = None,
                    info: DistInfo = SINGLE_PROCESS) -> Evaluator:
    """An :class:`Evaluator` for ``cfg.proxy`` on a loaded supernet; ``probe`` is the trained head and its
    ``probe.json`` (:meth:`pinas.io.stage_dirs.ProbeDir.load`), needed for ``linear_probe``. With
    ``cfg.channels_last`` the model's weights are switched to the NHWC layout in place (values unchanged).

    Recalibration uses ``train_dir`` images with the augmentation the scored network was trained on (MoCo v2 views
    for the contrastive proxy, the probe's crop + flip for the probe); scoring uses the held-out ``val_dir``.
    ``views`` is the supernet's own view pipeline (:meth:`pinas.data.transforms.MocoV2Views.from_settings`;
    default: the paper's MoCo v2 settings). ``info``: the process group whose ranks share each generation.
    """
    space = model.space
    if cfg.proxy == "bn_gamma":
        return Evaluator(space, BNGammaProxy(model.student.backbone), info)
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
                                 cfg.seed, cfg.prefix_sharing)
    else:
        if probe is None:
            raise ValueError("proxy 'linear_probe' needs the trained probe (run the linear_probe stage)")
        head, probe_info = probe
        proxy = ProbeProxy(model.student.backbone, head.to(device).eval(),
                           batches(train, recal_idx, CropFlip(size, probe_info.get("crop_min_scale", 0.08)),
                                   cfg.seed),
                           batches(val, held_idx, CenterCrop(size), cfg.seed + 1), cfg.prefix_sharing)
    return Evaluator(space, proxy, info)
