"""What the Prefect UI shows for a run: progress bars for long loops, Markdown summaries, tables.

Artifacts are published only inside a flow or task run; called elsewhere (a plain ``python -m pinas...``), these
helpers do nothing, so the library never depends on Prefect being up.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
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


def progress_reporter(stage: str, min_interval_s: float = 2.0) -> Callable[[int, int, dict], None] | None:
    """A ``progress(done, total, record)`` callback that moves a progress artifact, at most every few seconds."""
    if not _in_run():
        return None
    artifact_id = create_progress_artifact(0.0, key=artifact_key(f"{stage}-progress"),
                                           description=f"{stage}: starting")
    last = [0.0]

    def report(done: int, total: int, record: dict) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < min_interval_s:
            return
        last[0] = now
        shown = ", ".join(f"{k} {v}" for k, v in record.items() if k != "step")
        try:
            update_progress_artifact(artifact_id, 100.0 * done / max(total, 1),
                                     description=f"{stage}: step {done}/{total} {shown}")
        except Exception as exc:  # the UI is a view: a failed update must never stop training
            log.debug("progress update failed: %s", exc)

    return report


def publish_markdown(key: str, markdown: str, description: str) -> None:
    if _in_run():
        create_markdown_artifact(markdown, key=artifact_key(key), description=description)


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    if rows and _in_run():
        create_table_artifact(rows, key=artifact_key(key), description=description)


def metrics_markdown(title: str, record: dict[str, Any]) -> str:
    """A stage record as a short Markdown page: where it lives and its metrics."""
    lines = [f"## {title}", "", f"Folder: `{record['dir']}`", "", "| metric | value |", "|---|---|"]
    for k, v in record.get("metrics", {}).items():
        lines.append(f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |")
    lines += ["", "Files: " + ", ".join(f"`{name}`" for name in record.get("files", {}))]
    return "\n".join(lines)
