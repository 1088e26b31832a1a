"""Flow runs whose process died: shown as Crashed instead of Running forever.

A pipeline process killed with SIGKILL (or lost with its machine) cannot tell the Prefect API that it stopped, so
its flow run would stay ``Running`` in the UI. Each pipeline run holds a lock on
``<run root>/flow-runs/.<flow run id>.lock`` (:mod:`pinas.locking`; the kernel frees it when the process dies).
The next run on that run root looks at the ``Running`` pipeline runs that have a lock file there: a free lock
means a dead process, and that run is set to ``Crashed`` with a message naming the run that took over its work.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

from pinas.locking import hold, is_held, lock_file

log = logging.getLogger("pinas")
FLOW_RUNS_DIR = "flow-runs"


def mark_dead_runs_crashed(run_root: Path, flow_name: str, current: UUID) -> list[UUID]:
    """Set the ``Running`` runs of ``flow_name`` whose lock under ``run_root`` is free to ``Crashed``."""
    crashed = []
    with get_client(sync_client=True) as client:
        running = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
        for flow_run in running:
            folder = run_root / FLOW_RUNS_DIR / str(flow_run.id)
            if flow_run.id == current or not lock_file(folder).exists() or is_held(folder):
                continue
            client.set_flow_run_state(flow_run.id, Crashed(
                message=f"its process died (killed or lost); flow run {current} resumed the work from the "
                        f"stages' checkpoints in {run_root}"), force=True)
            lock_file(folder).unlink(missing_ok=True)
            log.warning("flow run %s (%s) had died: marked Crashed", flow_run.name, flow_run.id)
            crashed.append(flow_run.id)
    return crashed


@contextlib.contextmanager
def alive(run_root: Path, flow_name: str, current: UUID) -> Iterator[None]:
    """Hold this run's lock for the ``with`` block, after marking the dead runs of the same run root."""
    mark_dead_runs_crashed(run_root, flow_name, current)
    folder = run_root / FLOW_RUNS_DIR / str(current)
    try:
        with hold(folder):
            yield
    finally:
        lock_file(folder).unlink(missing_ok=True)  # this run now reports its own end state
