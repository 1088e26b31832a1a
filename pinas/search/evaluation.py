"""Scoring architectures: the evaluator config, the evaluation cache, and building an evaluator for a proxy.

:class:`Evaluator` wraps a proxy (:mod:`pinas.search.proxies`) with the evaluation cache, so one architecture is
never computed twice; :func:`build_evaluator` wires a proxy to the recalibration and held-out batches it needs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from pinas.data.images import ImageFolderDataset, ImageList, TrainCrops
from pinas.data.transforms import CenterCrop, Views, crop_flip, moco_v2_views
from pinas.engine.distributed import SINGLE_PROCESS, DistInfo, gather_objects
from pinas.models.supernet_pi import SupernetPi
from pinas.search.proxies import BNGammaProxy, ContrastiveProxy, ProbeProxy, Proxy
from pinas.search.recalibration import FixedBatches, heldout_batches, recal_batches
from pinas.space import Arch, SearchSpace

ProxyName = Literal["contrastive", "linear_probe", "bn_gamma"]


class EvaluatorConfig(BaseModel):
    """How one candidate is scored. The default proxy and the recalibration are the released search's (method doc
    3.3): the shared linear probe's top-1 after precise BN over 49 batches of 128 training images; the scoring
    images are the search holdout of ``train/``, not ``val/`` (:class:`pinas.data.images.SearchHoldout`)."""

    model_config = ConfigDict(extra="forbid")
    #: how fast a score is computed, not the score (pinas.stages.common.result_settings)
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"cache_mb", "num_workers", "prefix_sharing", "device"})

    proxy: ProxyName = Field("linear_probe", description="linear_probe: the released search's proxy (needs the "
                             "linear_probe stage); contrastive: label-free cross-path InfoNCE (pinas's extension); "
                             "bn_gamma: BN-NAS's data-free score")
    batch_size: int = Field(128, ge=2, description="images per batch of recalibration and scoring (each candidate "
                                                   "is scored whole in one process)")
    recal_batches: int = Field(49, ge=1, description="training batches of precise-BN recalibration per path")
    heldout_images: int | None = Field(None, ge=2, description="search-holdout images scored; None = all")
    reference_squares: int = Field(1, ge=1, description="contrastive proxy: Latin squares of reference paths, "
                                                        "each choices - 1 paths (pinas.search.proxies.ReferencePaths)")
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
    """The evaluation view's square, 8/7 of the input (256 for 224), as retraining evaluates."""
    return round(space.input_size * 8 / 7)


def build_evaluator(cfg: EvaluatorConfig, model: SupernetPi, recal_images: ImageList | None,
                    score_images: ImageList | None, probe: tuple[nn.Linear, dict] | None = None,
                    device: torch.device | None = None, views: Views | None = None,
                    info: DistInfo = SINGLE_PROCESS) -> Evaluator:
    """An :class:`Evaluator` for ``cfg.proxy`` on a loaded supernet; ``probe`` is the trained head and its
    ``probe.json`` (:meth:`pinas.io.stage_dirs.ProbeDir.load`), needed for ``linear_probe``. With
    ``cfg.channels_last`` the model's weights are switched to the NHWC layout in place (values unchanged).

    Recalibration uses ``recal_images`` with the augmentation the scored network was trained on (MoCo v2 views for
    the contrastive proxy, the probe's crop + flip for the probe), cut by the loader from the full images; scoring
    uses ``score_images`` (the search holdout): four MoCo views for the contrastive proxy, the evaluation view for
    the probe. ``views`` is the supernet's own single-view recipe (:func:`pinas.data.transforms.supernet_views`;
    default: the paper's MoCo v2 settings). ``info``: the process group whose ranks share each generation.
    """
    space = model.space
    if cfg.proxy == "bn_gamma":
        return Evaluator(space, BNGammaProxy(model.student.backbone), info)
    if recal_images is None or score_images is None:
        raise ValueError(f"proxy {cfg.proxy!r} needs recalibration and scoring images")
    device = device or next(model.parameters()).device
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # same values, NHWC layout
    size = space.input_size
    budget = cfg.cache_mb * 2 ** 20

    def batches(dataset, idx, transform, seed):
        return FixedBatches(dataset, idx, transform.to(device), device, seed, budget, cfg.num_workers,
                            cfg.channels_last)

    recal_idx = recal_batches(len(recal_images), cfg.batch_size, cfg.recal_batches, cfg.seed)
    held_idx = heldout_batches(len(score_images), cfg.batch_size, cfg.heldout_images)
    if cfg.proxy == "contrastive":
        views = views or moco_v2_views(size, views=1)
        four = replace(views.crops, views=4)
        proxy = ContrastiveProxy(model, batches(TrainCrops(recal_images, views.crops, cfg.seed), recal_idx,
                                                views.device, cfg.seed),
                                 batches(TrainCrops(score_images, four, cfg.seed + 1), held_idx, views.device,
                                         cfg.seed + 1),
                                 cfg.reference_squares, cfg.seed, cfg.prefix_sharing)
    else:
        if probe is None:
            raise ValueError("proxy 'linear_probe' needs the trained probe (run the linear_probe stage)")
        head, probe_info = probe
        probe_views = crop_flip(size, probe_info.get("crop_min_scale", 0.08))
        proxy = ProbeProxy(model.student.backbone, head.to(device).eval(),
                           batches(TrainCrops(recal_images, probe_views.crops, cfg.seed), recal_idx,
                                   probe_views.device, cfg.seed),
                           batches(ImageFolderDataset(score_images, default_decode_size(space)), held_idx,
                                   CenterCrop(size), cfg.seed + 1), cfg.prefix_sharing)
    return Evaluator(space, proxy, info)
