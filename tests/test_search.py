"""Evolutionary search: constraints, exact resumption, the Pareto front, rank correlations, the demo claim.

Searches run on the few-step trained demo supernet (a session fixture of ``conftest.py``). The cheap ``bn_gamma``
proxy drives the tests of the search mechanics; the resumption and demo tests use the real label-free contrastive
proxy on a handful of images.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import HOLDOUT, TINY_EVAL
from scipy import stats

from pinas.data.images import ImageList
from pinas.io.stage_dirs import SearchDir, SupernetDir
from pinas.search.constraints import cost_model, pareto_front
from pinas.search.evaluation import EvaluatorConfig, build_evaluator
from pinas.search.ranking import bootstrap_ci, compare, kendall_tau, load_scores, main, spearman_rho
from pinas.search.searcher import InfeasibleError
from pinas.space import DEMO
from pinas.stages.search import SearchConfig, run_search, search_images

CANDIDATES, RESULT, STATE = SearchDir.CANDIDATES, SearchDir.RESULT, SearchDir.STATE


@pytest.fixture(scope="session")
def data(eval_imagenet) -> Path:
    return eval_imagenet


@pytest.fixture(scope="session")
def supernet(trained_supernet) -> Path:
    return trained_supernet


SMALL = dict(population=8, generations=3, parents=3, mutations=4, crossovers=4, top_k=3)
GAMMA = EvaluatorConfig(proxy="bn_gamma")


def search_config(**settings) -> SearchConfig:
    return SearchConfig(holdout=HOLDOUT, **settings)


def _run(cfg, supernet, data, out, **kwargs):
    return run_search(cfg, supernet, data / "train", out, **kwargs)


def _read(out: Path) -> tuple[dict, list[dict]]:
    candidates = [json.loads(line) for line in (out / CANDIDATES).read_text().splitlines()]
    return json.loads((out / RESULT).read_text()), candidates


# ----------------------------------------------------------------------------------------------- pareto
@pytest.mark.parametrize("dims", [2, 3])
def test_pareto_front_is_exactly_the_non_dominated_set(dims):
    rng = np.random.default_rng(dims)
    points = rng.integers(0, 12, size=(300, dims)).astype(float)  # a coarse grid: many ties and duplicates
    mask = pareto_front(points)

    def dominated(i: int) -> bool:
        return any(all(points[j] <= points[i]) and any(points[j] < points[i]) for j in range(len(points)))

    assert mask.tolist() == [not dominated(i) for i in range(len(points))]
    assert mask.any()


# ---------------------------------------------------------------------------------------------- ranking
def test_rank_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    for x, y in [([1, 2, 2, 3, 4, 4, 4, 5], [2, 1, 3, 3, 5, 4, 4, 6]),
                 (rng.integers(0, 5, 40), rng.integers(0, 7, 40)),
                 (rng.normal(size=60), rng.normal(size=60))]:
        assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    lo, hi = bootstrap_ci(np.arange(30), np.arange(30) + rng.normal(0, 5, 30), kendall_tau, n_boot=200)
    assert -1 <= lo <= kendall_tau(np.arange(30), np.arange(30) + rng.normal(0, 5, 30)) + 0.5 and lo <= hi <= 1


def test_ranking_cli_reads_json_jsonl_and_csv(tmp_path, capsys):
    archs = ["01-23-30-12", "11-11-11-11", "32-10-00-23", "22-22-22-22", "03-03-03-03"]
    proxy = [0.3, 0.1, 0.5, 0.2, 0.4]
    acc = [71.0, 60.5, 75.0, 60.5, 70.0]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"arch": a, "score": s}) + "\n"
                                              for a, s in zip(archs, proxy)))
    (tmp_path / "b.csv").write_text("architecture,top1\n" + "".join(f"{a.replace('-', '')},{v}\n"
                                                                      for a, v in zip(archs, acc)))
    (tmp_path / "c.json").write_text(json.dumps({str(list(map(int, a.replace("-", "")))): v
                                                 for a, v in zip(archs, acc)}))
    assert load_scores(tmp_path / "b.csv", key="top1") == load_scores(tmp_path / "c.json")
    expected = compare(load_scores(tmp_path / "a.jsonl"), load_scores(tmp_path / "c.json"), n_boot=50)
    assert expected["n"] == 5
    assert expected["kendall_tau"] == pytest.approx(stats.kendalltau(proxy, acc).statistic)
    assert main([str(tmp_path / "a.jsonl"), str(tmp_path / "b.csv"), "--key-b", "top1", "--json",
                 "--bootstrap", "50"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["kendall_tau"] == pytest.approx(expected["kendall_tau"])
    assert main([str(tmp_path / "a.jsonl"), str(tmp_path / "missing.json")]) == 2


# ----------------------------------------------------------------------------------------- constraints
def test_constraints_hold_for_every_evaluated_candidate_and_the_result(supernet, data, tmp_path):
    costs = cost_model(DEMO, 5)
    rng = np.random.default_rng(0)
    sample = [costs(DEMO.sample(rng)) for _ in range(200)]
    max_macs = float(np.median([c.macs for c in sample])) / 1e6
    min_params = float(np.percentile([c.params for c in sample], 20)) / 1e6
    table = {"fixed_ms": 1.0, "layers": rng.uniform(0.1, 1.0, (DEMO.num_layers, DEMO.num_choices)).tolist()}
    (tmp_path / "latency.json").write_text(json.dumps(table))
    max_latency = 1.0 + float(np.mean(table["layers"])) * DEMO.num_layers
    cfg = search_config(evaluator=GAMMA, max_macs_m=max_macs, min_params_m=min_params,
                       latency_table=str(tmp_path / "latency.json"), max_latency_ms=max_latency, prefilter_factor=2,
                       **SMALL)
    manifest = _run(cfg, supernet, data, tmp_path / "out")
    result, candidates = _read(tmp_path / "out")
    assert len(candidates) == 24 and len({c["arch"] for c in candidates}) == 24  # no duplicate evaluations
    for c in candidates + [result["best"]] + result["pareto_front"]:
        assert c["macs"] <= max_macs * 1e6 and c["params"] >= min_params * 1e6 and c["latency_ms"] <= max_latency
        cost = costs(DEMO.parse(c["arch"]))
        assert (cost.macs, cost.params) == (c["macs"], c["params"])
    assert result["best"] == max(candidates, key=lambda c: (c["score"], -c["macs"]))
    assert result["pareto_objectives"] == ["score", "macs", "latency_ms"]
    assert manifest["metrics"]["best_arch"] == result["best"]["arch"]
    for png in ("fitness.png", "pareto.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unsatisfiable_constraints_fail_clearly(supernet, data, tmp_path):
    with pytest.raises(ValueError, match="max_macs_m"):
        _run(search_config(evaluator=GAMMA, max_macs_m=1.0, **SMALL), supernet,
             data, tmp_path / "a")
    with pytest.raises(ValueError, match="min_params_m = 5.0 is above max_params_m = 1.0"):
        SearchConfig(min_params_m=5, max_params_m=1)
    # reachable one at a time but not together (the latency hook has no table to check ahead): sampling gives up
    cfg = search_config(evaluator=GAMMA, max_latency_ms=1.0, max_tries=5, **SMALL)
    with pytest.raises(InfeasibleError, match="relax the constraints"):
        _run(cfg, supernet, data, tmp_path / "b", latency_fn=lambda arch: 2.0)
    with pytest.raises(ValueError, match="probe_dir"):
        _run(search_config(evaluator=EvaluatorConfig(proxy="linear_probe")), supernet, data,
             tmp_path / "c")


# ------------------------------------------------------------------------------------ resume, demo claim
CONTRASTIVE = search_config(evaluator=TINY_EVAL, **SMALL)


@pytest.fixture(scope="module")
def uninterrupted(supernet, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    _run(CONTRASTIVE, supernet, data, out)
    return out


def test_killed_search_resumes_at_the_next_generation_with_the_same_result(uninterrupted, supernet,
                                                                           data, tmp_path):
    out = tmp_path / "resumed"
    assert _run(CONTRASTIVE, supernet, data, out, stop_after_generation=0) == \
        {"stopped_after_generation": 0}
    state = json.loads((out / STATE).read_text())
    assert state["generation"] == 0 and len(state["records"]) == 8 and not (out / RESULT).exists()
    reports = []
    _run(CONTRASTIVE, supernet, data, out, progress=lambda done, total, rec: reports.append((done, rec)))
    evaluated = [rec for _, rec in reports if "arch" in rec]
    assert {rec["generation"] for rec in evaluated} == {1, 2} and len(evaluated) == 16  # nothing redone
    # each generation is announced before it is scored (one batch: the UI shows what runs meanwhile)
    assert [(done, rec) for done, rec in reports if "arch" not in rec] == [
        (8, {"generation": 1, "scoring": 8}), (16, {"generation": 2, "scoring": 8})]
    assert _read(out) == _read(uninterrupted)
    # a finished search started again is a no-op that rewrites the same result
    _run(CONTRASTIVE, supernet, data, out, progress=lambda *a: pytest.fail("re-evaluated"))
    assert _read(out) == _read(uninterrupted)
    with pytest.raises(Exception, match="different config"):
        _run(CONTRASTIVE.model_copy(update={"seed": 1}), supernet, data, out)


def test_searched_architecture_beats_the_median_random_architecture(uninterrupted, supernet,
                                                                     data):
    result, candidates = _read(uninterrupted)
    model = SupernetDir(supernet).load()
    evaluator = build_evaluator(TINY_EVAL, model, *search_images(HOLDOUT, data / "train"))
    rng = np.random.default_rng(12345)  # an independent random sample, not the search's generation 0
    random_scores = [evaluator(DEMO.sample(rng)).score for _ in range(8)]
    assert evaluator(result["best"]["arch"]).score == result["best"]["score"]  # same evaluator, same number
    assert result["best"]["score"] > np.median(random_scores)
    assert result["best"]["score"] >= result["random_population_median_score"]


def test_the_search_scores_the_train_holdout_and_no_stage_trains_on_it(supernet, data, demo_data, tmp_path):
    """Selection never touches the report set: with every val/ image unreadable a search runs to the end, and its
    scoring images are the holdout of train/. And the holdout is never trained on: with its files unreadable, a
    supernet and a linear probe still train whole epochs."""
    import shutil

    from conftest import SUPERNET_CFG

    from pinas.stages.linear_probe import LinearProbeConfig, train_probe
    from pinas.stages.supernet import run_supernet

    broken = tmp_path / "val-unreadable"
    shutil.copytree(data / "train", broken / "train")
    shutil.copytree(data / "val", broken / "val")
    for image in (broken / "val").rglob("*.*"):
        image.write_bytes(b"not an image")
    cfg = search_config(evaluator=TINY_EVAL, population=3, generations=1, parents=1, mutations=0, crossovers=0,
                        top_k=1)
    assert _run(cfg, supernet, broken, tmp_path / "search")["metrics"]["evaluated"] == 3
    recal, held = search_images(HOLDOUT, broken / "train")
    evaluator = build_evaluator(TINY_EVAL, SupernetDir(supernet).load(), recal, held)
    scored = {path for path, _ in evaluator.proxy.heldout.dataset.samples}
    recalibrated = {path for path, _ in evaluator.proxy.recal.dataset.samples}
    assert scored and scored <= {path for path, _ in held.samples} and recalibrated.isdisjoint(scored)
    assert all(path.is_relative_to(broken / "train") for path in scored | recalibrated)

    small = demo_data("imagenet", cls_train_per_class=8, cls_val_per_class=1)
    shutil.copytree(small, tmp_path / "small")
    _, held = HOLDOUT.split(ImageList.scan(tmp_path / "small" / "train"))
    for path, _ in held.samples:
        path.write_bytes(b"not an image")
    train = tmp_path / "small" / "train"
    assert run_supernet(SUPERNET_CFG.model_copy(update={"epochs": 1}), train, tmp_path / "supernet")["metrics"][
        "steps"] == 2  # (40 - 4 held out) // 16
    probe = LinearProbeConfig(epochs=1, batch_size=12, base_batch=12, base_lr=0.1, num_workers=0, device="cpu",
                              val_archs=0, holdout=HOLDOUT)
    assert train_probe(probe, tmp_path / "supernet", train, tmp_path / "probe")["steps"] == 3  # 36 // 12
