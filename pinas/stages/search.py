"""Stage 2: evolutionary architecture search on the trained supernet, under cost constraints, resumable.

The loop is :class:`pinas.search.searcher.Searcher`: a strategy (:mod:`pinas.search.strategies`, SPOS's evolution by
default) proposes, and candidates are scored by an evaluator (:mod:`pinas.search.evaluation`) after BN recalibration
of their path. After every generation the search state is
written atomically to ``search_state.json`` (:class:`~pinas.io.stage_dirs.SearchDir`) together with what the result
depends on; a restarted run with the same settings goes on at the next generation and ends with the same result as
one never interrupted, and one with other settings is refused, naming the differing fields.

Outputs: ``search_state.json``, ``candidates.jsonl`` (every evaluated candidate: arch, generation, origin, score,
loss, acc, params, macs, [latency_ms], bn_gamma), ``result.json`` (best, top-k, Pareto front of score vs MACs [and
latency], random-population median), ``fitness.png``, ``pareto.png`` and the manifest.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from pinas.data.images import DataError, ImageList, SearchHoldout, scan_image_folder
from pinas.data.transforms import supernet_views
from pinas.engine.checkpoint import check_same_settings
from pinas.engine.distributed import barrier, init_distributed, resolve_device
from pinas.engine.launch import SINGLE_NODE, Nodes
from pinas.engine.loop import ProgressFn
from pinas.io.stage_dirs import ProbeDir, SearchDir, SupernetDir
from pinas.plots import plot_fitness, plot_pareto
from pinas.search.constraints import ConstraintConfig, Constraints, LatencyFn, LatencyTable, cost_model
from pinas.search.evaluation import Evaluator, EvaluatorConfig, build_evaluator
from pinas.search.proxies import BNGammaProxy
from pinas.search.searcher import Searcher
from pinas.search.strategies import StrategyConfig
from pinas.stages.common import NO_CONTEXT, DistributedStageConfig, StageContext, StageInputs, launch

log = logging.getLogger("pinas")


class SearchConfig(DistributedStageConfig, StrategyConfig, ConstraintConfig):
    """The strategy, constraints and the evaluator; defaults are SPOS's evolution (50 x 20, top 10, 25 + 25,
    p = 0.1)."""

    evaluator: EvaluatorConfig = EvaluatorConfig()
    holdout: SearchHoldout = Field(SearchHoldout(), description="the train/ images candidates are scored on (never "
                                                                "val/); the rest of train/ recalibrates BN")
    num_classes: int | None = Field(None, ge=1, description="classifier head counted in the costs; "
                                                            "default: classes of train_dir")
    #: not the processes that share the work either: every rank scores its candidates alike
    runtime_fields: ClassVar[frozenset[str]] = DistributedStageConfig.runtime_fields | {"nproc", "nodes"}


def run_search(cfg: SearchConfig, supernet_dir: Path, train_dir: Path, out_dir: Path, probe_dir: Path | None = None,
               progress: ProgressFn | None = None, latency_fn: LatencyFn | None = None,
               stop_after_generation: int | None = None, rendezvous: Nodes = SINGLE_NODE) -> dict | None:
    """The stage: validate inputs, evolve (resuming from ``search_state.json``), write the results.

    ``train_dir`` is split by ``cfg.holdout``: the held-out images are what candidates are scored on, the rest feed
    BN recalibration (the search never reads ``val/``, where the retrained top-1 is reported). ``probe_dir`` is the
    finished ``linear_probe`` stage (needed when ``cfg.evaluator.proxy == "linear_probe"``). ``latency_fn`` (arch
    -> ms) overrides ``cfg.latency_table`` (in this process only). ``stop_after_generation`` returns after that
    generation is saved, as if the process had been killed there (for tests of resumption). Distributed (``nproc``
    / ``nodes``), the search runs under torchrun: every rank scores its share of each generation, the evolution
    runs identically on every rank, rank 0 writes; on a node other than 0 this returns None.
    """
    inputs = _check_inputs(cfg, supernet_dir, train_dir, probe_dir)
    if not cfg.distributed:
        return evolve(cfg, supernet_dir, train_dir, out_dir, probe_dir, progress, latency_fn, stop_after_generation,
                      inputs)
    if latency_fn is not None:
        raise ValueError("latency_fn works in one process only; give latency_table to a distributed search")
    SearchDir(out_dir).path.mkdir(parents=True, exist_ok=True)
    launch("search", cfg, SearchDir(out_dir), {"supernet": supernet_dir, "train_dir": train_dir, "probe": probe_dir},
           rendezvous, stop_after_generation)
    if rendezvous.rank:
        return None
    folder = SearchDir(out_dir)
    return folder.manifest() if folder.finished else {"stopped_after_generation": folder.read_state()["generation"]}

def run(cfg: SearchConfig, inputs: StageInputs, out_dir: Path, ctx: StageContext = NO_CONTEXT) -> dict | None:
    """The pipeline's entry (:mod:`pinas.stages.graph`): the supernet (and its probe, for the linear-probe proxy)
    scored on ``imagenet/train``'s holdout."""
    probe = inputs.stage("linear-probe") if "linear-probe" in inputs.stages else None
    return run_search(cfg, inputs.stage("supernet"), inputs.dataset("imagenet") / "train", out_dir, probe,
                      ctx.progress, rendezvous=ctx.nodes)


