"""What the Prefect UI gets: plots as PNG images embedded in Markdown, and a heartbeat that keeps the progress bar
and the run log moving while one long step runs (against the real temporary Prefect API)."""
from __future__ import annotations

import io
import time

import matplotlib.image
import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, LogFilter, LogFilterFlowRunId
from prefect_runs import embedded_pngs

from flows.ui import images_markdown, progress_reporter, route_library_logs
from pinas.plots import plot_training


def _pixels(png: bytes):
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def test_training_curve_is_a_png_with_a_loss_panel_and_an_accuracy_panel():
    steps = [{"step": s, "epoch": s / 10, "loss": 3.0 / s, "train_top1": 10.0 * s} for s in range(1, 11)]
    evals = [{"step": 5, "epoch": 0.5, "top1": 40.0, "top5": 80.0}, {"step": 10, "epoch": 1.0, "top1": 60.0,
                                                                    "top5": 90.0}]
    both = plot_training(steps + evals, io.BytesIO(), "retrain").getvalue()
    loss_only = plot_training([{k: r[k] for k in ("step", "loss")} for r in steps], io.BytesIO()).getvalue()
    for png in (both, loss_only):
        pixels = _pixels(png)
        assert pixels.shape[:2] == (480, 720)
        assert (pixels[..., :3] < 0.5).mean() > 0.005  # axes, ticks and a curve drawn, not a blank canvas
    # the accuracy panel puts ink right of the middle where the loss-only figure has its single wide axis
    assert not (_pixels(both) == _pixels(loss_only)).all()


def test_images_markdown_embeds_the_file_bytes(tmp_path):
    png = plot_training([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}], tmp_path / "curve.png")
    markdown = images_markdown("Plots", {"curve": png, "again": png.read_bytes()})
    assert embedded_pngs(markdown) == [png.read_bytes()] * 2
    assert f"`{png}`" in markdown  # a file's path is shown under its image


@task
def slow_step(heartbeat_s: float) -> str:
    with progress_reporter("slow", heartbeat_s=heartbeat_s) as progress:
        progress(1, 4, {"loss": 1.5})
        time.sleep(6 * heartbeat_s)  # one long step: nothing reported from the loop
        with get_client(sync_client=True) as client:
            (bar,) = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["slow-progress"])))
        progress(4, 4, {"loss": 0.5})
    return bar.description


@flow
def heartbeat_flow(heartbeat_s: float) -> str:
    route_library_logs()  # as the pipeline's flows do: the library's log lines go to the run's log
    return slow_step(heartbeat_s)


@pytest.mark.usefixtures("prefect_api")
def test_heartbeat_moves_the_bar_and_the_log_during_a_long_step():
    state = heartbeat_flow(0.5, return_state=True)
    during = state.result()
    assert during.startswith("slow: step 1/4 loss 1.5 (still running,") and "s since the last report" in during
    deadline, beats = time.monotonic() + 30, []
    while len(beats) < 3 and time.monotonic() < deadline:  # log lines reach the API in batches
        time.sleep(0.5)
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[
                state.state_details.flow_run_id])))
            (bar,) = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["slow-progress"])))
        beats = [entry.message for entry in logs if "still running" in entry.message]
    assert len(beats) >= 3, beats  # about every 0.5 s of the 3 s step, in the run's own log
    assert bar.data == 100.0 and bar.description == "slow: step 4/4 loss 0.5"
