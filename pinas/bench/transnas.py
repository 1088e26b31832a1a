"""Search strategies measured on real ground truth: TransNAS-Bench-101's micro space (4,096 cells, 7 tasks).

Nothing here was produced by pinas: the table (``pinas/bench/data/``, provenance and citation in its README) holds
each cell's validation metric after full training on each task, and its Zen-NAS zero-cost score. A search queries
the table instead of a supernet; the strategies are the pipeline's own (:mod:`pinas.search.strategies`).

* :func:`run_grid`: strategies x tasks x seeded runs, each run to the largest budget (a query is one distinct cell
  evaluated); per strategy, task and budget: mean best metric, mean rank of the best cell found among the 4,096
  (1 = best; ties share the best rank), share of runs reaching the top 1 % (rank <= 41), median queries to reach
  it, each with a 95 % bootstrap interval.
* :func:`transfer_matrix`: search on a source task, the found cell's rank on every target task; beside the Kendall
  tau between tasks over all cells (does what is good on one task stay good on another?).
* :func:`zen_report`: how the free Zen-NAS score ranks the cells of each task (Kendall tau / Spearman rho with
  bootstrap intervals) and where the cell it likes best lands.

``pinas-pipeline bench transnas`` runs all three and writes ``bench.json``, ``bench.md`` and the plots.
"""
from __future__ import annotations

import csv
import functools
import gzip
import io
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pinas.search.strategies import StrategyConfig, StrategyName, make_strategy, run_strategy
from pinas.space import Arch, CategoricalSpace

TABLE = Path(__file__).with_name("data") / "transnas101_micro.csv.gz"
TASKS = ("class_object", "class_scene", "jigsaw", "room_layout", "segmentsemantic", "normal", "autoencoder")
Task = Literal["class_object", "class_scene", "jigsaw", "room_layout", "segmentsemantic", "normal", "autoencoder"]
SPACE = CategoricalSpace("transnas101-micro", 6, 4)
ALL_STRATEGIES: tuple[str, ...] = ("random", "evolution", "regularized_evolution", "local_search", "distribution",
                                   "predictor")
TOP_FRACTION = 0.01


@dataclass(frozen=True, eq=False)
class Table:
    """Every cell (rows of ``archs``) with each task's metric and Zen score (arrays in the same row order)."""

    archs: tuple[Arch, ...]
    metric: dict[str, np.ndarray]
    zen: dict[str, np.ndarray]

    @classmethod
    def load(cls, path: Path = TABLE) -> Table:
        rows = list(csv.DictReader(io.StringIO(gzip.decompress(Path(path).read_bytes()).decode())))
        archs = tuple(SPACE.parse(r["arch"]) for r in rows)
        return cls(archs, {t: np.array([float(r[t]) for r in rows]) for t in TASKS},
                   {t: np.array([float(r[f"zen_{t}"]) for r in rows]) for t in TASKS})

    @functools.cached_property
    def row(self) -> dict[Arch, int]:
        return {a: i for i, a in enumerate(self.archs)}

    @functools.cached_property
    def _ranks(self) -> dict[str, np.ndarray]:
        return {task: 1 + np.searchsorted(np.sort(-v), -v, side="left") for task, v in self.metric.items()}

    def ranks(self, task: str) -> np.ndarray:
        """Each cell's rank on ``task``: 1 + the number of cells with a strictly higher metric."""
        return self._ranks[task]

    @property
    def top_rank(self) -> int:
        """The worst rank inside the top 1 % (41 of 4,096)."""
        return math.ceil(TOP_FRACTION * len(self.archs))


@functools.cache
def table() -> Table:
    return Table.load()


