"""The pinas pipeline as a Prefect flow: one cached task per stage, records (not tensors) between them.

The steps come from the stage table (:func:`pinas.stages.graph.plan`); each runs as the one generic
:func:`stage_task`, named after its step in the UI: find its folder from the cache key, call the stage's ``run``
(which resumes from its own checkpoints), return the record. Prefect persists the record as JSON under
``<run root>/results`` and returns it on later runs with the same inputs, after
:class:`~flows.caching.StageCachePolicy` has verified the files. What a person wants to see in the UI is published
by the flow from the stage folder (:func:`publish_stage`), so a cached stage shows it too. The transfers are
independent tasks and run concurrently.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from flows.caching import RESULTS_DIR, StageCachePolicy, stage_dir, stage_key, stage_record, upstream_digests
from flows.liveness import alive
from flows.params import flow_config
from flows.ui import (
    metrics_markdown,
    progress_reporter,
    publish_images,
    publish_markdown,
    publish_table,
    publish_training_curves,
    route_library_logs,
)
from pinas import __version__
from pinas.config import PipelineConfig, Profile, StageName, needed_datasets
from pinas.data.sources import resolve_datasets
from pinas.engine.launch import SINGLE_NODE, Nodes
from pinas.engine.placement import DevicePool
from pinas.io.artifacts import atomic_write_json, check_writable_dir, publish_copy
from pinas.io.locking import hold
from pinas.io.stage_dirs import ExportDir, RetrainDir, SearchDir, TransferDir
from pinas.paper import compare_rows
from pinas.preflight import check_run
from pinas.stages.common import StageContext
from pinas.stages.graph import BY_NAME, Step, inputs_from, plan, with_arch

log = logging.getLogger("pinas")
EXPORTS_DIR = Path(os.environ.get("PINAS_EXPORTS_DIR", "exports"))
STAGE_TASK = {"cache_policy": StageCachePolicy(), "persist_result": True, "result_serializer": "json"}


@contextlib.contextmanager
def claim(stage: str, config: Any, upstream: dict[str, dict], run_root: str) -> Iterator[tuple[str, Path]]:
    """(cache key, stage folder) of a stage, the folder locked for this process (another run gets a clear error).

    The key is the same computation the cache policy makes.
    """
    key = stage_key(stage, config, upstream_digests(upstream))
    with hold(stage_dir(run_root, stage, key)) as folder:
        yield key, folder


def stage_path(record: dict, *parts: str) -> Path:
    return Path(record["path"], *parts)


@task(name="data", cache_policy=NO_CACHE)
def data_task(config: Any, run_root: str, needed: tuple[str, ...]) -> dict[str, dict]:
    """Generate the demo datasets, or check the user's folders; returns paths and fingerprints."""
    return resolve_datasets(config, Path(run_root), needed)


@task(name="preflight", cache_policy=NO_CACHE)
def preflight_task(config: Any, datasets: dict[str, dict], run_root: str) -> None:
    """Every check that can be made before training (settings against the data, the transfer configs)."""
    check_run(config, datasets, Path(run_root))


@task(name="stage", **STAGE_TASK)
def stage_task(stage: str, config: Any, upstream: dict[str, dict], run_root: str, kind: str,
               nodes: Nodes = SINGLE_NODE, devices: int = 0) -> dict:
    """One stage of the table (:data:`pinas.stages.graph.STAGES`, row ``kind``) in its keyed folder; ``upstream``
    holds the records of the stages and datasets it reads, ``devices`` > 0 leases that many of the node's pool."""
    row = BY_NAME[kind]
    # a progress bar for the stages that report steps (the transfers log through MMEngine, the export is short)
    reporter = progress_reporter(stage) if row.rank is not None else contextlib.nullcontext(None)
    with claim(stage, config, upstream, run_root) as (key, folder), reporter as progress, \
            lease(run_root, devices, getattr(config, "nproc", None) or 1) as env:
        row.run(config, inputs_from(upstream), folder, StageContext(progress, nodes, env))
        record = {**stage_record(stage, row.folder(folder), key), "kind": kind}
        if row.per_task:
            record["task"] = next(name for name, rec in upstream.items() if "fingerprint" in rec)
        return record


