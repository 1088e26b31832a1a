"""What the Prefect UI shows for a run: progress bars for long loops, Markdown summaries, tables, plots.

Artifacts are published only inside a flow or task run; called elsewhere (a plain ``python -m pinas...``), these
helpers do nothing, so the library never depends on Prefect being up.
"""
from __future__ import annotations

import base64
import contextlib
import contextvars
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext, TaskRunContext

log = logging.getLogger("pinas")


def route_library_logs(name: str = "pinas") -> None:
    """Send the library's log lines (progress, "resuming at step N", warnings) to the run's logs in the UI.

    Prefect's own setting for this, ``PREFECT_LOGGING_EXTRA_LOGGERS``, works only when it is set before Prefect
    configures logging, and a flow run started by a worker or a served deployment configures it before pinas is
    imported. Copying the handlers of Prefect's ``prefect.extra`` logger at the start of the run, which is what that
    setting does, covers every way a run can start; the level is raised to INFO only when nobody has set one.
    """
    lib = logging.getLogger(name)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in lib.handlers:
            lib.addHandler(handler)
    if lib.level == logging.NOTSET:
        lib.setLevel(logging.INFO)


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def _in_run() -> bool:
    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


@contextlib.contextmanager
def progress_reporter(stage: str, min_interval_s: float = 2.0,
                      heartbeat_s: float = 10.0) -> Iterator[Callable[[int, int, dict], None] | None]:
    """A ``progress(done, total, record)`` callback that moves a progress artifact (at most every few seconds),
    with a heartbeat while the block runs.

    A loop reports between its steps, so one long step, an evaluation, a BN recalibration or a search generation
    scored in one batch would leave the bar and the log silent for minutes. The heartbeat, a daemon thread, fills
    the gaps: whenever ``heartbeat_s`` passed without a report it logs a line and updates the bar's text with the
    last report and how long ago it came, so the UI moves at least every ``heartbeat_s`` whatever ``log_every`` is.
    It runs in a copy of the task's context (Prefect finds the run its logs and artifacts belong to from it).
    """
    if not _in_run():
        yield None
        return
    artifact_id = create_progress_artifact(0.0, key=artifact_key(f"{stage}-progress"),
                                           description=f"{stage}: starting")
    lock, stop = threading.Lock(), threading.Event()
    state = {"done": 0, "total": 0, "text": "starting", "at": time.monotonic(), "shown": 0.0}

    def show(percent: float, description: str) -> None:
        try:
            update_progress_artifact(artifact_id, percent, description=description)
        except Exception as exc:  # the UI is a view: a failed update must never stop training
            log.debug("progress update failed: %s", exc)

    def report(done: int, total: int, record: dict) -> None:
        now = time.monotonic()
        with lock:
            text = f"step {done}/{total} " + ", ".join(f"{k} {_short(v)}" for k, v in record.items() if k != "step")
            state.update(done=done, total=total, text=text.strip(), at=now)
            if done < total and now - state["shown"] < min_interval_s:
                return
            state["shown"] = now
            show(100.0 * done / max(total, 1), f"{stage}: {state['text']}")

    def beat() -> None:
        while not stop.wait(heartbeat_s / 4):
            now = time.monotonic()
            with lock:
                quiet = now - max(state["at"], state["shown"])
                if quiet < heartbeat_s:
                    continue
                state["shown"] = now
                since = f"still running, {now - state['at']:.0f} s since the last report"
                log.info("%s: %s (%s)", stage, since, state["text"])
                show(100.0 * state["done"] / max(state["total"], 1), f"{stage}: {state['text']} ({since})")

    ticker = threading.Thread(target=contextvars.copy_context().run, args=(beat,), daemon=True,
                              name=f"{stage}-heartbeat")
    ticker.start()
    try:
        yield report
    finally:
        stop.set()
        ticker.join()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    if _in_run():
        create_markdown_artifact(markdown, key=artifact_key(key), description=description)


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    if rows and _in_run():
        create_table_artifact(rows, key=artifact_key(key), description=description)


def images_markdown(title: str, images: dict[str, bytes | Path], note: str = "") -> str:
    """Markdown with each PNG (bytes, or a file whose path is shown under it) embedded as a ``data:`` URI, and
    ``note`` at the end.

    The Prefect UI renders these inline; an image artifact would need a URL the browser can reach, and the plot
    files live on the machine that ran the flow.
    """
    lines = [f"## {title}", ""]
    for caption, image in images.items():
        data = image.read_bytes() if isinstance(image, Path) else image
        lines += [f"### {caption}", "", f"![{caption}](data:image/png;base64,{base64.b64encode(data).decode()})", ""]
        if isinstance(image, Path):
            lines += [f"`{image}`", ""]
    return "\n".join(lines + ([note, ""] if note else []))


def publish_images(key: str, title: str, images: dict[str, bytes | Path], description: str, note: str = "") -> None:
    if images and _in_run():
        create_markdown_artifact(images_markdown(title, images, note), key=artifact_key(key),
                                 description=description)


def publish_training_curves(stage: str, title: str, step_log: Path) -> None:
    """The loss (and accuracy) curve of a training stage, drawn from its step log, as an image in the UI."""
    from pinas.engine.steplog import read_step_log
    from pinas.plots import plot_training

    records = read_step_log(step_log)
    if records and _in_run():
        png = plot_training(records, io.BytesIO(), title).getvalue()
        publish_images(f"{stage}-curves", title, {"training curve": png}, f"{stage}: training curves",
                       note=f"Drawn from the step log `{step_log}`.")


def metrics_markdown(title: str, record: dict[str, Any]) -> str:
    """A stage record as a short Markdown page: where it lives and its metrics."""
    lines = [f"## {title}", "", f"Folder: `{record['dir']}`", "", "| metric | value |", "|---|---|"]
    for k, v in record.get("metrics", {}).items():
        lines.append(f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |")
    lines += ["", "Files: " + ", ".join(f"`{name}`" for name in record.get("files", {}))]
    return "\n".join(lines)
