"""The Prefect pipeline against a real (temporary) Prefect API: caching, invalidation, rebuild, bad input.

One module, so that every test here runs on one worker of the parallel run and shares one temporary Prefect API.
The kill -9 and full-disk tests are in ``test_faults.py`` (a module of their own, so the parallel run can put them
on the other worker).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect_runs import artifacts_of, embedded_pngs, runs_of, task_states
from readme_deploy import processes_with

from flows.cli import main as cli_main
from flows.pipeline import join_as_follower, pinas_pipeline
from pinas.config import load_config
from pinas.data.sources import resolve_datasets
from pinas.io.artifacts import sha256_file, verify_manifest
from pinas.io.stage_dirs import SearchDir

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("prefect_api")

TINY = {
    "stages": ["supernet"],
    "data": {"generated": {"cls_train_per_class": 16, "cls_val_per_class": 4, "det_train_images": 8,
                           "det_val_images": 4}},
    "supernet": {"epochs": 1, "batch_size": 16, "base_batch": 16, "queue_size": 32, "projector_hidden": 64,
                 "feature_dim": 16, "checkpoint_every": 2, "log_every": 1},
}


def run(overrides, root):
    state = pinas_pipeline(overrides=overrides, run_root=str(root), return_state=True)
    summary = state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    return summary, {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}, flow_run


SEARCH = {"population": 4, "generations": 1, "parents": 2, "mutations": 1, "crossovers": 1, "top_k": 2,
          "evaluator": {"proxy": "bn_gamma", "batch_size": 16, "recal_batches": 1, "heldout_images": 16}}


def test_cache_hits_changes_and_rebuilds(tmp_path):
    summary, states, flow_run = run({**TINY, "stages": ["supernet", "search"], "search": SEARCH}, tmp_path)
    assert flow_run.state.is_completed()
    # the UI gets the loss curve as an image it renders inline, and a progress bar at 100 %
    artifacts = artifacts_of(flow_run.id)
    (curve,) = embedded_pngs(artifacts["supernet-curves"])
    assert curve.startswith(b"\x89PNG\r\n\x1a\n") and len(curve) > 5000
    assert artifacts["supernet-progress"] == 100.0
    record = summary["stages"]["supernet"]
    assert states["supernet"] == "Completed"
    verify_manifest(record["dir"])
    artifact = record["files"]["supernet.pt"]
    digest, ckpts = sha256_file(artifact), sorted(p.name for p in (tmp_path / "stages").glob("*/checkpoints/*"))

    searched = summary["stages"]["search"]

    # same settings up to how the run executes (workers, logging, checkpoint cadence, the search's device): the
    # tasks are Prefect cache hits, nothing is trained again, and the UI shows the same plots as a fresh run
    runtime = {**TINY, "stages": ["supernet", "search"],
               "supernet": {**TINY["supernet"], "num_workers": 1, "log_every": 3, "checkpoint_every": 5},
               "search": {**SEARCH, "evaluator": {**SEARCH["evaluator"], "device": "cpu", "cache_mb": 1}}}
    summary2, states2, flow_run2 = run(runtime, tmp_path)
    assert states2["supernet"] == "Cached" and states2["search"] == "Cached"
    assert summary2["stages"]["supernet"] == record and summary2["stages"]["search"] == searched
    assert sorted(p.name for p in (tmp_path / "stages").glob("*/checkpoints/*")) == ckpts
    cached_artifacts = artifacts_of(flow_run2.id)
    assert embedded_pngs(cached_artifacts["supernet-curves"]) and embedded_pngs(cached_artifacts["search-plots"])
    assert "supernet-summary" in cached_artifacts and "search-top-k" in cached_artifacts

    # corrupted artifact: detected, the stage runs again and re-derives it byte-identical from its final
    # checkpoint; the search reads the same content, so it stays cached (its key hashes content, not the manifest)
    with open(artifact, "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    _, states3, _ = run(runtime, tmp_path)
    assert states3["supernet"] == "Completed" and states3["search"] == "Cached"
    assert sha256_file(artifact) == digest
    verify_manifest(record["dir"])

    # deleted stage folder: trained again from scratch, in the same folder
    shutil.rmtree(record["dir"])
    summary4, states4, _ = run(TINY, tmp_path)
    assert states4["supernet"] == "Completed"
    assert summary4["stages"]["supernet"]["dir"] == record["dir"]
    verify_manifest(record["dir"])

    # a changed hyper-parameter: a new key, a new folder, trained; the old folder is left alone
    changed = {**TINY, "supernet": {**TINY["supernet"], "base_lr": 0.02}}
    summary5, states5, _ = run(changed, tmp_path)
    assert states5["supernet"] == "Completed"
    assert summary5["stages"]["supernet"]["dir"] != record["dir"]
    verify_manifest(record["dir"])


@pytest.mark.slow
def test_a_follower_node_joins_each_distributed_stage_in_the_folder_node_0_uses(tmp_path):
    """Two nodes on one machine: node 0 runs the flow, node 1 (no Prefect) joins the supernet and the search
    torchrun jobs; it must find each stage's folder from the same settings and upstream content as node 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = {"count": 2, "master_addr": "127.0.0.1", "master_port": port}
    settings = {**TINY, "stages": ["supernet", "search"], "search": SEARCH, "nodes": nodes}
    followed, errors = {}, []
    # the generated data first: two nodes generating it into one folder at once is not what a cluster does
    resolve_datasets(load_config(profile="demo", overrides=settings).data, tmp_path, ("imagenet",))

    def follow() -> None:
        try:
            config = load_config(profile="demo", overrides={**settings, "nodes": {**nodes, "rank": 1}})
            followed.update(join_as_follower(config, str(tmp_path), timeout_s=600))
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    follower = threading.Thread(target=follow)
    follower.start()
    summary, states, _ = run(settings, tmp_path)
    follower.join(timeout=600)
    assert not errors, errors
    assert states["supernet"] == states["search"] == "Completed"
    assert {name: rec["dir"] for name, rec in followed["stages"].items()} == {
        name: summary["stages"][name]["dir"] for name in ("supernet", "search")}
    assert SearchDir(summary["stages"]["search"]["dir"]).result()["best"]["arch"] == \
        summary["stages"]["search"]["metrics"]["best_arch"]