@contextlib.contextmanager
def lease(run_root: str, devices: int, processes: int) -> Iterator[dict[str, str]]:
    """The environment that pins a stage's ``processes`` to ``devices`` of the node's pool (none: no pinning)."""
    if not devices:
        yield {}
        return
    pool = DEVICE_POOLS[run_root]
    with pool.lease(devices) as ids:
        log.info("%s devices %s", pool.kind, ids)
        yield pool.env(ids, processes)


def run_stage(name: str, kind: str, config: Any, upstream: dict[str, dict], root: str, nodes: Nodes = SINGLE_NODE,
              devices: int = 0, submit: bool = False):
    """The stage task of table row ``kind`` as ``name`` in the UI: its record or, with ``submit``, its future."""
    cached = stage_task.with_options(name=name, result_storage=Path(root) / RESULTS_DIR)
    args = (name, config, upstream, root, kind, nodes, devices)
    return cached.submit(*args) if submit else cached(*args)


def step_upstream(step: Step, records: dict[str, dict], datasets: dict[str, dict]) -> dict[str, dict]:
    """The records a step reads: its upstream stages (those that finished) and its datasets."""
    return {**{name: records[name] for name in step.reads if name in records},
            **{name: datasets[name] for name in step.datasets}}


@flow(name="pinas-pipeline", log_prints=True)
def pinas_pipeline(profile: Profile = "demo", run_root: str = "runs", imagenet: str = "", coco: str = "",
                   ade20k: str = "", cityscapes: str = "", devices: int = 0, stages: list[StageName] = [],  # noqa: B006
                   arch: str = "", overrides: dict[str, Any] = {}, config_file: str = "") -> dict[str, Any]:  # noqa: B006
    """Run the stages of Pi-NAS; a stage already finished with the same inputs comes from the cache.

    An empty field keeps what the profile (and the config file) say; ``overrides`` is merged last.

    Args:
        profile: demo (generated data, CPU, minutes) or paper (ResNeSt-50 space, real datasets, GPUs).
        run_root: folder of the stages, the cache and last_run.json, on the machine that runs the flow; the same
            run root and settings resume a stopped run.
        imagenet: ImageNet-format folder (train/ and val/ of class folders): data.imagenet.
        coco: COCO folder (annotations/, train2017/, val2017/): data.coco.
        ade20k: ADE20K folder (images/ and annotations/, each training/ and validation/): data.ade20k.
        cityscapes: Cityscapes folder (leftImg8bit/, gtFine/): data.cityscapes.
        devices: GPUs (processes) per node for every distributed stage; 0 keeps the profile's.
        stages: which of supernet, search, retrain, transfer, export run; none selected runs the profile's.
        arch: an architecture (e.g. 301-3231-203213-032 or pinas-cls) to retrain, transfer and export instead of
            the searched one; empty keeps the profile's (searched).
        overrides: any other settings by section, merged over everything above, e.g.
            {"supernet": {"epochs": 2}, "search": {"population": 20}, "nodes": {"count": 2}}; the sections of
            pinas.config.PipelineConfig: data, supernet, linear_probe, search, retrain, transfer, export, nodes.
        config_file: a YAML file on the worker, merged over the profile before the fields above.
    """
    config = flow_config(locals())  # first: locals() holds exactly the parameters
    started = time.perf_counter()
    route_library_logs()
    root = str(check_writable_dir(Path(run_root)))
    if config.nodes.rank:
        return join_as_follower(config, root)
    with alive(Path(root), FlowRunContext.get().flow_run.id):
        stages, seconds, datasets, failed = run_stages(config, root)
    summary = {"pinas_version": __version__, "profile": config.profile, "run_root": root,
               "datasets": {k: v["path"] for k, v in datasets.items()}, "stages": stages, "seconds": seconds,
               "failed": failed, "total_seconds": round(time.perf_counter() - started, 2)}
    atomic_write_json(Path(root) / "last_run.json", summary)
    publish_table("pipeline-stages", [{"stage": name, "seconds": seconds.get(name), "folder": rec["dir"]}
                                      for name, rec in stages.items()], "stages of this run")
    if failed:
        lines = [f"{stage} failed: {f['error']} (log: {f['log']})" for stage, f in failed.items()]
        publish_markdown("failed-stages", "## Failed stages\n\n" + "\n".join(f"- {line}" for line in lines)
                         + "\n\nRun the same command again: finished stages come from the cache and only these "
                           "run again.\n", "stages that failed")
        raise StagesFailed(summary, "; ".join(lines))
    return summary


