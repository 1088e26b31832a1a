"""Search strategies on ground truth nobody here produced (TransNAS-Bench-101's table), and the pipeline's loop.

The strategies never query a cell twice and keep to the budget, resume exactly from their JSON state, random search
meets its closed form, and the pipeline's evolution proposes exactly what it proposed before the search core was
split into strategies (a golden file recorded from the code before the split).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pinas.bench.transnas import (
    ALL_STRATEGIES,
    SPACE,
    TASKS,
    BenchConfig,
    Table,
    random_search_expected_best,
    search_run,
    strategy_config,
    table,
)
from pinas.search.constraints import Constraints, cost_model
from pinas.search.evaluation import Evaluator
from pinas.search.searcher import Searcher
from pinas.search.strategies import StrategyConfig, make_strategy, run_strategy
from pinas.space import DEMO

GOLDEN = Path(__file__).with_name("data") / "evolution_golden.json"
#: the ranges the table's README documents, per task, as written there
RANGES = {"class_object": ("21.2", "45.6"), "class_scene": ("7.5", "54.9"), "jigsaw": ("0.03", "95.4"),
          "room_layout": ("-1.094", "-0.601"), "segmentsemantic": ("91.6", "94.6"), "normal": ("0.206", "0.587"),
          "autoencoder": ("0.001", "0.577")}


def _rounds_to(value: float, written: str) -> bool:
    decimals = len(written.split(".")[1])
    return abs(value - float(written)) <= 0.5 * 10 ** -decimals + 1e-12


def test_the_shipped_table_holds_every_cell_on_seven_tasks_in_the_documented_ranges():
    data = Table.load()
    assert len(data.archs) == 4096 and len(set(data.archs)) == 4096 and set(TASKS) == set(RANGES)
    assert set(data.archs) == set(SPACE.all_archs())
    for task, (low, high) in RANGES.items():
        values = data.metric[task]
        assert values.shape == (4096,) and np.isfinite(values).all()
        assert _rounds_to(values.min(), low) and _rounds_to(values.max(), high), (task, values.min(), values.max())
        ranks = data.ranks(task)
        assert ranks.min() == 1 and ranks[np.argmax(values)] == 1
        worse = values[:, None] > values[None, :]  # rank = 1 + cells strictly better, written out
        assert np.array_equal(ranks[:300], 1 + worse[:, :300].sum(0))
    assert data.top_rank == 41
    # the cell with every edge zeroized has no path: Zen-NAS gives it its sentinel
    assert data.zen["jigsaw"][data.row[(0,) * 6]] == -1e8


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_every_strategy_queries_distinct_cells_within_the_budget(strategy):
    cfg = BenchConfig(runs=2)
    for seed in (0, 1):
        rows = search_run(strategy, "class_scene", seed, 57, cfg)
        assert len(rows) == 57 == len(set(rows)), strategy  # 57: the last batch is cut to the budget


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_a_strategy_resumed_from_its_state_continues_as_the_uninterrupted_one(strategy):
    data = table()
    prior = lambda arch: float(data.zen["jigsaw"][data.row[arch]])  # noqa: E731
    cfg = strategy_config(BenchConfig(), strategy, seed=5)

    def evaluate(archs):
        return [float(data.metric["jigsaw"][data.row[a]]) for a in archs]

    whole = run_strategy(make_strategy(cfg, SPACE, prior=prior), evaluate, 60, 10)
    first = make_strategy(cfg, SPACE, prior=prior)
    run_strategy(first, evaluate, 30, 10)
    state = json.loads(json.dumps(first.state_dict()))  # through JSON, as the search state file is
    resumed = make_strategy(cfg, SPACE, prior=prior)
    resumed.load_state_dict(state)
    assert run_strategy(resumed, evaluate, 60, 10) == whole


def test_random_search_meets_the_expected_maximum_of_k_draws_without_replacement():
    cfg, data = BenchConfig(), table()
    for task, k in (("class_object", 20), ("room_layout", 50)):
        best = [data.metric[task][search_run("random", task, seed, k, cfg)].max() for seed in range(400)]
        expected = random_search_expected_best(data.metric[task], k)
        assert abs(np.mean(best) - expected) < 3.5 * np.std(best) / np.sqrt(len(best)), (np.mean(best), expected)
    # the closed form itself, against enumeration on a small set: max of 2 of [1, 2, 3, 4] is 10/3 on average
    assert random_search_expected_best(np.array([4.0, 1.0, 3.0, 2.0]), 2) == pytest.approx(10 / 3)


class Planted:
    """A score the golden file was made with: a seeded per-(layer, choice) table summed along the path plus a term
    for each pair of neighbouring layers (also the free prior, with another seed)."""

    name = "planted"

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.table = rng.normal(size=(DEMO.num_layers, DEMO.num_choices))
        self.pair = rng.normal(size=(DEMO.num_choices, DEMO.num_choices)) * 0.3

    def __call__(self, arch):
        a = list(arch)
        score = self.table[np.arange(len(a)), a].sum() + sum(self.pair[x, y] for x, y in zip(a, a[1:]))
        return float(score), None, None

    def score_many(self, archs):
        return [self(a) for a in archs]


def test_the_pipelines_evolution_proposes_what_it_did_before_the_strategies_were_split_out():
    cfg = StrategyConfig(population=12, generations=4, parents=4, mutations=6, crossovers=6, prefilter_factor=2,
                         top_k=5, seed=3)
    search = Searcher(cfg, DEMO, Evaluator(DEMO, Planted(0)), cost_model(DEMO, 5), Constraints(max_macs=24.2e6),
                      None, Planted(1))
    while search.generation + 1 < cfg.generations:
        search.run_generation()
    golden = json.loads(GOLDEN.read_text())
    assert search.candidates == golden["candidates"]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in search.history] == golden["history"]
    assert all(c["macs"] <= 24.2e6 for c in search.candidates)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_every_strategy_runs_the_pipelines_search_under_its_constraints(strategy):
    """The same strategies in the pipeline's loop on the ResNeSt space: feasible, new, resumable."""
    cfg = StrategyConfig(strategy=strategy, population=6, generations=3, parents=3, mutations=3, crossovers=3,
                         initial=6, proposals=300, seed=1)
    cost = cost_model(DEMO, 5)

    def new_search():
        return Searcher(cfg, DEMO, Evaluator(DEMO, Planted(0)), cost, Constraints(max_macs=24.2e6), None,
                        Planted(1))

    whole = new_search()
    for _ in range(cfg.generations):
        whole.run_generation()
    archs = [c["arch"] for c in whole.candidates]
    assert len(archs) == len(set(archs)) == 18 and all(c["macs"] <= 24.2e6 for c in whole.candidates)
    part = new_search()
    part.run_generation()
    resumed = new_search()
    resumed.load_state_dict(json.loads(json.dumps(part.state_dict())))
    while resumed.generation + 1 < cfg.generations:
        resumed.run_generation()
    assert resumed.candidates == whole.candidates
