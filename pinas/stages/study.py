"""The ranking study's last stage: score the retrained architectures with every proxy on one supernet, correlate.

The study (``pinas-pipeline study``, :mod:`flows.study`) trains one supernet per objective (``pi``, ``same_path``,
``spos``), retrains N architectures stand-alone with the retrain recipe (several seeds each) and then runs this
stage once per supernet: each architecture is scored by every proxy that applies to that supernet after BN
recalibration of its path (the search's own evaluator), and each proxy's scores are correlated with the seed-mean
top-1 (:mod:`pinas.search.study`). The contrastive proxy needs the momentum teacher, which a supervised SPOS
supernet does not train, so it is left out there.

Outputs (:class:`~pinas.io.stage_dirs.StudyDir`): ``study.json`` (architectures with costs, top-1 per seed and
proxy scores; per proxy tau, rho and 95% intervals; the seed noise) and one ``scatter-<proxy>.png`` per proxy.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from pinas.data.images import ImageList, SearchHoldout, scan_image_folder
from pinas.data.transforms import supernet_views
from pinas.engine.distributed import resolve_device
from pinas.io.stage_dirs import ProbeDir, RetrainDir, StudyDir, SupernetDir
from pinas.models.supernet_pi import Objective
from pinas.plots import plot_study
from pinas.search.constraints import cost_model
from pinas.search.evaluation import EvaluatorConfig, ProxyName, build_evaluator
from pinas.search.study import correlations, pick_architectures, random_pool, seed_noise
from pinas.space import get_space
from pinas.stages.common import NO_CONTEXT, StageConfig, StageContext, StageInputs, finished_run

log = logging.getLogger("pinas")
ALL_PROXIES: tuple[str, ...] = ("contrastive", "linear_probe", "bn_gamma")
Baseline = Literal["macs", "params", "random"]
#: what every proxy must beat: the cost of the architecture (on ImageNet-scale spaces FLOPs alone ranks about as well
#: as a trained supernet) and a score drawn at random
ALL_BASELINES: tuple[str, ...] = ("macs", "params", "random")


class StudyConfig(StageConfig):
    """What ``pinas-pipeline study`` does: which supernets, which architectures, how many retrains, which proxies."""

    runtime_fields: ClassVar[frozenset[str]] = StageConfig.runtime_fields | {"concurrency"}

    supernets: list[Objective] = Field(["pi"], min_length=1, description="supernet objectives compared side by "
                                       "side on the same retrained architectures (pi, same_path, spos)")
    archs: int = Field(12, ge=3, description="architectures retrained stand-alone")
    pick: Literal["cost", "random", "proxy"] = Field(
        "cost", description="cost: evenly spaced over the MACs range of a random pool; random: uniform; proxy: half "
                            "evenly spaced over the search proxy's scores of the pool on the first supernet, half "
                            "random")
    arch_list: list[str] = Field([], description="these architectures instead of a pick")
    pool: int = Field(500, ge=1, description="random architectures the cost and proxy picks choose from")
    seeds: list[int] = Field([0, 1], min_length=1, description="retrain seeds per architecture; two or more "
                                                               "measure the seed-to-seed noise")
    proxies: list[ProxyName] = Field(list(ALL_PROXIES), min_length=1)
    baselines: list[Baseline] = Field(list(ALL_BASELINES), description="scores reported beside the proxies with "
                                                                       "the same statistics")
    concurrency: int = Field(1, ge=1, description="retrains running at once")
    bootstrap: int = Field(1000, ge=10, description="bootstrap resamples of the 95% intervals")
    seed: int = 0

    @field_validator("seeds", "supernets", "arch_list")
    @classmethod
    def _distinct(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError(f"lists each item twice: {value}")
        return value

    @property
    def picks_by_proxy(self) -> bool:
        """The architectures are known only once the first supernet is trained (:meth:`architectures` needs the
        proxy's scores of :meth:`pool`)."""
        return self.pick == "proxy" and not self.arch_list

    def pool_archs(self, space_name: str) -> list[str]:
        return [get_space(space_name).format(a) for a in random_pool(get_space(space_name), self.pool, self.seed)]

    def architectures(self, space_name: str, num_classes: int,
                      scores: Mapping[str, float] | None = None) -> list[str]:
        """The study's architectures (canonical strings): ``arch_list`` when given, else the pick (``scores``: the
        proxy's scores of :meth:`pool_archs`, for the proxy pick)."""
        space = get_space(space_name)
        if self.arch_list:
            archs = [space.format(space.parse(a)) for a in self.arch_list]
            if len(set(archs)) < 3:
                raise ValueError(f"study.arch_list: need at least 3 distinct architectures, got {len(set(archs))}")
            return archs
        return pick_architectures(space, self.archs, self.pick, self.seed, self.pool,
                                  cost_model(space, num_classes) if self.pick == "cost" else None,
                                  {space.parse(a): v for a, v in scores.items()} if scores is not None else None)


def applicable_proxies(proxies: Sequence[str], objective: str) -> list[str]:
    """The proxies a supernet trained with ``objective`` can be scored with (SPOS trains no teacher)."""
    return [p for p in proxies if not (p == "contrastive" and objective == "spos")]


class StudyScoreConfig(StageConfig):
    """One supernet's part of the study: the architectures, the seeds, the proxies and how they score."""

    objective: Objective
    archs: list[str]
    seeds: list[int]
    proxies: list[ProxyName]
    baselines: list[Baseline] = list(ALL_BASELINES)
    evaluator: EvaluatorConfig
    holdout: SearchHoldout = SearchHoldout()
    bootstrap: int = 1000
    seed: int = 0


def proxy_scores(evaluator_cfg: EvaluatorConfig, holdout: SearchHoldout, supernet_dir: Path, train_dir: Path,
                 archs: Sequence[str], probe_dir: Path | None = None) -> dict[str, float]:
    """The search proxy's score of each architecture on a supernet, as the search scores (the proxy pick's input)."""
    device = resolve_device(evaluator_cfg.device)
    model = SupernetDir(supernet_dir).load(device)
    probe = ProbeDir(probe_dir).load(device) if evaluator_cfg.proxy == "linear_probe" else None
    evaluator = build_evaluator(evaluator_cfg, model, *holdout.split(ImageList.scan(train_dir)), probe, device,
                                supernet_views(model.space.input_size, SupernetDir(supernet_dir).settings(), views=1))
    return {e.arch: e.score for e in evaluator.evaluate_many(list(archs))}


def retrain_step(arch: str, seed: int) -> str:
    """The name a study gives the retrain of ``arch`` with ``seed`` (its upstream records are keyed by it)."""
    return f"retrain-{arch}-s{seed}"


def run(cfg: StudyScoreConfig, inputs: StageInputs, out_dir: Path, ctx: StageContext = NO_CONTEXT) -> dict:
    """The study flow's entry (:mod:`pinas.stages.graph`): the supernet (and its probe), the retrains by
    :func:`retrain_step`, ``imagenet/train``'s holdout."""
    retrains = {arch: [inputs.stage(retrain_step(arch, seed)) for seed in cfg.seeds] for arch in cfg.archs}
    probe = inputs.stage("linear-probe") if "linear-probe" in inputs.stages else None
    return run_study(cfg, inputs.stage("supernet"), inputs.dataset("imagenet") / "train", retrains, out_dir, probe)


def run_study(cfg: StudyScoreConfig, supernet_dir: Path, train_dir: Path, retrains: Mapping[str, Sequence[Path]],
              out_dir: Path, probe_dir: Path | None = None) -> dict:
    """Score ``cfg.archs`` with every proxy of ``cfg`` and correlate with the retrained top-1.

    The proxies score as the search does: on ``cfg.holdout`` of ``train_dir``, recalibrating on the rest.
    ``retrains`` maps each architecture to its finished retrain folders (one per seed, in ``cfg.seeds`` order).
    """
    folder = StudyDir(out_dir)
    finished = finished_run(folder, cfg)
    if finished is not None:
        return finished
    missing = [a for a in cfg.archs if len(retrains.get(a, ())) != len(cfg.seeds)]
    if missing:
        raise ValueError(f"study: no retrain folder for every seed of {', '.join(missing)}")
    top1 = {}
    for arch in cfg.archs:
        top1[arch] = []
        for path in retrains[arch]:
            RetrainDir(path).require("retrain folder")
            top1[arch].append(float(RetrainDir(path).metrics()["top1"]))
    supernet_cfg = SupernetDir(supernet_dir).settings()
    if supernet_cfg.get("objective", "pi") != cfg.objective:
        raise ValueError(f"supernet {supernet_dir} was trained with objective {supernet_cfg.get('objective')!r}, "
                         f"not {cfg.objective!r}")
    device = resolve_device(cfg.evaluator.device)
    model = SupernetDir(supernet_dir).load(device)
    space = model.space
    if "linear_probe" in cfg.proxies and probe_dir is None:
        raise ValueError("study: the linear_probe proxy needs the linear_probe stage's folder")
    probe = ProbeDir(probe_dir).load(device) if "linear_probe" in cfg.proxies else None
    views = supernet_views(space.input_size, supernet_cfg, views=1)
    images = cfg.holdout.split(ImageList.scan(train_dir))
    scores: dict[str, dict[str, float]] = {}
    for proxy in cfg.proxies:
        evaluator = build_evaluator(cfg.evaluator.model_copy(update={"proxy": proxy}), model, *images, probe,
                                    device, views)
        scores[proxy] = {e.arch: e.score for e in evaluator.evaluate_many(cfg.archs)}
        log.info("study %s: scored %d architectures with %s", cfg.objective, len(cfg.archs), proxy)
    cost = cost_model(space, len(scan_image_folder(train_dir)[1]))
    mean_top1 = {a: float(np.mean(v)) for a, v in top1.items()}
    costs = {a: cost(space.parse(a)) for a in cfg.archs}
    random_scores = np.random.default_rng([cfg.seed, 7]).random(len(cfg.archs))
    baselines = {"macs": {a: float(costs[a].macs) for a in cfg.archs},
                 "params": {a: float(costs[a].params) for a in cfg.archs},
                 "random": dict(zip(cfg.archs, random_scores.tolist()))}
    scores.update({b: baselines[b] for b in cfg.baselines})
    rows = [{"arch": a, "macs": costs[a].macs, "params": costs[a].params, "top1": top1[a], "top1_mean": mean_top1[a],
             **{p: scores[p][a] for p in cfg.proxies}, **({"random": baselines["random"][a]}
                                                          if "random" in cfg.baselines else {})} for a in cfg.archs]
    report = {"objective": cfg.objective, "space": space.name, "seeds": cfg.seeds, "architectures": rows,
              "baselines": cfg.baselines,
              "correlations": {p: correlations(scores[p], mean_top1, cfg.bootstrap, cfg.seed)
                               for p in [*cfg.proxies, *cfg.baselines]},
              "seed_noise": seed_noise(top1)}
    folder.path.mkdir(parents=True, exist_ok=True)
    for proxy in cfg.proxies:
        plot_study(rows, proxy, report["correlations"][proxy], folder / StudyDir.scatter(proxy),
                   f"{cfg.objective} supernet")
    folder.write(report)
    metrics = {f"{p}_kendall_tau": report["correlations"][p]["kendall_tau"] for p in [*cfg.proxies, *cfg.baselines]}
    metrics["seed_to_seed_kendall_tau"] = report["seed_noise"]["seed_to_seed_kendall_tau"]
    return folder.write_manifest(folder.outputs(cfg.proxies), cfg.model_dump(mode="json"), metrics=metrics)