#: the device pool the concurrent transfers of a run (by run root) lease from
DEVICE_POOLS: dict[str, DevicePool] = {}


def device_pool(config: PipelineConfig) -> DevicePool:
    """This node's GPUs (``devices`` of them) when the transfers run on CUDA, else its CPU cores."""
    import torch

    if config.transfer.kind() == "cuda":
        if torch.cuda.device_count() < config.devices:
            raise ValueError(f"devices = {config.devices}, but this node has {torch.cuda.device_count()} GPU(s)")
        return DevicePool(config.devices, "cuda")
    return DevicePool(os.cpu_count() or 1, "cpu")


class StagesFailed(RuntimeError):
    """Some independent stages (transfers) failed; the others finished. ``summary`` is the run's summary."""

    def __init__(self, summary: dict[str, Any], message: str):
        super().__init__(message)
        self.summary = summary


def join_as_follower(config: PipelineConfig, root: str, poll_s: float = 1.0,
                     timeout_s: float = 3600.0) -> dict[str, Any]:
    """The pipeline on a node other than 0: its processes join each distributed stage, node 0 writes the results.

    The run root and the data must be on a filesystem all nodes share. For each distributed stage of the table in
    order this computes the stage's folder exactly as node 0 does (same settings, same upstream content), joins the
    torchrun job, then waits for node 0's manifest before the next stage (whose inputs it is). The other stages
    (transfers, export) run on node 0.
    """
    datasets = resolve_datasets(config.data, Path(root), ("imagenet",))
    records: dict[str, dict] = {}
    for step in plan(config):
        if not step.stage.distributed:
            continue
        step = with_arch(step, config, records)
        upstream = step_upstream(step, records, datasets)
        folder = stage_dir(root, step.name, key := stage_key(step.name, step.config, upstream_digests(upstream)))
        log.info("node %d joins %s in %s", config.nodes.rank, step.name, folder)
        step.stage.run(step.config, inputs_from(upstream), folder, StageContext(nodes=config.nodes))
        deadline = time.monotonic() + timeout_s
        while not (folder / "manifest.json").is_file():
            if time.monotonic() > deadline:
                raise TimeoutError(f"node 0 wrote no manifest in {folder} within {timeout_s:.0f} s")
            time.sleep(poll_s)
        records[step.name] = stage_record(step.name, step.stage.folder(folder), key)
    return {"pinas_version": __version__, "node_rank": config.nodes.rank, "run_root": root, "stages": records}