def test_cli_rejects_bad_input_before_running(tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("supernet: [unclosed\n")
    assert cli_main(["run", "--config", str(bad_yaml), "--run-dir", str(tmp_path / "r")]) == 2
    assert "not valid YAML" in capsys.readouterr().err

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("supernet:\n  epochz: 3\n")
    assert cli_main(["run", "--config", str(unknown), "--run-dir", str(tmp_path / "r")]) == 2
    assert "supernet.epochz: unknown key" in capsys.readouterr().err

    wrong_type = tmp_path / "type.yaml"
    wrong_type.write_text("supernet:\n  batch_size: many\n")
    assert cli_main(["run", "--config", str(wrong_type), "--run-dir", str(tmp_path / "r")]) == 2
    assert "supernet.batch_size" in capsys.readouterr().err

    missing = tmp_path / "missing.yaml"
    missing.write_text(f"profile: paper\ndata:\n  imagenet: {tmp_path / 'nowhere'}\n")
    assert cli_main(["run", "--config", str(missing), "--run-dir", str(tmp_path / "r")]) == 2
    assert "data.imagenet: folder" in capsys.readouterr().err

    assert cli_main(["run", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err

    assert cli_main(["run", "--set", "arch=012-3", "--run-dir", str(tmp_path / "r")]) == 2
    assert "arch: architecture '012-3' has 2 stage groups, space 'demo' has 4" in capsys.readouterr().err
    assert cli_main(["run", "--set", "arch=0123", "--run-dir", str(tmp_path / "r")]) == 2
    assert "arch: got the number 83" in capsys.readouterr().err

    assert cli_main(["run", "--set", "transfer.tasks.coco.config=nope.py", "--run-dir", str(tmp_path / "r")]) == 2
    assert "transfer.tasks.coco.config" in capsys.readouterr().err

    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")  # a run root that cannot be created, even by root
    assert cli_main(["run", "--run-dir", str(not_a_dir / "runs")]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.pt"))


def test_settings_that_cannot_work_stop_before_training_and_before_prefect(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"stages": ["supernet", "search"], "data": TINY["data"],
                                      "supernet": TINY["supernet"], "search": {"max_params_m": 0.001}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO))
    for args, message in ((["--config", str(config)], "search: no architecture satisfies max_params_m"),
                          (["--set", "supernet.epochs=-1"], "supernet.epochs: Input should be greater than 0")):
        proc = subprocess.run([str(Path(sys.executable).parent / "pinas-pipeline"), "run", *args, "--run-dir",
                               str(tmp_path / "r")], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        # one message, and no Prefect: no temporary API was started (nor stopped), no traceback
        assert proc.stderr.startswith("pinas-pipeline: error:"), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and "temporary server" not in proc.stderr.lower()
        assert message in proc.stderr
        assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*.db"))
    assert not list((tmp_path / "r" / "stages").glob("supernet-*"))  # nothing trained


def test_without_a_prefect_api_one_line_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0",
               PYTHONPATH=str(REPO))
    # the console script: it starts the temporary API early (flows.early_api), and that start fails too
    proc = subprocess.run([str(Path(sys.executable).parent / "pinas-pipeline"), "run", "--run-dir",
                           str(tmp_path / "r")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pinas-pipeline: error:")]
    assert len(errors) == 1 and "did not start in time" in errors[0] and "prefect server start" in errors[0]
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api" in errors[0] and "Traceback" not in proc.stderr
    assert processes_with(f"PREFECT_HOME={tmp_path / 'home'}") == []  # no server left running by either start


def test_a_failed_transfer_is_not_fatal_and_the_same_command_redoes_only_it(tmp_path, capsys):
    tasks = {name: {"config": f"demo_{model}.py", "length": 2} for name, model in
             [("coco", "mask-rcnn_coco"), ("ade20k", "deeplabv3_ade20k"), ("cityscapes", "deeplabv3_cityscapes")]}
    settings = {"stages": ["retrain", "transfer", "export"], "arch": "12-30-01-23", "data": TINY["data"],
                "retrain": {"epochs": 1, "batch_size": 16, "eval_every": 0},
                "transfer": {"tasks": {**tasks, "ade20k": {**tasks["ade20k"],  # fails once the Runner builds it
                                                            "cfg_options": {"optim_wrapper.optimizer.lr": -1.0}}}},
                "export": {"exporter": "torchscript", "latency_batches": [], "parity_images": 4}}
    config, root = tmp_path / "pipeline.yaml", tmp_path / "runs"
    config.write_text(yaml.safe_dump(settings))
    command = ["run", "--config", str(config), "--run-dir", str(root)]
    capsys.readouterr()
    assert cli_main(command) == 1
    err = capsys.readouterr().err
    summary = json.loads((root / "last_run.json").read_text())
    assert list(summary["failed"]) == ["transfer-ade20k"]
    log = Path(summary["failed"]["transfer-ade20k"]["log"])
    assert "transfer-ade20k failed: " in err and f"its log: {log}" in err and "Invalid learning rate" in log.read_text()
    assert {"transfer-coco", "transfer-cityscapes", "export"} <= set(summary["stages"])  # the rest finished
    card = json.loads(Path(summary["stages"]["export"]["files"]["model_card.json"]).read_text())
    assert set(card["transfer_metrics"]) == {"coco", "cityscapes"}

    coco_metrics = Path(summary["stages"]["transfer-coco"]["dir"]) / "metrics.json"
    written = coco_metrics.stat().st_mtime_ns
    assert cli_main(command) == 1  # the same command: only the failed task runs again (and fails again)
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[runs_of(root)[-1].id])))
    transfer_states = sorted(r.state.name for r in task_runs if r.name.startswith("transfer"))
    assert transfer_states == ["Cached", "Cached", "Failed"]
    assert task_states(runs_of(root)[-1].id)["retrain"] == "Cached"
    assert coco_metrics.stat().st_mtime_ns == written and log.read_text().count("Invalid learning rate") >= 2


def test_library_logs_reach_the_run_logs_however_the_run_started():
    """A worker process configures Prefect's logging before pinas is imported; the lines must still reach the UI."""
    from prefect import flow
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from flows.ui import route_library_logs

    lib = logging.getLogger("pinas")
    saved = lib.handlers[:], lib.level
    lib.handlers.clear()  # as in a run started by a worker: nothing attached to the library's logger yet
    lib.setLevel(logging.NOTSET)

    @flow
    def logs_a_line():
        route_library_logs()
        lib.info("resuming at step 42")

    try:
        state = logs_a_line(return_state=True)
        APILogHandler().flush()
    finally:
        lib.handlers[:], _ = saved
        lib.setLevel(saved[1])
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert [entry.name for entry in logs if entry.message == "resuming at step 42"] == ["pinas"]
