"""The README's deployment commands, run as written against a fresh ``prefect server start`` on a free port.

Every command of the README's "Deployments and the Prefect UI" block runs in a clean copy of the checkout, the
server and the worker in the background (``scripts/readme_deploy.py``). The demo run the README starts is executed
by the README's worker and must complete, with its stages' records, its plots in the UI and its exports; the paper
run waits in gpu-pool (no GPU worker here) with the folders the README gave it; the study waits behind the demo
(the pool runs one flow at a time) or has started, and has not failed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from prefect_runs import embedded_pngs
from readme_deploy import ReadmeDeployment, copy_checkout, readme_commands

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_readme_deployment_commands_work_as_written_on_a_fresh_server(tmp_path):
    commands = readme_commands(REPO / "README.md")
    assert commands[0] == "prefect server start" and any("deploy --all" in c for c in commands)
    checkout = copy_checkout(REPO, tmp_path / "checkout")
    with ReadmeDeployment(checkout, tmp_path, Path(sys.executable).parent) as deployment:
        try:
            deployment.run_commands(commands)
        except RuntimeError as exc:
            pytest.fail(f"{exc}\n\nworker log:\n{deployment.log_tail()}")
        deployments = {d["name"] for d in deployment.api("/deployments/filter", {})}
        assert deployments == {"demo", "paper", "paper-node1", "study-demo", "bench-transnas"}
        runs = deployment.flow_runs
        assert set(runs) == {"pinas-pipeline/demo", "pinas-pipeline/paper", "pinas-study/study-demo",
                             "pinas-bench/bench-transnas"}

        demo = deployment.wait_final(runs["pinas-pipeline/demo"], timeout_s=2000)
        assert demo["state"]["type"] == "COMPLETED", (demo["state"], deployment.log_tail())
        artifacts = {a["key"]: a["data"] for a in deployment.api(
            "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [demo["id"]]}}}) if a["key"]}
        for key, images in {"supernet-curves": 1, "retrain-curves": 1, "search-plots": 2}.items():
            pngs = embedded_pngs(artifacts[key])
            assert len(pngs) == images and all(p.startswith(b"\x89PNG") for p in pngs), key

        paper = deployment.flow_run(runs["pinas-pipeline/paper"])
        assert paper["state"]["type"] == "SCHEDULED"  # waits for a gpu-pool worker
        assert paper["parameters"]["imagenet"] == "/data/imagenet" and paper["parameters"]["devices"] == 8
        assert paper["parameters"]["profile"] == "paper"
        for name in ("pinas-study/study-demo", "pinas-bench/bench-transnas"):  # queued behind the demo (1 at a time)
            queued = deployment.flow_run(runs[name])
            assert queued["state"]["type"] in {"SCHEDULED", "PENDING", "RUNNING"}, (name, queued["state"])

    summary = json.loads((checkout / "runs" / "last_run.json").read_text())
    assert summary["profile"] == "demo" and not summary["failed"]
    assert set(summary["stages"]) == {"supernet", "linear-probe", "search", "retrain", "transfer-coco",
                                      "transfer-ade20k", "transfer-cityscapes", "export"}
    assert (checkout / summary["stages"]["export"]["published"] / "model.onnx").is_file()  # relative to the checkout
