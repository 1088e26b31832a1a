"""Stage caching for the Prefect flow: keys from configs and upstream digests, verified before they are trusted.

A stage's cache key is the sha256 of (stage name, the settings its result depends on, the content digests of the
upstream files it reads and the dataset fingerprints, the pinas version). The settings are
:func:`~pinas.stages.common.result_settings` of its config, the rule its checkpoints are checked against too, so a
runtime-only change (workers, logging, the device) is a cache hit or a resume in the same folder. The upstream
digests are each stage folder's :meth:`~pinas.io.stage_dirs.StageDir.handoff_digest` (its hand-off files' content,
not its manifest, which holds wall times), so a stage rebuilt byte-identical keeps every later stage cached. The key
also names the stage's folder, ``<run root>/stages/<stage>-<key>``,
so two configs sharing a run root never touch each other's files, and a crashed run started again with the same
config lands in the same folder and resumes from its checkpoints.

Prefect keeps each task's returned record (paths, digests, metrics; never tensors) in ``<run root>/results/<key>``
and returns it on a later run without running the task. Before that happens, :class:`StageCachePolicy` verifies the
stage folder against its manifest; when a file is missing or its digest differs, it deletes the stale record so
Prefect runs the task again, which rebuilds (or resumes) the stage.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from pydantic import BaseModel

from pinas import __version__
from pinas.io.artifacts import ArtifactError, verify_manifest
from pinas.io.stage_dirs import StageDir
from pinas.stages.common import result_settings

log = logging.getLogger("pinas")
RESULTS_DIR = "results"
STAGES_DIR = "stages"


def stage_key(stage: str, config: Any, upstream: dict[str, Any]) -> str:
    """sha256 over the stage name, its result settings, upstream digests and the pinas version."""
    if isinstance(config, BaseModel):
        config = result_settings(type(config), config.model_dump(mode="json"))
    payload = {"stage": stage, "config": config, "upstream": upstream, "pinas_version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def stage_dir(run_root: str | Path, stage: str, key: str) -> Path:
    return Path(run_root) / STAGES_DIR / f"{stage}-{key[:16]}"


def upstream_digests(upstream: dict[str, dict]) -> dict[str, str]:
    """What of an upstream record enters a key: its hand-off content digest (stages) or fingerprint (datasets)."""
    return {name: rec.get("handoff_sha256") or rec.get("fingerprint") for name, rec in sorted(upstream.items())}


def stage_record(stage: str, folder: StageDir, key: str) -> dict[str, Any]:
    """The small record a task returns: where the stage lives, its files, its metrics, its hand-off digest."""
    manifest = folder.manifest()
    return {"stage": stage, "dir": str(folder.path), "key": key, "handoff_sha256": folder.handoff_digest(),
            "files": {rel: str(folder / rel) for rel in manifest["files"]}, "metrics": manifest.get("metrics", {})}


@dataclass
class StageCachePolicy(CachePolicy):
    """Cache key = :func:`stage_key` of the task's ``stage``, ``config`` and ``upstream`` inputs.

    Side effect, on purpose: if the stage folder for that key exists but fails verification, the stored record is
    removed, so the task runs again instead of handing out paths to broken files.
    """

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        key = stage_key(inputs["stage"], inputs["config"], upstream_digests(inputs["upstream"]))
        folder = stage_dir(inputs["run_root"], inputs["stage"], key)
        record = Path(inputs["run_root"]) / RESULTS_DIR / key
        if record.exists():
            try:
                verify_manifest(folder)
            except ArtifactError as exc:
                log.warning("cached %s is not usable (%s): running the stage again", inputs["stage"], exc)
                record.unlink(missing_ok=True)
        return key
