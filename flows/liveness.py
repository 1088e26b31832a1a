"""Flow runs whose process died: shown as Crashed instead of Running forever.

A pipeline process killed with SIGKILL (or lost with its machine) cannot tell the Prefect API that it stopped, so
its flow run would stay ``Running`` in the UI. Each pipeline run holds a lock on
``<run root>/flow-runs/.<flow run id>.lock`` (:mod:`pinas.io.locking`; the kernel frees it when the process dies).
The next run on that run root looks at the lock files there: a free lock means a dead process, and when the API
still shows that run ``Running``, it is set to ``Crashed`` with a message naming the run that took over its work.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from pinas.io.locking import hold, is_held, lock_file

log = logging.getLogger("pinas")
FLOW_RUNS_DIR = "flow-runs"


def mark_dead_runs_crashed(run_root: Path, current: UUID) -> list[UUID]:
    """Set the ``Running`` flow runs whose lock under ``run_root`` is free to ``Crashed``; drop the free locks.

    A free lock whose run is no longer ``Running`` (a worker already reported the crash) is only removed.
    """
    crashed = []
    with get_client(sync_client=True) as client:
        for lock in sorted((run_root / FLOW_RUNS_DIR).glob(".*.lock")):
            folder = lock.parent / lock.name[1:-len(".lock")]
            if folder.name == str(current) or is_held(folder):
                continue
            try:
                flow_run = client.read_flow_run(UUID(folder.name))
            except (ValueError, ObjectNotFound):
                flow_run = None  # not a run id, or a run of another Prefect server
            if flow_run is not None and flow_run.state is not None and flow_run.state.is_running():
                client.set_flow_run_state(flow_run.id, Crashed(
                    message=f"its process died (killed or lost); flow run {current} resumed the work from the "
                            f"stages' checkpoints in {run_root}"), force=True)
                log.warning("flow run %s (%s) had died: marked Crashed", flow_run.name, flow_run.id)
                crashed.append(flow_run.id)
            lock.unlink(missing_ok=True)
    return crashed


@contextlib.contextmanager
def alive(run_root: Path, current: UUID) -> Iterator[None]:
    """Hold this run's lock for the ``with`` block, after marking the dead runs of the same run root."""
    mark_dead_runs_crashed(run_root, current)
    folder = run_root / FLOW_RUNS_DIR / str(current)
    try:
        with hold(folder):
            yield
    finally:
        lock_file(folder).unlink(missing_ok=True)  # this run now reports its own end state
