"""Stage 2: evolutionary architecture search on the trained supernet, under cost constraints, resumable.

The evolution is :class:`pinas.search.evolution.EvolutionSearch`; candidates are scored by an evaluator
(:mod:`pinas.search.evaluation`) after BN recalibration of their path. After every generation the search state is
written atomically to ``search_state.json`` (:class:`~pinas.io.stage_dirs.SearchDir`) together with what the result
depends on; a restarted run with the same settings goes on at the next generation and ends with the same result as
one never interrupted, and one with other settings is refused, naming the differing fields.

Outputs: ``search_state.json``, ``candidates.jsonl`` (every evaluated candidate: arch, generation, origin, score,
loss, acc, params, macs, [latency_ms], bn_gamma), ``result.json`` (best, top-k, Pareto front of score vs MACs [and
latency], random-population median), ``fitness.png``, ``pareto.png`` and the manifest.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from pinas.data.images import DataError, ImageList, SearchHoldout, scan_image_folder
from pinas.data.transforms import supernet_views
from pinas.engine.checkpoint import check_same_settings
from pinas.engine.distributed import barrier, init_distributed, resolve_device, shutdown
from pinas.engine.launch import SINGLE_NODE, Nodes
from pinas.engine.loop import ProgressFn
from pinas.io.stage_dirs import ProbeDir, SearchDir, SupernetDir
from pinas.plots import plot_fitness, plot_pareto
from pinas.search.constraints import ConstraintConfig, Constraints, LatencyFn, LatencyTable, cost_model
from pinas.search.evaluation import Evaluator, EvaluatorConfig, build_evaluator
from pinas.search.proxies import BNGammaProxy
from pinas.search.evolution import EvolutionConfig, EvolutionSearch
from pinas.stages.common import DistributedStageConfig, launch

log = logging.getLogger("pinas")
#: evaluator settings that change how fast a score is computed, not the score
EVALUATOR_RUNTIME_FIELDS = frozenset({"cache_mb", "num_workers", "prefix_sharing"})


class SearchConfig(DistributedStageConfig, EvolutionConfig, ConstraintConfig):
    """Evolution, constraints and the evaluator; defaults are SPOS's (50 x 20, top 10, 25 + 25, p = 0.1)."""

    evaluator: EvaluatorConfig = EvaluatorConfig()
    holdout: SearchHoldout = Field(SearchHoldout(), description="the train/ images candidates are scored on (never "
                                                                "val/); the rest of train/ recalibrates BN")
    num_classes: int | None = Field(None, ge=1, description="classifier head counted in the costs; "
                                                            "default: classes of train_dir")

    def settings(self) -> dict[str, Any]:
        """What the result depends on: not the processes that share the work (every rank scores alike)."""
        dumped = self.model_dump(mode="json", exclude={"nproc", "nodes"})
        dumped["evaluator"] = {k: v for k, v in dumped["evaluator"].items() if k not in EVALUATOR_RUNTIME_FIELDS}
        return dumped


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
    args = ["--supernet", str(supernet_dir), "--train-dir", str(train_dir), "--out", str(out_dir)] + \
        (["--probe", str(probe_dir)] if probe_dir else [])
    if stop_after_generation is not None:
        args += ["--stop-after-generation", str(stop_after_generation)]
    SearchDir(out_dir).path.mkdir(parents=True, exist_ok=True)
    launch("pinas.stages.search", cfg, SearchDir(out_dir), args, rendezvous)
    if rendezvous.rank:
        return None
    folder = SearchDir(out_dir)
    return folder.manifest() if folder.finished else {"stopped_after_generation": folder.read_state()["generation"]}


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
    cost = cost_model(space, cfg.num_classes or len(classes))
    constraints = Constraints.from_config(cfg)
    constraints.check_reachable(cost, latency if isinstance(latency, LatencyTable) else None)

    if probe is not None:
        probe = (probe[0].to(device), probe[1])
    evaluator = build_evaluator(cfg.evaluator, model, *search_images(cfg.holdout, train_dir), probe, device,
                                supernet_views(space.input_size, supernet_cfg, views=1), info)
    search = EvolutionSearch(cfg, space, evaluator, cost, constraints, latency, BNGammaProxy(model.student.backbone))
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
    manifest = _finish(cfg, search, folder, evaluator) if info.is_main else {}
    barrier(info)
    return manifest


def _finish(cfg: SearchConfig, search: EvolutionSearch, folder: SearchDir, evaluator: Evaluator) -> dict:
    result = search.result()
    folder.write_candidates(search.candidates)
    folder.write_result(result)
    proxy = cfg.evaluator.proxy
    plot_fitness(search.history, folder / SearchDir.FITNESS_PLOT, proxy)
    plot_pareto(search.candidates, search.front_mask(), folder / SearchDir.PARETO_PLOT, result["best"], proxy)
    best = result["best"]
    metrics = {"best_arch": best["arch"], "best_score": best["score"],
               "best_params_m": best["params"] / 1e6,
               "best_macs_m": best["macs"] / 1e6, "evaluated": result["evaluated"],
               "random_population_median_score": result["random_population_median_score"],
               "bn_gamma_kendall_tau": result["bn_gamma_kendall_tau"], "cache_hits": evaluator.hits}
    return folder.write_manifest(SearchDir.OUTPUTS, cfg.model_dump(mode="json"), metrics)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evolutionary search (one process; torchrun starts several)")
    parser.add_argument("--config", required=True, type=Path, help="JSON of SearchConfig")
    parser.add_argument("--supernet", required=True, type=Path, help="the supernet stage folder")
    parser.add_argument("--train-dir", required=True, type=Path, help="train/: its holdout is scored, the rest "
                                                                     "recalibrates")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--probe", type=Path, default=None, help="the linear_probe stage folder")
    parser.add_argument("--stop-after-generation", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = SearchConfig.model_validate(json.loads(args.config.read_text()))
    evolve(cfg, args.supernet, args.train_dir, args.out, args.probe, stop_after_generation=args.stop_after_generation)
    shutdown()


if __name__ == "__main__":
    main()
