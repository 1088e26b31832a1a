"""The ranking study: a killed study resumes without redoing finished retrains, and its statistics are scipy's."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from flows.cli import main as cli_main
from pinas.config import load_config
from pinas.io.stage_dirs import RetrainDir, StudyDir
from pinas.search.constraints import cost_model
from pinas.search.study import pick_architectures, seed_noise
from pinas.space import DEMO

REPO = Path(__file__).resolve().parents[1]
STUDY = {
    "data": {"generated": {"cls_train_per_class": 16, "cls_val_per_class": 4}, "search_holdout": {"images": 0.2}},
    "supernet": {"epochs": 1, "batch_size": 16, "base_batch": 16, "queue_size": 32, "projector_hidden": 64,
                 "feature_dim": 16, "log_every": 1},
    "linear_probe": {"epochs": 1, "batch_size": 16, "val_recal_batches": 1},
    "retrain": {"epochs": 1, "batch_size": 16, "eval_every": 1, "log_every": 1},
    "search": {"evaluator": {"batch_size": 8, "recal_batches": 1, "heldout_images": 8}},
    "study": {"supernets": ["pi", "spos"], "archs": 3, "seeds": [0, 1], "bootstrap": 50, "pool": 40},
}


def finished_retrains(run_root: Path) -> dict[str, float]:
    return {str(d): (d / "manifest.json").stat().st_mtime for d in (run_root / "stages").glob("retrain-*")
            if (d / "manifest.json").is_file()}


@pytest.mark.slow
def test_a_killed_study_resumes_keeping_its_retrains_and_reports_scipys_statistics(prefect_api, tmp_path, capsys):
    config_file, run_root = tmp_path / "study.yaml", tmp_path / "runs"
    config_file.write_text(yaml.safe_dump(STUDY))
    command = ["study", "--config", str(config_file), "--run-dir", str(run_root)]
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *command], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    while len(finished_retrains(run_root)) < 2:
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = finished_retrains(run_root)
    assert 2 <= len(before) < 6 and not (run_root / "last_study.json").exists()

    capsys.readouterr()
    assert cli_main(command) == 0
    printed = capsys.readouterr().out
    after = finished_retrains(run_root)
    assert len(after) == 3 * 2 and all(after[d] == mtime for d, mtime in before.items())  # kept, not redone

    summary = json.loads((run_root / "last_study.json").read_text())
    top1: dict[str, list[float]] = {}
    for d in sorted(after, key=lambda d: RetrainDir(d).manifest()["config"]["seed"]):
        top1.setdefault(RetrainDir(d).model_config()["arch"], []).append(RetrainDir(d).metrics()["top1"])
    assert sorted(top1) == sorted(summary["archs"]) and all(len(v) == 2 for v in top1.values())
    proxies = {"pi": {"contrastive", "linear_probe", "bn_gamma"}, "spos": {"linear_probe", "bn_gamma"}}
    defined = 0
    for objective, folder in ((s.removeprefix("study-"), d) for s, d in summary["studies"].items()):
        report = StudyDir(folder).report()
        # every proxy, and beside them the baselines each must beat, with the same statistics
        assert set(report["correlations"]) == proxies[objective] | {"macs", "params", "random"}
        rows = sorted(report["architectures"], key=lambda r: r["arch"])
        mean = [np.mean(top1[r["arch"]]) for r in rows]
        for proxy, c in report["correlations"].items():
            x = [r[proxy] for r in rows]
            tau, rho = stats.kendalltau(x, mean).statistic, stats.spearmanr(x, mean).statistic
            assert c["kendall_tau"] == (pytest.approx(tau) if np.isfinite(tau) else None)  # None: undefined (ties)
            assert c["spearman_rho"] == (pytest.approx(rho) if np.isfinite(rho) else None)
            defined += c["kendall_tau"] is not None
            if proxy in proxies[objective]:  # a scatter plot per proxy (the baselines are in the table)
                assert (Path(folder) / StudyDir.scatter(proxy)).stat().st_size > 1000
        table = np.array([top1[r["arch"]] for r in rows])
        assert report["seed_noise"]["seed_to_seed_kendall_tau"] == pytest.approx(
            stats.kendalltau(table[:, 0], table[:, 1]).statistic)
        assert report["seed_noise"]["anova_p"] == pytest.approx(stats.f_oneway(*table).pvalue)
    assert defined >= 2  # most proxies tell the three architectures apart even after these few steps
    assert "Kendall tau" in printed and "spos" in printed


def test_the_cost_pick_spans_the_macs_range_and_bad_studies_fail_before_training(tmp_path, capsys):
    cost = cost_model(DEMO, 1000)
    archs = pick_architectures(DEMO, 12, "cost", 0, 500, cost)
    macs = [cost(DEMO.parse(a)).macs for a in archs]
    assert len(set(archs)) == 12 and macs == sorted(macs) and macs[-1] > macs[0]
    extremes = [c.macs for c in cost.extremes()]
    assert macs[0] - extremes[0] < 0.25 * (extremes[1] - extremes[0])  # reaches into both ends of the range
    assert extremes[1] - macs[-1] < 0.25 * (extremes[1] - extremes[0])
    assert load_config(None, "demo", {"study": {"arch_list": ["00-00-00-00", "11-11-11-11", "22-22-22-22"]}}
                       ).study.architectures("demo", 5) == ["00-00-00-00", "11-11-11-11", "22-22-22-22"]
    for sets, message in ((["study.supernets=[pi,moco]"], "study.supernets.1"),
                          (["study.arch_list=[00-00-00-00,11-11-11-99,22-22-22-22]"], "11-11-11-99"),
                          (["study.seeds=[0,0]"], "lists each item twice")):
        assert cli_main(["study", "--run-dir", str(tmp_path / "r"), *[f"--set={s}" for s in sets]]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "stages").exists()
    assert seed_noise({"a": [50.0], "b": [60.0], "c": [70.0]})["seed_to_seed_kendall_tau"] is None
    apart = seed_noise({"a": [90.0, 91.0, 92.0], "b": [80.0, 81.0, 79.0], "c": [70.0, 71.0, 72.0]})
    alike = seed_noise({"a": [90.0, 80.0, 85.0], "b": [82.0, 88.0, 84.0], "c": [85.0, 83.0, 87.0]})
    assert apart["seed_to_seed_kendall_tau"] == 1.0 and apart["anova_p"] < 1e-4 and alike["anova_p"] > 0.9


def test_a_spos_study_on_one_class_stops_before_training(prefect_api, demo_data, tmp_path, capsys):
    source = demo_data("imagenet", cls_train_per_class=8, cls_val_per_class=2)
    for split in ("train", "val"):  # every image in one class folder
        (tmp_path / "one" / split / "all").mkdir(parents=True)
        for p in (source / split).glob("*/*"):
            (tmp_path / "one" / split / "all" / f"{p.parent.name}_{p.name}").symlink_to(p)
    run_root = tmp_path / "runs"
    assert cli_main(["study", "--run-dir", str(run_root), "--supernets", "pi,spos", "--set", "data.source=folders",
                     "--set", f"data.imagenet={tmp_path / 'one'}"]) == 2
    err = capsys.readouterr().err
    assert "supernet.objective spos trains a classifier" in err and "['all'], it needs at least 2" in err
    assert not list((run_root / "stages").glob("supernet-*"))  # nothing trained