class BenchConfig(BaseModel):
    """What ``pinas-pipeline bench transnas`` measures."""

    model_config = ConfigDict(extra="forbid")

    strategies: list[StrategyName] = Field(list(ALL_STRATEGIES), min_length=1)
    tasks: list[Task] = Field(list(TASKS), min_length=1)
    budgets: list[int] = Field([25, 50, 100, 200], min_length=1, description="queries (distinct cells) a search "
                                                                             "may make; one run goes to the largest")
    runs: int = Field(300, ge=2, description="seeded runs per strategy and task")
    batch: int = Field(10, ge=1, description="cells asked per step (the generation of the evolutions)")
    batches: dict[str, int] = Field({"regularized_evolution": 1, "local_search": 1},
                                    description="a strategy's own batch, where it differs from batch (regularized "
                                                "evolution and local search run one cell at a time, as published)")
    zen_prior: bool = Field(True, description="give the strategies Zen-NAS as their free prior (the predictor "
                                              "starts from it)")
    settings: dict[str, dict[str, Any]] = Field(
        {"evolution": {"parents": 3, "mutations": 4, "crossovers": 4},
         "regularized_evolution": {"population": 20, "tournament": 5}},
        description="StrategyConfig fields per strategy (population defaults to the batch)")
    transfer_strategy: StrategyName = "predictor"
    transfer_budget: int = Field(100, ge=1)
    transfer_runs: int = Field(100, ge=1)
    bootstrap: int = Field(1000, ge=10)
    seed: int = 0
    processes: int = Field(0, ge=0, description="worker processes; 0 = the machine's cores")


# ------------------------------------------------------------------------------------------------------- runs
def strategy_config(cfg: BenchConfig, strategy: str, seed: int) -> StrategyConfig:
    batch = cfg.batches.get(strategy, cfg.batch)
    settings = {"population": batch, "parents": min(batch, 10), **cfg.settings.get(strategy, {})}
    return StrategyConfig(strategy=strategy, seed=seed, **settings)


def search_run(strategy: str, task: str, seed: int, budget: int, cfg: BenchConfig) -> list[int]:
    """One seeded search on ``task``: the table rows of the cells it queried, in order."""
    data = table()
    prior = (lambda arch: float(data.zen[task][data.row[arch]])) if cfg.zen_prior else None
    search = make_strategy(strategy_config(cfg, strategy, seed), SPACE, prior=prior)
    records = run_strategy(search, lambda archs: [float(data.metric[task][data.row[a]]) for a in archs], budget,
                           cfg.batches.get(strategy, cfg.batch))
    return [data.row[SPACE.parse(r["arch"])] for r in records]


def _runs(job: tuple[str, str, BenchConfig, int, int]) -> tuple[str, str, np.ndarray]:
    strategy, task, cfg, budget, runs = job
    seeds = np.random.SeedSequence([cfg.seed, ALL_STRATEGIES.index(strategy), TASKS.index(task)]).generate_state(runs)
    return strategy, task, np.array([search_run(strategy, task, int(s), budget, cfg) for s in seeds])


#: the BLAS thread settings the worker processes start with: the workers already fill the cores
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def parallel(jobs: list, cfg: BenchConfig) -> list:
    """The jobs' runs, on ``cfg.processes`` worker processes of one BLAS thread each (started from a fork server:
    forks of a process that ran a Prefect flow die at exit, see :func:`pinas.data.images.loader`)."""
    processes = min(cfg.processes or os.cpu_count() or 1, len(jobs))
    if processes == 1:
        return [_runs(job) for job in jobs]
    saved = {var: os.environ.get(var) for var in ONE_THREAD}
    os.environ.update(ONE_THREAD)  # inherited by the fork server when this starts it, and by its workers
    try:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("forkserver")) as pool:
            return list(pool.map(_runs, jobs))
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


