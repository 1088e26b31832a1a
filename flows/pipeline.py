"""The pinas pipeline as a Prefect flow: one cached task per stage, records (not tensors) between them.

Each stage task is a few lines: find its folder from the cache key, call the ``pinas`` stage function (which resumes
from its own checkpoints), return the record. Prefect persists the record as JSON under ``<run root>/results`` and
returns it on later runs with the same inputs, after :class:`~flows.caching.StageCachePolicy` has verified the files.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.caching import RESULTS_DIR, StageCachePolicy, stage_dir, stage_key, stage_record, upstream_digests
from flows.ui import metrics_markdown, progress_reporter, publish_markdown, publish_table
from pinas import __version__
from pinas.artifacts import atomic_write_json, check_writable_dir
from pinas.config import PipelineConfig, Profile, load_config, needed_datasets
from pinas.datasets import resolve_datasets
from pinas.supernet_training import run_supernet

log = logging.getLogger("pinas")


def _locate(stage: str, config: Any, upstream: dict[str, dict], run_root: str) -> tuple[str, Path]:
    key = stage_key(stage, config, upstream_digests(upstream))
    return key, stage_dir(run_root, stage, key)


@task(name="data", cache_policy=NO_CACHE)
def data_task(config: Any, run_root: str, needed: tuple[str, ...]) -> dict[str, dict]:
    """Generate the demo datasets, or check the user's folders; returns paths and fingerprints."""
    return resolve_datasets(config, Path(run_root), needed)


@task(name="supernet", cache_policy=StageCachePolicy(), persist_result=True, result_serializer="json")
def supernet_task(stage: str, config: Any, upstream: dict[str, dict], run_root: str) -> dict:
    """Stage 1: unsupervised supernet-Pi training."""
    key, folder = _locate(stage, config, upstream, run_root)
    run_supernet(config, Path(upstream["imagenet"]["path"]) / "train", folder, progress_reporter(stage))
    record = stage_record(stage, folder, key)
    publish_markdown(f"{stage}-summary", metrics_markdown("Supernet-Pi training", record), "supernet summary")
    return record


@flow(name="pinas-pipeline", log_prints=True)
def pinas_pipeline(profile: Profile = "demo", overrides: dict[str, Any] | None = None,
                   config_file: str | None = None, run_root: str = "runs",
                   config: PipelineConfig | None = None) -> dict[str, Any]:
    """Run every built stage of Pi-NAS; finished stages come from the cache.

    Deployments and the UI pass ``profile`` + ``overrides`` (a nested mapping merged over the profile, e.g.
    ``{"data": {"imagenet": "/data/imagenet"}}``) or a ``config_file`` on the worker; the CLI passes ``config``.
    """
    started = time.perf_counter()
    config = config or load_config(config_file, profile, overrides)
    root = check_writable_dir(Path(run_root))
    storage = root / RESULTS_DIR  # a Path: Prefect stores records as <path>/<cache key>
    datasets = data_task(config.data, str(root), needed_datasets(config))
    timings: dict[str, float] = {}

    t = time.perf_counter()
    supernet = supernet_task.with_options(result_storage=storage)(
        "supernet", config.supernet, {"imagenet": datasets["imagenet"]}, str(root))
    timings["supernet"] = round(time.perf_counter() - t, 2)

    summary = {"pinas_version": __version__, "profile": config.profile, "run_root": str(root),
               "datasets": {k: v["path"] for k, v in datasets.items()},
               "stages": {"supernet": supernet}, "seconds": timings,
               "total_seconds": round(time.perf_counter() - started, 2)}
    atomic_write_json(root / "last_run.json", summary)
    publish_table("pipeline-stages", [{"stage": name, "folder": rec["dir"], "seconds": timings.get(name),
                                       **{k: v for k, v in rec["metrics"].items() if not isinstance(v, dict)}}
                                      for name, rec in summary["stages"].items()], "stages of this run")
    return summary