def run_stages(config: PipelineConfig, root: str):
    """The steps of the run (:func:`pinas.stages.graph.plan`) in order, each a cached task; the transfers
    concurrently, sharing the node's devices.

    Returns (records, seconds per stage, datasets, failed): a transfer that fails does not stop the others nor the
    export (which then documents the transfers that finished); ``failed`` names it, its error and its log file.
    Every stage's summary, plots and tables are published from its folder, served from the cache or not.
    """
    datasets = data_task(config.data, root, needed_datasets(config))
    preflight_task(config, datasets, root)
    records: dict[str, dict] = {}
    failed: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    steps = plan(config)
    concurrent = [s for s in steps if s.stage.per_task]
    if concurrent:
        DEVICE_POOLS[root] = device_pool(config)
        placed = config.transfer.placed(DEVICE_POOLS[root])
    for step in steps:
        if step.stage.per_task:
            if step is concurrent[0]:
                run_concurrently(concurrent, placed, records, datasets, root, seconds, failed)
                for done in concurrent:
                    if done.name in records:
                        publish_stage(done, records[done.name], root)
            continue
        step = with_arch(step, config, records)
        started = time.perf_counter()
        nodes = config.nodes if step.stage.distributed else SINGLE_NODE
        records[step.name] = run_stage(step.name, step.stage.name, step.config, step_upstream(step, records, datasets),
                                       root, nodes)
        seconds[step.name] = round(time.perf_counter() - started, 2)
        publish_stage(step, records[step.name], root)
    return records, seconds, datasets, failed


def publish_stage(step: Step, record: dict, root: str) -> None:
    """What a person wants to see of a finished stage, read from its folder, so a stage served from the cache shows
    the same summary, plots and tables as a fresh one. The export's files are also copied where people look for
    them: ``exports/<run root>-<key>/``."""
    folder = step.stage.folder(record["dir"])
    title = f"{step.stage.title}: {step.task}" if step.task else step.stage.title
    publish_markdown(f"{step.name}-summary", metrics_markdown(title, record), f"{title} summary")
    step_log = getattr(folder, "STEP_LOG", None)
    if step_log and (folder / step_log).is_file():
        publish_training_curves(step.name, title, folder / step_log)
    if isinstance(folder, SearchDir):
        result = folder.result()
        publish_table("search-top-k", [{k: v for k, v in c.items() if not isinstance(v, (list, dict))}
                                       for c in result["top_k"]], "search: top-k candidates (params, MACs, proxy)")
        publish_images("search-plots", "Search plots", {"fitness per generation": folder / SearchDir.FITNESS_PLOT,
                                                         "Pareto front": folder / SearchDir.PARETO_PLOT},
                       "search: fitness per generation and the Pareto front")
    if isinstance(folder, (RetrainDir, TransferDir)):  # what was trained: the record, or the transfer's manifest
        trained = folder.model_config() if isinstance(folder, RetrainDir) else folder.manifest()
        against = step.task or "retrain"
        publish_table(f"{step.name}-vs-paper", compare_rows(against, record["metrics"], trained["space"],
                                                            trained["arch"]), f"{against} vs the paper")
    if isinstance(folder, ExportDir):
        record["published"] = str(publish_copy(folder.path, [*record["files"], "manifest.json"],
                                               EXPORTS_DIR / f"{Path(root).name}-{record['key'][:8]}"))
        publish_markdown("model-card", folder.card_markdown(), "model card")


def run_concurrently(steps: list[Step], placed: dict[str, tuple[Any, int]], records: dict[str, dict],
                     datasets: dict[str, dict], root: str, seconds: dict[str, float],
                     failed: dict[str, dict]) -> None:
    """The per-task steps (transfers) at once, each on its lease of the pool; a failure is noted, not raised."""
    started, futures = time.perf_counter(), {}
    for step in steps:
        task_cfg, devices = placed[step.task]
        step = replace(step, config=task_cfg)
        upstream = step_upstream(step, records, datasets)
        folder = stage_dir(root, step.name, stage_key(step.name, step.config, upstream_digests(upstream)))
        futures[step.name] = (run_stage(step.name, step.stage.name, step.config, upstream, root, devices=devices,
                                        submit=True), folder)
    for name, (future, folder) in futures.items():
        future.wait()
        if future.state.is_completed():
            records[name] = future.result()
        else:
            error = str(future.state.message or future.state.name).splitlines()[0]
            failed[name] = {"error": error, "log": str(folder / TransferDir.LOG), "dir": str(folder)}
            log.error("%s failed: %s (log: %s)", name, error, folder / TransferDir.LOG)
        seconds[name] = round(time.perf_counter() - started, 2)