def search_images(holdout: SearchHoldout, train_dir: Path) -> tuple[ImageList, ImageList]:
    """(recalibration images, scoring images): ``train_dir`` minus the holdout, and the holdout."""
    return holdout.split(ImageList.scan(train_dir))


def _check_inputs(cfg: SearchConfig, supernet_dir: Path, train_dir: Path,
                  probe_dir: Path | None) -> tuple[dict, list[str], tuple | None]:
    """(the supernet's settings, the training classes, the probe): checked before anything is computed."""
    supernet_cfg = SupernetDir(supernet_dir).settings()
    _, classes = scan_image_folder(train_dir)
    search_images(cfg.holdout, train_dir)  # a holdout that does not fit fails here, naming the setting
    probe = None
    if cfg.evaluator.proxy == "linear_probe":
        if probe_dir is None:
            raise ValueError("probe_dir is required for evaluator.proxy = 'linear_probe' (run the linear_probe stage)")
        probe = ProbeDir(probe_dir).load()
        if probe[1]["space"] != supernet_cfg["space"]:
            raise ValueError(f"probe_dir {probe_dir} was trained on space {probe[1]['space']!r}, the supernet is "
                             f"{supernet_cfg['space']!r}")
        if probe[1]["classes"] != classes:
            raise DataError(f"probe_dir {probe_dir} was trained on the classes {probe[1]['classes']}, train_dir "
                            f"{train_dir} has {classes}")
    return supernet_cfg, classes, probe


