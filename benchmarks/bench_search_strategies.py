"""The predictor-guided search against the default evolution, in the pipeline, on a trained demo supernet.

Both strategies run the pipeline's own search loop (:class:`pinas.search.searcher.Searcher`) with the same budget,
the same seeds and the same oracle: the supernet's contrastive proxy (label-free; on the demo supernet it separates
architectures better than the weak demo probe), one shared evaluation cache, so an architecture both strategies
propose is scored once and scores the same for both. Prints, per strategy, the mean best proxy score after every
generation, and how many evaluations the predictor needs to match each evolution run's final best.

    python benchmarks/bench_search_strategies.py [--seeds 3] [--population 16] [--generations 6] [--threads 2]

A demo supernet is trained first (``run_supernet``, reused from ``--workdir`` on the next run).
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_search import HOLDOUT, demo_supernet

from pinas.data.demo import DemoDataSpec, generate_imagenet
from pinas.io.stage_dirs import SupernetDir
from pinas.search.constraints import cost_model
from pinas.search.evaluation import EvaluatorConfig, build_evaluator
from pinas.search.proxies import BNGammaProxy
from pinas.search.searcher import Searcher
from pinas.search.strategies import StrategyConfig
from pinas.stages.search import search_images

STRATEGIES = ("evolution", "predictor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--supernet-epochs", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pinas-bench-search")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    data = generate_imagenet(args.workdir / "data", DemoDataSpec(seed=0))
    supernet = demo_supernet(args.workdir, data, args.supernet_epochs)
    model = SupernetDir(supernet).load()
    space = model.space
    ecfg = EvaluatorConfig(proxy="contrastive", batch_size=32, recal_batches=2, heldout_images=32, device="cpu")
    evaluator = build_evaluator(ecfg, model, *search_images(HOLDOUT, data / "train"))
    cost, gamma = cost_model(space, 5), BNGammaProxy(model.student.backbone)
    curves: dict[str, list[list[float]]] = {s: [] for s in STRATEGIES}  # best score after each evaluation
    by_generation: dict[str, list[list[float]]] = {s: [] for s in STRATEGIES}  # best score after each generation
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        for strategy in STRATEGIES:
            cfg = StrategyConfig(strategy=strategy, population=args.population, generations=args.generations,
                                 parents=max(1, args.population // 4), mutations=args.population // 2,
                                 crossovers=args.population // 2, seed=seed)
            search = Searcher(cfg, space, evaluator, cost, gamma=gamma)
            for _ in range(cfg.generations):
                search.run_generation()
            curves[strategy].append(np.maximum.accumulate([c["score"] for c in search.candidates]).tolist())
            by_generation[strategy].append([max(c["score"] for c in search.candidates if c["generation"] <= g)
                                            for g in range(cfg.generations)])
    budget = int(np.mean([len(r) for r in curves["evolution"]]))
    print(f"== {args.seeds} seeds, {args.generations} generations of {args.population} ({budget} evaluations), "
          f"contrastive proxy on a {args.supernet_epochs:g}-epoch demo supernet; {evaluator.misses} distinct "
          f"architectures scored in {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.2f}")
    print("   mean best proxy score (-loss) after each generation:")
    for strategy, runs in by_generation.items():
        per_generation = np.mean(runs, axis=0)
        evaluated = np.mean([len(r) for r in curves[strategy]])
        print(f"   {strategy:>10}: " + "  ".join(f"{v:.4f}" for v in per_generation)
              + f"   ({evaluated:.0f} evaluations per run)")
    needed = []
    for evolution, predictor in zip(curves["evolution"], curves["predictor"]):
        hit = np.nonzero(np.asarray(predictor) >= evolution[-1])[0]
        needed.append(int(hit[0]) + 1 if len(hit) else None)
    reached = [n for n in needed if n is not None]
    print(f"   evaluations the predictor needs to match evolution's final best (per seed): {needed}; "
          f"median {statistics.median(reached) if reached else 'n/a'} of {budget}")


if __name__ == "__main__":
    main()
