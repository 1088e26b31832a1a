"""``pinas-pipeline bench transnas`` and the ``pinas-bench`` flow: their tables say what the runs did, checked
against the shipped table with scipy, and the UI gets the plots."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from flows.cli import main as cli_main
from pinas.bench.transnas import TASKS, table

SMALL = ["--runs", "4", "--budgets", "10,30", "--strategies", "random,predictor", "--tasks", "jigsaw,normal",
         "--transfer-runs", "2", "--processes", "1"]


def test_the_bench_command_reports_what_its_runs_found(tmp_path, capsys):
    assert cli_main(["bench", "transnas", *SMALL, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    data = table()
    for strategy in ("random", "predictor"):
        for task in ("jigsaw", "normal"):
            at10, at30 = report["results"][strategy][task]
            for s in (at10, at30):
                ranks = np.array(s["best_ranks"])
                assert len(ranks) == 4 and ranks.min() >= 1 and ranks.max() <= 4096
                assert s["mean_rank"]["value"] == pytest.approx(ranks.mean())
                assert s["share_top1pct"]["value"] == pytest.approx((ranks <= 41).mean())
                low, high = s["mean_rank"]["ci95"]
                assert ranks.min() <= low <= s["mean_rank"]["value"] <= high <= ranks.max()
            assert (np.array(at30["best_ranks"]) <= np.array(at10["best_ranks"])).all()  # more queries, no worse
            curve = report["curves"][task][strategy]
            assert len(curve) == 30 and curve == sorted(curve, reverse=True)  # best-so-far only improves
            assert curve[9] == pytest.approx(np.mean(at10["best_ranks"]))
    # the Zen report and the task correlations against scipy on the shipped table
    for task in TASKS:
        tau = stats.kendalltau(data.zen[task], data.metric[task]).statistic
        assert report["zen"][task]["kendall_tau"] == pytest.approx(tau)
        favourite = int(np.argmax(data.zen[task]))
        assert report["zen"][task]["zero_query_rank"] == 1 + int((data.metric[task] > data.metric[task][favourite])
                                                                .sum())
    tau = stats.kendalltau(data.metric["jigsaw"], data.metric["normal"]).statistic
    assert report["transfer"]["kendall_tau_between_tasks"]["jigsaw"]["normal"] == pytest.approx(tau, abs=5e-4)
    assert set(report["transfer"]["matrix"]) == set(TASKS)
    printed = capsys.readouterr().out
    assert "| predictor |" in printed and "### 30 queries" in printed
    for name in ("rank-vs-queries.png", "transfer.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    assert cli_main(["bench", "nasbench"]) == 2  # an unknown benchmark is named


@pytest.mark.usefixtures("prefect_api")
def test_the_bench_flow_shows_its_tables_and_plots_in_the_ui(tmp_path):
    from prefect_runs import artifacts_of, embedded_pngs

    from flows.bench import pinas_bench

    state = pinas_bench(runs=2, budgets=[10], strategies=["random"], tasks=["normal"], transfer_runs=2,
                        out_dir=str(tmp_path), return_state=True)
    assert state.is_completed() and (tmp_path / "bench.md").is_file()
    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert len(embedded_pngs(artifacts["bench-plots"])) == 2
    assert "| random |" in artifacts["bench-tables"]