def evolve(cfg: SearchConfig, supernet_dir: Path, train_dir: Path, out_dir: Path, probe_dir: Path | None = None,
           progress: ProgressFn | None = None, latency_fn: LatencyFn | None = None,
           stop_after_generation: int | None = None, inputs: tuple | None = None) -> dict:
    """The search in this process (one rank under torchrun)."""
    folder, supernet = SearchDir(out_dir), SupernetDir(supernet_dir)
    supernet_cfg, classes, probe = inputs or _check_inputs(cfg, supernet_dir, train_dir, probe_dir)
    info = init_distributed(cfg.evaluator.device)
    device = resolve_device(cfg.evaluator.device, info)
    model = supernet.load(device)
    space = model.space
    latency = latency_fn or (LatencyTable.load(cfg.latency_table, space) if cfg.latency_table else None)
    if cfg.max_latency_ms is not None and latency is None:
        raise ValueError("max_latency_ms needs latency_table (or a latency_fn)")
    check = getattr(latency, "validation", None)
    if check and cfg.max_latency_ms is not None and cfg.latency_margin and info.is_main:
        log.info("search: max_latency_ms %g applied to the table's predictions as %.4g (its error on whole networks, "
                 "MAPE %.1f %%, taken off)", cfg.max_latency_ms, cfg.max_latency_ms / (1 + check["mape_pct"] / 100),
                 check["mape_pct"])
    if check and not check.get("trusted", True) and info.is_main:
        log.warning("search: latency_table %s is NOT trusted: on whole networks it errs by %.1f %% (MAPE, threshold "
                    "%g %%); latencies and the max_latency_ms bound are that uncertain", cfg.latency_table,
                    check["mape_pct"], check["threshold_pct"])
    cost = cost_model(space, cfg.num_classes or len(classes))
    constraints = Constraints.from_config(cfg, latency)
    constraints.check_reachable(cost, latency if isinstance(latency, LatencyTable) else None)

    if probe is not None:
        probe = (probe[0].to(device), probe[1])
    evaluator = build_evaluator(cfg.evaluator, model, *search_images(cfg.holdout, train_dir), probe, device,
                                supernet_views(space.input_size, supernet_cfg, views=1), info)
    search = Searcher(cfg, space, evaluator, cost, constraints, latency, BNGammaProxy(model.student.backbone))
    # what the result depends on: the settings, the supernet (and probe) files, the latency source
    fingerprint = {"config": cfg.settings(), "space": supernet_cfg["space"], "supernet": supernet.manifest()["files"],
                   "probe": ProbeDir(probe_dir).manifest()["files"] if probe is not None else None,
                   "latency": "fn" if latency_fn else cfg.latency_table}
    folder.path.mkdir(parents=True, exist_ok=True)
    state = folder.read_state()
    if state is not None:
        check_same_settings(state.get("fingerprint", {}), fingerprint, folder / SearchDir.STATE, "search state")
        search.load_state_dict(state)
        if info.is_main:
            log.info("search: resuming at generation %d (%d candidates already scored)", search.generation + 1,
                     len(search.candidates))
    while search.generation + 1 < cfg.generations:
        if not search.run_generation(progress if info.is_main else None):
            break
        if info.is_main:
            folder.write_state({"fingerprint": fingerprint, **search.state_dict()}, search.candidates)
        if stop_after_generation is not None and search.generation >= stop_after_generation:
            barrier(info)
            return {"stopped_after_generation": search.generation}
    manifest = _finish(cfg, search, folder, evaluator, check) if info.is_main else {}
    barrier(info)
    return manifest


def _finish(cfg: SearchConfig, search: Searcher, folder: SearchDir, evaluator: Evaluator,
            latency_check: dict | None) -> dict:
    result = search.result()
    if latency_check:  # how far the table's latencies can be trusted, beside the result that used them
        result["latency_table"] = {k: latency_check[k] for k in ("mape_pct", "kendall_tau", "threshold_pct",
                                                                  "trusted")}
    folder.write_candidates(search.candidates)
    folder.write_result(result)
    proxy = cfg.evaluator.proxy
    plot_fitness(search.history, folder / SearchDir.FITNESS_PLOT, proxy)
    plot_pareto(search.candidates, search.front_mask(), folder / SearchDir.PARETO_PLOT, result["best"], proxy)
    best = result["best"]
    metrics = {"strategy": cfg.strategy, "best_arch": best["arch"], "best_score": best["score"],
               "best_params_m": best["params"] / 1e6,
               "best_macs_m": best["macs"] / 1e6, "evaluated": result["evaluated"],
               "random_population_median_score": result["random_population_median_score"],
               "bn_gamma_kendall_tau": result["bn_gamma_kendall_tau"], "cache_hits": evaluator.hits}
    if latency_check:
        metrics.update(latency_table_mape_pct=latency_check["mape_pct"],
                       latency_table_trusted=latency_check["trusted"])
    return folder.write_manifest(SearchDir.OUTPUTS, cfg.model_dump(mode="json"), metrics)


def train_rank(cfg: SearchConfig, paths: dict[str, Path], out_dir: Path, stop_after: int | None = None) -> None:
    """One process of a distributed search (started by :mod:`pinas.stages.rank`); ``stop_after`` is a generation."""
    evolve(cfg, paths["supernet"], paths["train_dir"], out_dir, paths.get("probe"), stop_after_generation=stop_after)
