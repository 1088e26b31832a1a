"""Faults against a real (temporary) Prefect API: kill -9 in every training stage, and a full disk.

One run root, one config; ``pinas-pipeline run`` is killed with SIGKILL (its whole process group, transfer
children included) in each training stage in turn, once that stage has a checkpoint, and started again with the same
command. Each restart must take every finished stage from Prefect's cache and resume the killed stage from its last
checkpoint. A second test runs the pipeline on a "full disk" (a file size limit) and checks the message.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect_runs import runs_of, task_states

from flows.cli import main as cli_main
from flows.pipeline import pinas_pipeline
from pinas.engine.checkpoint import Checkpointer
from pinas.io.artifacts import verify_manifest
from pinas.io.locking import hold
from pinas.io.stage_dirs import RetrainDir, SearchDir, TransferDir

pytestmark = pytest.mark.usefixtures("prefect_api")

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "data": {"generated": {"cls_train_per_class": 16, "cls_val_per_class": 4, "det_train_images": 8,
                           "det_val_images": 4}},
    # every training stage writes its first checkpoint early and trains on for several seconds after it
    "supernet": {"epochs": 2, "batch_size": 16, "base_batch": 16, "queue_size": 32, "projector_hidden": 64,
                 "feature_dim": 16, "checkpoint_every": 2, "log_every": 1},
    "linear_probe": {"epochs": 2, "batch_size": 16, "checkpoint_every": 2, "log_every": 1, "val_archs": 1,
                     "val_recal_batches": 1},
    "search": {"population": 4, "generations": 3, "parents": 2, "mutations": 2, "crossovers": 2, "top_k": 3,
               "evaluator": {"proxy": "linear_probe", "batch_size": 16, "recal_batches": 1, "heldout_images": 16}},
    "retrain": {"epochs": 2, "batch_size": 16, "eval_every": 0, "checkpoint_every": 2, "checkpoint_unit": "steps",
                "log_every": 1},
    "transfer": {"tasks": {
        name: {"config": f"demo_{model}.py", "length": 6,
               "cfg_options": {"default_hooks.checkpoint.interval": 3}}
        for name, model in [("coco", "mask-rcnn_coco"), ("ade20k", "deeplabv3_ade20k"),
                            ("cityscapes", "deeplabv3_cityscapes")]}},
    "export": {"exporter": "torchscript", "latency_batches": [], "parity_images": 8},  # dynamo: test_export.py
}
TRAINING_STAGES = ["supernet", "linear-probe", "search", "retrain", "transfer"]
STAGES = ["supernet", "linear-probe", "search", "retrain", "transfer-coco", "transfer-ade20k", "transfer-cityscapes",
          "export"]


@pytest.fixture(scope="module")
def api_url(prefect_api):
    return prefect_api


def start(config_file: Path, run_root: Path, api_url: str, log: Path, **popen) -> subprocess.Popen:
    """``pinas-pipeline run`` in its own session (so a SIGKILL of the group takes the transfer children too)."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PINAS_EXPORTS_DIR": str(run_root.parent / "exports")}
    with open(log, "w") as out:
        return subprocess.Popen([str(Path(sys.executable).parent / "pinas-pipeline"), "run", "--config",
                                 str(config_file), "--run-dir", str(run_root)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, **popen)


def unfinished(run_root: Path, stage: str) -> list[Path]:
    return [d for d in (run_root / "stages").glob(f"{stage}-*") if not (d / "manifest.json").exists()]


def progress_of(stage_dir: Path) -> int | None:
    """The step / generation / iteration a restarted stage continues from, from its files alone."""
    state = SearchDir(stage_dir).read_state()
    if state is not None:
        return state["generation"]
    mmengine = TransferDir(stage_dir).last_checkpoint()  # iter_<N>.pth
    if mmengine is not None:
        return int(mmengine.stem.split("_")[1])
    return Checkpointer(stage_dir / "checkpoints").latest_step()


def kill_once_checkpointed(proc: subprocess.Popen, run_root: Path, stage: str) -> dict[str, int]:
    """SIGKILL the run's process group once an unfinished ``stage`` folder holds a checkpoint."""
    deadline = time.time() + 600
    while not any(progress_of(d) is not None for d in unfinished(run_root, stage)):
        assert proc.poll() is None, f"the run ended before {stage} could be killed"
        assert time.time() < deadline, f"{stage} never wrote a checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return {d.name: progress_of(d) for d in unfinished(run_root, stage) if progress_of(d) is not None}



def resumed(stage: str, folder: str, at: int, output: str, run_root: Path) -> bool:
    """Did the run after the kill continue ``folder`` from ``at`` (its last checkpoint) rather than from scratch?"""
    if stage == "search":
        return f"search: resuming at generation {at + 1}" in output
    if stage == "transfer":  # MMEngine resumes; start_iter is kept by pinas.openmmlab.runner
        return json.loads((run_root / "stages" / folder / "metrics.json").read_text())["start_iter"] == at
    return f"resuming at step {at}" in output



@pytest.mark.slow
def test_sigkill_in_every_training_stage_then_the_same_command_resumes(api_url, tmp_path, monkeypatch, capsys):
    """Each killed run is a subprocess; the run kept out and the final run go through the CLI in this process.

    The final run is also the end-to-end check of the whole pipeline (every stage, the searched architecture carried
    through, the published export), and a last run takes every stage from the cache.
    """
    config_file, run_root = tmp_path / "pipeline.yaml", tmp_path / "runs"
    config_file.write_text(yaml.safe_dump(CONFIG))
    command = ["run", "--config", str(config_file), "--run-dir", str(run_root)]
    logs = [tmp_path / f"run-{i}.log" for i in range(len(TRAINING_STAGES))]
    killed = []
    for stage, log in zip(TRAINING_STAGES, logs):
        killed.append((stage, kill_once_checkpointed(start(config_file, run_root, api_url, log), run_root, stage)))
        if stage == "supernet":  # while another process works in a stage folder, a second run must keep out
            capsys.readouterr()
            with hold(run_root / "stages" / next(iter(killed[0][1]))):
                assert cli_main(command) == 2
            assert f"is in use by pid {os.getpid()} on" in capsys.readouterr().err
    monkeypatch.setattr("flows.pipeline.EXPORTS_DIR", tmp_path / "exports")
    assert cli_main(command) == 0
    summary = json.loads((run_root / "last_run.json").read_text())
    assert sorted(summary["stages"]) == sorted(STAGES)
    for record in summary["stages"].values():
        verify_manifest(record["dir"])

    runs = [r for r in runs_of(run_root) if not r.state.is_failed()]  # all but the one kept out
    assert len(runs) == len(logs) + 1 and runs[-1].state.is_completed()
    # each killed run was marked Crashed in the UI by the run after it (its process could not say so itself)
    assert [r.state.type.value for r in runs[:-1]] == ["CRASHED"] * len(killed)
    assert "its process died" in runs[0].state.message
    assert not list((run_root / "flow-runs").glob(".*.lock"))  # no lock outlives its run
    for i, flow_run in enumerate(runs[1:], start=1):
        states = task_states(flow_run.id)
        # stages finished in earlier runs came from Prefect's cache: nothing was trained again
        assert all(states[stage] == "Cached" for stage, _ in killed[:i - 1] if stage != "transfer"), (i, states)
        # the stage killed in the previous run went on from its last checkpoint
        stage, progress = killed[i - 1]
        assert progress, f"{stage} had no checkpoint when killed"
        output = logs[i].read_text() if i < len(logs) else ""  # the final run's resumes are read from its files
        for folder, at in progress.items():
            assert resumed(stage, folder, at, output, run_root), (stage, folder, at)
    assert {s: task_states(runs[-1].id)[s] for s in TRAINING_STAGES[:4]} == dict.fromkeys(TRAINING_STAGES[:4],
                                                                                          "Cached")
    # end to end: the searched architecture is what was retrained, transferred and exported
    stages = summary["stages"]
    searched = stages["search"]["metrics"]["best_arch"]
    assert RetrainDir(stages["retrain"]["dir"]).model_config()["arch"] == searched
    for task in ("coco", "ade20k", "cityscapes"):  # each fine-tuned the retrained network, and was evaluated
        assert TransferDir(stages[f"transfer-{task}"]["dir"]).manifest()["arch"] == searched
    assert "coco/bbox_mAP" in stages["transfer-coco"]["metrics"]
    assert "mIoU" in stages["transfer-ade20k"]["metrics"] and "mIoU" in stages["transfer-cityscapes"]["metrics"]
    published = Path(stages["export"]["published"])
    assert (published / "model.onnx").is_file() and (published / "model_card.json").is_file()
    assert json.loads((published / "model_card.json").read_text())["model"]["arch"] == searched

    # the whole flow again: every stage from the cache, nothing recomputed
    state = pinas_pipeline(config_file=str(config_file), run_root=str(run_root), return_state=True)
    assert state.is_completed()
    again = task_states(state.state_details.flow_run_id)
    assert set(again.values()) <= {"Cached", "Completed"}
    assert all(again[s] == "Cached" for s in ("supernet", "linear-probe", "search", "retrain", "export"))
    assert state.result()["stages"] == stages and list(state.result()["stages"]) == STAGES  # in pipeline order


def _file_size_limit(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.slow
def test_full_disk_is_reported_and_the_same_command_then_finishes(api_url, tmp_path):
    config_file, run_root = tmp_path / "pipeline.yaml", tmp_path / "runs"
    config_file.write_text(yaml.safe_dump({"stages": ["supernet"], "data": CONFIG["data"],
                                           "supernet": CONFIG["supernet"]}))
    log = tmp_path / "full.log"
    # files up to 1 MB: the generated images fit, the first supernet checkpoint does not
    proc = start(config_file, run_root, api_url, log, preexec_fn=_file_size_limit(1 << 20))
    assert proc.wait(timeout=600) == 2
    error = [line for line in log.read_text().splitlines() if line.startswith("pinas-pipeline: error:")]
    assert len(error) == 1 and "could not write" in error[0] and "checkpoint-00000002.pt" in error[0], error
    assert "File too large" in error[0] and "run the same command again" in error[0]
    stage = next((run_root / "stages").glob("supernet-*"))
    assert not list(stage.rglob("*.tmp")) and not list(stage.rglob("*.pt"))  # nothing torn left behind

    assert cli_main(["run", "--config", str(config_file), "--run-dir", str(run_root)]) == 0  # in this process
    verify_manifest(stage)
