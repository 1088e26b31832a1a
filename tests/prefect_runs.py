"""Reading a flow run's task states and a run root's flow runs back from the Prefect API (for the tests)."""
from __future__ import annotations

import time
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import FlowRunSort


def task_states(flow_run_id, settle_s: float = 30.0) -> dict[str, str]:
    """The final state of each task run of a flow run.

    Prefect 3 records task-run states from events, asynchronously: just after a flow returns, the API can still show
    a task as ``Running``. Wait (up to ``settle_s``) until every task run shows a final state.
    """
    deadline = time.monotonic() + settle_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        if all(r.state.is_final() for r in runs) or time.monotonic() > deadline:
            return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}
        time.sleep(0.5)


def runs_of(run_root: Path) -> list:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_ASC)
    return [r for r in runs if r.parameters.get("run_root") == str(run_root)]


def artifacts_of(flow_run_id) -> dict[str, object]:
    """The artifacts of a flow run (its tasks' included), by key: their data (Markdown text, table rows...)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a.data for a in artifacts if a.key}


def embedded_pngs(markdown: str) -> list[bytes]:
    """The PNG images embedded as data URIs in a Markdown artifact, decoded."""
    import base64
    import re

    return [base64.b64decode(m) for m in re.findall(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)]