# ------------------------------------------------------------------------------------------------ statistics
def bootstrap_interval(values: np.ndarray, stat, n_boot: int, seed: int) -> tuple[float, float]:
    """95 % percentile interval of ``stat`` (a numpy reduction along axis 1) over resamples of ``values``."""
    rng = np.random.default_rng(seed)
    draws = stat(values[rng.integers(0, len(values), size=(n_boot, len(values)))], axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def summarize(rows: np.ndarray, task: str, budget: int, cfg: BenchConfig) -> dict[str, Any]:
    """The statistics of ``rows`` (runs x queries, table rows in query order) at ``budget`` queries."""
    data = table()
    ranks = data.ranks(task)[rows[:, :budget]]
    best_rank = ranks.min(axis=1).astype(float)
    best_metric = data.metric[task][rows[:, :budget]].max(axis=1)
    hit = ranks <= data.top_rank
    queries = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, np.inf)  # inf: not within this budget
    reached = (best_rank <= data.top_rank).astype(float)

    def stat(values, reduce):
        low, high = bootstrap_interval(values, reduce, cfg.bootstrap, cfg.seed)
        return {"value": _finite(reduce(values[None], axis=1)[0]), "ci95": [_finite(low), _finite(high)]}

    return {"budget": budget, "runs": len(rows), "mean_best_metric": stat(best_metric, np.mean),
            "mean_rank": stat(best_rank, np.mean), "share_top1pct": stat(reached, np.mean),
            "median_queries_to_top1pct": stat(queries, np.median), "best_ranks": best_rank.astype(int).tolist()}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def run_grid(cfg: BenchConfig) -> dict[str, Any]:
    """Every strategy on every task, ``cfg.runs`` seeded runs each, summarized at every budget."""
    budget = max(cfg.budgets)
    jobs = [(s, t, cfg, budget, cfg.runs) for s in cfg.strategies for t in cfg.tasks]
    results: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for strategy, task, rows in parallel(jobs, cfg):
        ranks = table().ranks(task)[rows]
        results.setdefault(strategy, {})[task] = [summarize(rows, task, b, cfg) for b in sorted(cfg.budgets)]
        curves.setdefault(task, {})[strategy] = np.minimum.accumulate(ranks, axis=1).mean(axis=0).tolist()
    return {"results": results, "curves": curves}


def random_search_expected_best(values: np.ndarray, k: int) -> float:
    """E[max of k cells drawn without replacement]: the j-th smallest of N is the maximum with probability
    C(j-1, k-1) / C(N, k) (computed in logs)."""
    from scipy.special import gammaln

    v = np.sort(np.asarray(values, float))
    n = len(v)
    j = np.arange(k, n + 1)
    log_p = (gammaln(j) - gammaln(k) - gammaln(j - k + 1)) - (gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1))
    return float((np.exp(log_p) * v[k - 1:]).sum())


# -------------------------------------------------------------------------------------------- transfer, Zen
def task_kendall(cfg: BenchConfig) -> dict[str, dict[str, float]]:
    from pinas.search.ranking import kendall_tau

    data = table()
    return {a: {b: round(kendall_tau(data.metric[a], data.metric[b]), 3) for b in TASKS} for a in TASKS}


def transfer_matrix(cfg: BenchConfig) -> dict[str, Any]:
    """Search each source task with ``transfer_strategy`` at ``transfer_budget``; the best cell found (by the
    source's metric) ranked on every target task: mean rank and share in the target's top 1 %."""
    data = table()
    jobs = [(cfg.transfer_strategy, t, cfg, cfg.transfer_budget, cfg.transfer_runs) for t in TASKS]
    matrix: dict[str, dict[str, Any]] = {}
    for _, source, rows in parallel(jobs, cfg):
        found = rows[np.arange(len(rows)), data.metric[source][rows].argmax(axis=1)]
        matrix[source] = {target: {"mean_rank": round(float(data.ranks(target)[found].mean()), 1),
                                   "share_top1pct": round(float((data.ranks(target)[found] <= data.top_rank).mean()),
                                                          3)}
                          for target in TASKS}
    return {"strategy": cfg.transfer_strategy, "budget": cfg.transfer_budget, "runs": cfg.transfer_runs,
            "matrix": matrix, "kendall_tau_between_tasks": task_kendall(cfg)}


