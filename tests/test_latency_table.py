"""The latency table measured in ONNX Runtime: resume after a kill, refusal of other tables, use in the search.

The measurements are real (ONNX Runtime on this CPU) at the demo space's 64 px, with few repeats: what is tested is
the bookkeeping and that the table's bound holds for the architecture the search returns, not the machine's speed.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import HOLDOUT

from pinas.deploy.latency_table import TableSettings, measure_table, onnx_bytes, time_onnx
from pinas.io.stage_dirs import SearchDir
from pinas.models.backbone import Classifier, build_subnet
from pinas.search.constraints import LatencyTable
from pinas.search.evaluation import EvaluatorConfig
from pinas.space import DEMO, get_space
from pinas.stages.search import SearchConfig, run_search

FAST = TableSettings(space="demo", warmup=2, repeats=15)


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("latency") / "demo.json"
    measure_table(FAST, out, validate=6)
    return out


def test_the_table_describes_itself_and_checks_itself_on_whole_networks(table_file):
    table = json.loads(table_file.read_text())
    assert table["settings"]["space"] == "demo" and table["settings"]["input_size"] == 64
    assert table["runtime"] == "onnxruntime" and {"onnxruntime", "torch", "pinas"} <= set(table["versions"])
    assert np.asarray(table["layers"]).shape == (DEMO.num_layers, DEMO.num_choices) and table["fixed_ms"] > 0
    check = table["validation"]
    assert len(check["archs"]) >= 6 and len(check["measured_ms"]) == len(check["predicted_ms"])
    # the predictions are the table's sums, recomputed here from its entries
    layers = np.asarray(table["layers"])
    for arch, predicted in zip(check["archs"], check["predicted_ms"]):
        parsed = DEMO.parse(arch)
        assert predicted == pytest.approx(table["fixed_ms"] + layers[np.arange(len(parsed)), parsed].sum(), abs=1e-3)
    errors = np.abs(np.subtract(check["predicted_ms"], check["measured_ms"])) / np.asarray(check["measured_ms"])
    assert check["mape_pct"] == pytest.approx(100 * errors.mean(), abs=0.01)
    assert check["trusted"] == (check["mape_pct"] <= check["threshold_pct"])


def test_a_killed_measurement_resumes_with_what_it_had_measured(tmp_path):
    out = tmp_path / "table.json"
    assert measure_table(FAST, out, validate=0, stop_after=5) is None  # "killed" after 5 entries
    partial = json.loads((tmp_path / "table.json.partial.json").read_text())
    assert len(partial["entries"]) == 5 and not out.exists()
    kept = dict(partial["entries"])
    table = measure_table(FAST, out, validate=0)
    assert all(table["entries"][key] == value for key, value in kept.items())  # not measured again
    assert len(table["entries"]) > 5 and not (tmp_path / "table.json.partial.json").exists()
    # other settings do not reuse a partial measurement
    measure_table(FAST.model_copy(update={"threads": 2}), tmp_path / "other.json", validate=0, stop_after=2)
    assert len(json.loads((tmp_path / "other.json.partial.json").read_text())["entries"]) == 2


def test_a_table_of_another_space_or_size_or_a_malformed_one_is_refused_naming_the_field(table_file, tmp_path):
    good = json.loads(table_file.read_text())
    with pytest.raises(ValueError, match="settings.space = 'demo', this search needs 'resnest50'"):
        LatencyTable.load(table_file, get_space("resnest50"))
    other_size = tmp_path / "size.json"
    other_size.write_text(json.dumps({**good, "settings": {**good["settings"], "input_size": 96}}))
    with pytest.raises(ValueError, match="settings.input_size = 96, this search needs 64"):
        LatencyTable.load(other_size, DEMO)
    cases = {"no_layers": ({k: v for k, v in good.items() if k != "layers"}, "missing field 'layers'"),
             "short": ({**good, "layers": good["layers"][:3]}, "layers must be a list of 8 rows"),
             "text": ({**good, "layers": [*good["layers"][:2], [1.0, "fast", 1.0, 1.0], *good["layers"][3:]]},
                      r"layers\[2\]\[1\] must be a number"),
             "fixed": ({**good, "fixed_ms": -1}, "fixed_ms must be a number")}
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=message):
            LatencyTable.load(path, DEMO)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        LatencyTable.load(tmp_path / "broken.json", DEMO)


@pytest.mark.slow
def test_a_search_bounded_by_the_table_returns_an_architecture_within_the_bound(table_file, trained_supernet,
                                                                               eval_imagenet, tmp_path):
    table = LatencyTable.load(table_file, DEMO)
    fastest, slowest = table(tuple(table.layers.argmin(1))), table(tuple(table.layers.argmax(1)))
    bound = fastest + 0.5 * (slowest - fastest)  # between the fastest and the slowest architecture
    cfg = SearchConfig(holdout=HOLDOUT, evaluator=EvaluatorConfig(proxy="bn_gamma"), population=8, generations=2,
                       parents=2, mutations=4, crossovers=4, top_k=3, max_latency_ms=bound,
                       latency_table=str(table_file))
    run_search(cfg, trained_supernet, eval_imagenet / "train", tmp_path / "search")
    result = SearchDir(tmp_path / "search").result()
    best = result["best"]
    assert result["latency_table"]["mape_pct"] == json.loads(table_file.read_text())["validation"]["mape_pct"]
    assert all(c["latency_ms"] <= bound for c in SearchDir(tmp_path / "search").candidates())
    # measured, not only predicted: the returned network in ONNX Runtime, with the table's settings
    settings = TableSettings.model_validate(json.loads(table_file.read_text())["settings"])
    network = Classifier(build_subnet(DEMO, best["arch"]), 1000)
    shape = (1, 3, 64, 64)
    # the search applied the bound to the table's predictions less the table's own error (search.latency_margin);
    # the machine is shared with the other test worker, so the least-disturbed runs are the measurement (p10)
    margin = 1 + json.loads(table_file.read_text())["validation"]["mape_pct"] / 100
    assert best["latency_ms"] <= bound / margin + 1e-9
    measured = min(time_onnx(onnx_bytes(network, shape, 18), shape, settings)["p10_ms"] for _ in range(3))
    assert measured <= bound, (measured, bound, best)
