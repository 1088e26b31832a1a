"""``pinas-pipeline status``: what a run root holds, read from the files alone (no Prefect server needed).

Every stage folder ``stages/<stage>-<key>`` is one of:
  * **cached**: complete (its manifest verifies) and Prefect holds its record, so the next run skips it;
  * **done**: complete, but without a Prefect record (the next run re-reads it without recomputing);
  * **corrupted**: a manifest whose files are missing or changed (the next run rebuilds it);
  * **running**: not finished, and a live process is training there now (it holds the folder's lock);
  * **partial**: started, not finished, nobody working on it; shown with its last checkpoint (the next run resumes
    from it).
Stages the config asks for that have no folder at all are **missing**.
"""
from __future__ import annotations

import re
from pathlib import Path

from flows.caching import RESULTS_DIR, STAGES_DIR
from pinas.engine.checkpoint import Checkpointer
from pinas.io.artifacts import MANIFEST, ArtifactError, verify_manifest
from pinas.io.locking import is_held
from pinas.io.stage_dirs import SearchDir, TransferDir

_STAGE_DIR = re.compile(r"^(?P<stage>[a-z0-9-]+)-(?P<key>[0-9a-f]{16})$")


def last_checkpoint(folder: Path) -> str | None:
    """The newest resumable state in a stage folder, in whichever form the stage keeps it."""
    ckpts = Checkpointer(folder / "checkpoints").paths()
    if ckpts:
        return ckpts[-1].name
    mmengine = TransferDir(folder).last_checkpoint()  # transfer stages
    if mmengine is not None:
        return mmengine.name
    try:
        state = SearchDir(folder).read_state()
    except ArtifactError:
        return f"{SearchDir.STATE} (unreadable)"
    return f"{SearchDir.STATE} (generation {state.get('generation')})" if state is not None else None


def stage_folders(run_root: Path) -> list[dict]:
    """One row per stage folder of the run root."""
    root = Path(run_root)
    records = {p.name for p in (root / RESULTS_DIR).iterdir()} if (root / RESULTS_DIR).is_dir() else set()
    rows = []
    for folder in sorted((root / STAGES_DIR).glob("*")) if (root / STAGES_DIR).is_dir() else []:
        match = _STAGE_DIR.match(folder.name)
        if not match or not folder.is_dir():
            continue
        row = {"stage": match["stage"], "key": match["key"], "folder": str(folder)}
        if (folder / MANIFEST).is_file():
            try:
                verify_manifest(folder)
                cached = any(r.startswith(match["key"]) for r in records)
                row["state"] = "cached" if cached else "done"
            except ArtifactError as exc:
                row.update(state="corrupted", detail=str(exc))
        else:
            # a live process holds the folder's lock while it trains there; a free lock means it was interrupted
            row.update(state="running" if is_held(folder) else "partial",
                       detail=f"last checkpoint: {last_checkpoint(folder) or 'none yet'}")
        rows.append(row)
    return rows


def run_status(run_root: Path, wanted: list[str]) -> list[dict]:
    """Rows for every stage folder, plus a ``missing`` row for each wanted stage without any folder."""
    rows = stage_folders(run_root)
    present = {r["stage"] for r in rows}
    for stage in wanted:
        if stage not in present and not any(p.startswith(stage + "-") for p in present):
            rows.append({"stage": stage, "state": "missing", "key": "", "folder": ""})
    return rows


def format_rows(rows: list[dict]) -> str:
    if not rows:
        return "no stages yet"
    lines = [f"{'stage':<20} {'state':<10} {'key':<17} detail / folder"]
    for r in rows:
        lines.append(f"{r['stage']:<20} {r['state']:<10} {r['key']:<17} {r.get('detail') or r['folder']}")
    return "\n".join(lines)