def zen_report(cfg: BenchConfig) -> dict[str, Any]:
    from pinas.search.study import correlations

    data = table()
    report = {}
    for task in TASKS:
        keys = [SPACE.format(a) for a in data.archs]
        stats = correlations(dict(zip(keys, data.zen[task])), dict(zip(keys, data.metric[task])),
                             cfg.bootstrap, cfg.seed)
        pick = int(np.argmax(data.zen[task]))
        report[task] = {**stats, "zero_query_pick": keys[pick], "zero_query_rank": int(data.ranks(task)[pick])}
    return report


def benchmark(cfg: BenchConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    grid = run_grid(cfg)
    out = {"config": cfg.model_dump(), "space": {"name": SPACE.name, "cells": len(table().archs)},
           "top_rank": table().top_rank, **grid,
           "random_closed_form": {t: {str(b): random_search_expected_best(table().metric[t], b) for b in cfg.budgets}
                                  for t in cfg.tasks},
           "transfer": transfer_matrix(cfg), "zen": zen_report(cfg)}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


# ------------------------------------------------------------------------------------------------ reporting
def _fmt(stat: dict, digits: int = 1, percent: bool = False) -> str:
    value, (low, high) = stat["value"], stat["ci95"]
    if value is None:
        return "n/a"
    scale = 100 if percent else 1

    def show(v: float | None) -> str:
        return "∞" if v is None else f"{v * scale:.{digits}f}"

    return f"{show(value)} [{show(low)}, {show(high)}]"


def markdown(report: dict[str, Any]) -> str:
    cfg, lines = report["config"], []
    lines.append(f"TransNAS-Bench-101 micro ({report['space']['cells']} cells), {cfg['runs']} runs per cell of the "
                 f"table, batches of {cfg['batch']}; rank 1 = best, top 1 % = rank <= {report['top_rank']}; "
                 "[95 % bootstrap intervals]\n")
    for budget_index, budget in enumerate(sorted(cfg["budgets"])):
        lines.append(f"\n### {budget} queries\n")
        lines.append("| strategy | " + " | ".join(cfg["tasks"]) + " |")
        lines.append("|---|" + "---|" * len(cfg["tasks"]))
        for strategy, by_task in report["results"].items():
            cells = []
            for task in cfg["tasks"]:
                s = by_task[task][budget_index]
                cells.append(f"rank {_fmt(s['mean_rank'])}; top 1 % {_fmt(s['share_top1pct'], 0, True)} %; "
                             f"queries {_fmt(s['median_queries_to_top1pct'], 0)}")
            lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    transfer = report["transfer"]
    lines.append(f"\n### Transfer: {transfer['strategy']} at {transfer['budget']} queries on the source task, mean "
                 f"rank on the target ({transfer['runs']} runs) / Kendall tau between the tasks over all cells\n")
    lines.append("| source \\ target | " + " | ".join(TASKS) + " |")
    lines.append("|---|" + "---|" * len(TASKS))
    for source, row in transfer["matrix"].items():
        tau = transfer["kendall_tau_between_tasks"][source]
        lines.append(f"| {source} | " + " | ".join(f"{row[t]['mean_rank']:.1f} / {tau[t]:+.2f}" for t in TASKS)
                     + " |")
    lines.append("\n### Zen-NAS against each task's metric (all 4,096 cells)\n")
    lines.append("| task | Kendall tau [95 %] | Spearman rho [95 %] | Zen's favourite cell | its rank |")
    lines.append("|---|---|---|---|---|")
    for task, z in report["zen"].items():
        tau = f"{z['kendall_tau']:+.3f} [{z['kendall_tau_ci95'][0]:+.3f}, {z['kendall_tau_ci95'][1]:+.3f}]"
        rho = f"{z['spearman_rho']:+.3f} [{z['spearman_rho_ci95'][0]:+.3f}, {z['spearman_rho_ci95'][1]:+.3f}]"
        lines.append(f"| {task} | {tau} | {rho} | {z['zero_query_pick']} | {z['zero_query_rank']} |")
    return "\n".join(lines) + "\n"


def plot_curves(report: dict[str, Any], path: Path) -> Path:
    """Mean rank of the best cell so far against queries, one panel per task, a line per strategy."""
    from pinas.plots import figure, save

    tasks = list(report["curves"])
    fig = figure((4 * min(4, len(tasks)), 3.2 * math.ceil(len(tasks) / 4)))
    axes = fig.subplots(math.ceil(len(tasks) / 4), min(4, len(tasks)), squeeze=False).ravel()
    for ax, task in zip(axes, tasks):
        for strategy, curve in report["curves"][task].items():
            ax.plot(np.arange(1, len(curve) + 1), curve, label=strategy, lw=1.3)
        ax.set_yscale("log")
        ax.axhline(report["top_rank"], color="grey", ls=":", lw=1)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("queries")
        ax.set_ylabel("mean rank of the best so far")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    return save(fig, path)


def plot_transfer(report: dict[str, Any], path: Path) -> Path:
    from pinas.plots import figure, save

    transfer = report["transfer"]
    fig = figure((11, 4.5))
    left, right = fig.subplots(1, 2)
    ranks = np.array([[transfer["matrix"][s][t]["mean_rank"] for t in TASKS] for s in TASKS])
    taus = np.array([[transfer["kendall_tau_between_tasks"][s][t] for t in TASKS] for s in TASKS])
    for ax, values, title, fmt in ((left, np.log10(ranks), "mean rank on the target (log10)", "{:.0f}"),
                                   (right, taus, "Kendall tau between tasks", "{:+.2f}")):
        image = ax.imshow(values, cmap="viridis_r" if ax is left else "viridis")
        shown = ranks if ax is left else taus
        for i in range(len(TASKS)):
            for j in range(len(TASKS)):
                ax.text(j, i, fmt.format(shown[i, j]), ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(len(TASKS)), [t[:8] for t in TASKS], rotation=45, fontsize=7)
        ax.set_yticks(range(len(TASKS)), [t[:8] for t in TASKS], fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    left.set_ylabel("source task")
    return save(fig, path)


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    from pinas.io.artifacts import atomic_write_bytes, atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md",
             "curves": out_dir / "rank-vs-queries.png", "transfer": out_dir / "transfer.png"}
    atomic_write_json(paths["json"], report)
    atomic_write_bytes(paths["markdown"], markdown(report).encode())
    plot_curves(report, paths["curves"])
    plot_transfer(report, paths["transfer"])
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``pinas-pipeline bench transnas``: the grid, the transfer matrix and the Zen report, written to ``--out``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="pinas-pipeline bench transnas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, help="seeded runs per strategy and task (300)")
    parser.add_argument("--budgets", help="comma-separated query budgets (25,50,100,200)")
    parser.add_argument("--strategies", help=f"comma-separated, of {', '.join(ALL_STRATEGIES)}")
    parser.add_argument("--tasks", help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--transfer-runs", type=int)
    parser.add_argument("--processes", type=int)
    parser.add_argument("--no-zen-prior", action="store_true", help="strategies get no prior")
    parser.add_argument("--out", type=Path, default=Path("bench-transnas"))
    args = parser.parse_args(argv)
    given = {"runs": args.runs, "transfer_runs": args.transfer_runs, "processes": args.processes,
             "budgets": args.budgets and [int(b) for b in args.budgets.split(",")],
             "strategies": args.strategies and args.strategies.split(","),
             "tasks": args.tasks and args.tasks.split(",")}
    cfg = BenchConfig(**{k: v for k, v in given.items() if v is not None}, zen_prior=not args.no_zen_prior)
    report = benchmark(cfg)
    paths = write_report(report, args.out)
    print(markdown(report))
    print(json.dumps({k: str(v) for k, v in paths.items()}), f"({report['seconds']} s)")
    return 0
