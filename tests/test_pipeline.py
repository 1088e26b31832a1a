"""The Prefect pipeline against a real (temporary) Prefect API: caching, invalidation, rebuild, bad input."""
import json
import logging
import shutil
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.cli import main as cli_main
from flows.pipeline import pinas_pipeline
from pinas.config import load_config
from pinas.io.artifacts import sha256_file, verify_manifest

TINY = {
    "stages": ["supernet"],
    "data": {"generated": {"cls_train_per_class": 16, "cls_val_per_class": 4, "det_train_images": 8,
                           "det_val_images": 4}},
    "supernet": {"epochs": 1, "batch_size": 16, "base_batch": 16, "queue_size": 32, "projector_hidden": 64,
                 "feature_dim": 16, "checkpoint_every": 2, "log_every": 1},
}


pytestmark = pytest.mark.usefixtures("prefect_api")


def run(config, root):
    state = pinas_pipeline(config=config, run_root=str(root), return_state=True)
    summary = state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    return summary, {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}, flow_run


def test_cache_hits_changes_and_rebuilds(tmp_path):
    config = load_config(profile="demo", overrides=TINY)
    summary, states, flow_run = run(config, tmp_path)
    assert flow_run.state.is_completed()
    record = summary["stages"]["supernet"]
    assert states["supernet"] == "Completed"
    verify_manifest(record["dir"])
    artifact = record["files"]["supernet.pt"]
    digest, ckpts = sha256_file(artifact), sorted(p.name for p in (tmp_path / "stages").glob("*/checkpoints/*"))

    # same config: the task is a Prefect cache hit and nothing is trained again
    summary2, states2, _ = run(config, tmp_path)
    assert states2["supernet"] == "Cached"
    assert summary2["stages"]["supernet"] == record
    assert sorted(p.name for p in (tmp_path / "stages").glob("*/checkpoints/*")) == ckpts

    # corrupted artifact: detected, the stage runs again and re-derives it from its final checkpoint
    with open(artifact, "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    _, states3, _ = run(config, tmp_path)
    assert states3["supernet"] == "Completed"
    assert sha256_file(artifact) == digest
    verify_manifest(record["dir"])

    # deleted stage folder: trained again from scratch, in the same folder
    shutil.rmtree(record["dir"])
    summary4, states4, _ = run(config, tmp_path)
    assert states4["supernet"] == "Completed"
    assert summary4["stages"]["supernet"]["dir"] == record["dir"]
    verify_manifest(record["dir"])

    # a changed hyper-parameter: a new key, a new folder, trained; the old folder is left alone
    changed = load_config(profile="demo", overrides={**TINY, "supernet": {**TINY["supernet"], "base_lr": 0.02}})
    summary5, states5, _ = run(changed, tmp_path)
    assert states5["supernet"] == "Completed"
    assert summary5["stages"]["supernet"]["dir"] != record["dir"]
    verify_manifest(record["dir"])


E2E = {
    "data": TINY["data"],
    "supernet": TINY["supernet"],
    "search": {"population": 4, "generations": 2, "parents": 2, "mutations": 2, "crossovers": 2, "top_k": 3,
               "evaluator": {"batch_size": 16, "recal_batches": 1, "heldout_images": 16}},
    "retrain": {"epochs": 1, "batch_size": 16, "eval_every": 0},
    "transfer": {"tasks": {"coco": {"config": "demo_mask-rcnn_coco.py", "max_iters": 12},
                           "ade20k": {"config": "demo_deeplabv3_ade20k.py", "max_iters": 12},
                           "cityscapes": {"config": "demo_deeplabv3_cityscapes.py", "max_iters": 12}}},
    "export": {"latency_batches": [], "parity_images": 8, "eval_images": 20},
}
STAGES = ["supernet", "search", "retrain", "transfer-coco", "transfer-ade20k", "transfer-cityscapes", "export"]


@pytest.mark.slow
def test_every_stage_end_to_end_then_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PINAS_EXPORTS_DIR", str(tmp_path / "exports"))
    monkeypatch.setattr("flows.pipeline.EXPORTS_DIR", tmp_path / "exports")
    config = load_config(profile="demo", overrides=E2E)
    summary, states, flow_run = run(config, tmp_path / "runs")
    assert flow_run.state.is_completed()
    assert list(summary["stages"]) == STAGES
    for stage in STAGES:
        assert states[stage.split("-")[0] if stage.startswith("transfer") else stage] == "Completed"
        manifest = verify_manifest(summary["stages"][stage]["dir"])
        assert manifest["files"], stage
    searched = summary["stages"]["search"]["metrics"]["best_arch"]
    retrain_cfg = json.loads(Path(summary["stages"]["retrain"]["files"]["model_config.json"]).read_text())
    assert retrain_cfg["arch"] == searched  # the searched architecture is what was retrained
    assert summary["stages"]["transfer-coco"]["metrics"]["coco/bbox_mAP"] >= 0
    assert "mIoU" in summary["stages"]["transfer-ade20k"]["metrics"]
    published = Path(summary["stages"]["export"]["published"])
    assert (published / "model.onnx").is_file() and (published / "model_card.json").is_file()
    card = json.loads((published / "model_card.json").read_text())
    assert card["model"]["arch"] == searched

    # the whole flow again: every stage from the cache, nothing recomputed
    t0 = time.perf_counter()
    summary2, states2, flow_run2 = run(config, tmp_path / "runs")
    cached_seconds = time.perf_counter() - t0
    assert flow_run2.state.is_completed()
    assert set(states2.values()) <= {"Cached", "Completed"} and states2["supernet"] == "Cached"
    assert all(states2[s] == "Cached" for s in ("supernet", "search", "retrain", "export"))
    assert summary2["stages"] == summary["stages"]
    print(f"re-run from cache: {cached_seconds:.1f} s")


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
