"""The search benchmark as a Prefect flow: pinas's strategies on TransNAS-Bench-101's ground truth.

The flow runs :func:`pinas.bench.transnas.benchmark` (strategies x tasks x seeded runs, the transfer matrix, the
Zen-NAS report), writes ``bench.json``, ``bench.md`` and the plots to ``out_dir``, and shows the Markdown tables
and the plots (mean rank against queries per task, the transfer matrix) on the run's Artifacts tab.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.ui import publish_images, publish_markdown, route_library_logs
from pinas.bench.transnas import ALL_STRATEGIES, TASKS, BenchConfig, Task, benchmark, markdown, write_report
from pinas.search.strategies import StrategyName


@flow(name="pinas-bench", log_prints=True)
def pinas_bench(runs: int = 300, budgets: list[int] = [25, 50, 100, 200],  # noqa: B006
                strategies: list[StrategyName] = [], tasks: list[Task] = [],  # noqa: B006
                transfer_runs: int = 100, zen_prior: bool = True, out_dir: str = "bench-transnas") -> dict[str, Any]:
    """Measure the search strategies on TransNAS-Bench-101's micro space (4,096 cells, 7 tasks, real ground truth).

    Args:
        runs: seeded runs per strategy and task.
        budgets: query budgets (distinct cells evaluated) the tables report; each run goes to the largest.
        strategies: which of random, evolution, regularized_evolution, local_search, distribution, predictor;
            none selected runs all.
        tasks: which of the seven tasks; none selected runs all.
        transfer_runs: seeded searches per source task of the transfer matrix.
        zen_prior: give the strategies Zen-NAS as their free prior (the predictor starts from it).
        out_dir: folder of bench.json, bench.md and the plots, on the machine that runs the flow.
    """
    route_library_logs()
    cfg = BenchConfig(runs=runs, budgets=budgets, strategies=strategies or list(ALL_STRATEGIES),
                      tasks=tasks or list(TASKS), transfer_runs=transfer_runs, zen_prior=zen_prior)
    report = benchmark(cfg)
    paths = write_report(report, Path(out_dir))
    publish_markdown("bench-tables", markdown(report), "TransNAS-Bench-101: strategies, transfer, Zen-NAS")
    publish_images("bench-plots", "TransNAS-Bench-101", {"mean rank of the best cell against queries":
                                                         paths["curves"], "transfer between tasks":
                                                         paths["transfer"]}, "benchmark plots")
    print(f"bench: {report['seconds']} s; results in {paths['json'].parent}")
    return {"seconds": report["seconds"], **{k: str(v) for k, v in paths.items()}}
