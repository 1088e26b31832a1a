"""The pinas pipeline as a Prefect flow: one cached task per stage, records (not tensors) between them.

Each stage task is a few lines: find its folder from the cache key, call the ``pinas`` stage function (which resumes
from its own checkpoints), publish what a person wants to see in the UI, return the record. Prefect persists the
record as JSON under ``<run root>/results`` and returns it on later runs with the same inputs, after
:class:`~flows.caching.StageCachePolicy` has verified the files. The three transfers are independent tasks and
run concurrently when submitted.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
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
from pinas.config import SEARCHED, PipelineConfig, Profile, StageName, needed_datasets
from pinas.data.sources import resolve_datasets
from pinas.engine.launch import SINGLE_NODE, Nodes
from pinas.engine.placement import DevicePool
from pinas.io.artifacts import atomic_write_json, check_writable_dir, publish_copy
from pinas.io.locking import hold
from pinas.io.stage_dirs import ExportDir, ProbeDir, RetrainDir, SearchDir, SupernetDir, TransferDir
from pinas.paper import compare_rows
from pinas.preflight import check_run
from pinas.stages.export import run_export
from pinas.stages.linear_probe import run_linear_probe
from pinas.stages.retrain import run_retrain
from pinas.stages.search import run_search
from pinas.stages.supernet import run_supernet
from pinas.stages.transfer import run_transfer_stage

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


def finish_stage(stage: str, title: str, folder: Path, key: str) -> dict:
    record = stage_record(stage, folder, key)
    publish_markdown(f"{stage}-summary", metrics_markdown(title, record), f"{title} summary")
    return record


@task(name="data", cache_policy=NO_CACHE)
def data_task(config: Any, run_root: str, needed: tuple[str, ...]) -> dict[str, dict]:
    """Generate the demo datasets, or check the user's folders; returns paths and fingerprints."""
    return resolve_datasets(config, Path(run_root), needed)


@task(name="preflight", cache_policy=NO_CACHE)
def preflight_task(config: Any, datasets: dict[str, dict], run_root: str) -> None:
    """Every check that can be made before training (settings against the data, the transfer configs)."""
    check_run(config, datasets, Path(run_root))


@task(name="supernet", **STAGE_TASK)
def supernet_task(stage: str, config: Any, upstream: dict[str, dict], run_root: str,
                  nodes: Nodes = SINGLE_NODE) -> dict:
    """Stage 1: unsupervised supernet-Pi training."""
    with claim(stage, config, upstream, run_root) as (key, folder), progress_reporter(stage) as progress:
        run_supernet(config, stage_path(upstream["imagenet"], "train"), folder, progress, nodes)
        publish_training_curves(stage, f"Supernet training ({config.objective})", folder / SupernetDir.STEP_LOG)
        return finish_stage(stage, "Supernet-Pi training", folder, key)


@task(name="linear-probe", **STAGE_TASK)
def probe_task(stage: str, config: Any, upstream: dict[str, dict], run_root: str, nodes: Nodes = SINGLE_NODE) -> dict:
    """The shared linear classifier on the frozen supernet (needed by the linear-probe proxy)."""
    with claim(stage, config, upstream, run_root) as (key, folder), progress_reporter(stage) as progress:
        imagenet = upstream["imagenet"]
        run_linear_probe(config, Path(upstream["supernet"]["dir"]), stage_path(imagenet, "train"), folder,
                         stage_path(imagenet, "val"), progress, nodes)
        publish_training_curves(stage, "Linear probe on the frozen supernet", folder / ProbeDir.STEP_LOG)
        return finish_stage(stage, "Linear probe", folder, key)


@task(name="search", **STAGE_TASK)
def search_task(stage: str, config: Any, upstream: dict[str, dict], run_root: str,
                nodes: Nodes = SINGLE_NODE) -> dict:
    """Stage 2: evolutionary search on the trained supernet."""
    with claim(stage, config, upstream, run_root) as (key, folder), progress_reporter(stage) as progress:
        imagenet = upstream["imagenet"]
        probe = Path(upstream["probe"]["dir"]) if "probe" in upstream else None
        run_search(config, Path(upstream["supernet"]["dir"]), stage_path(imagenet, "train"), folder, probe, progress,
                   rendezvous=nodes)
        record = finish_stage(stage, "Evolutionary search", folder, key)
        result = SearchDir(folder).result()
        publish_table("search-top-k", [{k: v for k, v in c.items() if not isinstance(v, (list, dict))}
                                       for c in result["top_k"]], "search: top-k candidates (params, MACs, proxy)")
        publish_images("search-plots", "Search plots", {"fitness per generation": folder / SearchDir.FITNESS_PLOT,
                                                         "Pareto front": folder / SearchDir.PARETO_PLOT},
                       "search: fitness per generation and the Pareto front")
        return record


@task(name="retrain", **STAGE_TASK)
def retrain_task(stage: str, config: Any, upstream: dict[str, dict], run_root: str,
                 nodes: Nodes = SINGLE_NODE) -> dict:
    """Stage 3: the chosen architecture trained from scratch on ImageNet-format data."""
    with claim(stage, config, upstream, run_root) as (key, folder), progress_reporter(stage) as progress:
        run_retrain(config, Path(upstream["imagenet"]["path"]), folder, progress, rendezvous=nodes)
        publish_training_curves(stage, f"Retraining {config.arch}", folder / RetrainDir.STEP_LOG)
        record = finish_stage(stage, "Retraining", folder, key)
        publish_table("retrain-vs-paper", compare_rows("retrain", record["metrics"], config.space, config.arch),
                      "retrain vs the paper")
        return record


@task(name="transfer", **STAGE_TASK)
def transfer_task(stage: str, config: Any, upstream: dict[str, dict], run_root: str, devices: int = 1) -> dict:
    """Stage 4: one OpenMMLab downstream task on the retrained backbone, on ``devices`` of the node's pool."""
    with claim(stage, config, upstream, run_root) as (key, folder), DEVICE_POOLS[run_root].lease(devices) as ids:
        name = stage.split("-", 1)[1]
        log.info("%s: %s devices %s", stage, DEVICE_POOLS[run_root].kind, ids)
        run_transfer_stage(name, config, Path(upstream["retrain"]["dir"]), Path(upstream[name]["path"]), folder,
                           env=DEVICE_POOLS[run_root].env(ids, config.nproc))
        record = finish_stage(stage, f"Transfer: {name}", folder, key)
        retrained = RetrainDir(upstream["retrain"]["dir"]).model_config()
        publish_table(f"{stage}-vs-paper", compare_rows(name, record["metrics"], retrained["space"],
                                                        retrained["arch"]), f"{name} vs the paper")
        return record


@task(name="export", **STAGE_TASK)
def export_task(stage: str, config: Any, upstream: dict[str, dict], run_root: str) -> dict:
    """Stage 5: ONNX export, onnxruntime parity and latency, model card."""
    with claim(stage, config, upstream, run_root) as (key, folder):
        transfers = {name.split("-", 1)[1]: rec["metrics"] for name, rec in upstream.items()
                     if name.startswith("transfer-")}
        manifest = run_export(config, Path(upstream["retrain"]["dir"]), Path(upstream["imagenet"]["path"]), folder,
                              transfers)
        record = finish_stage(stage, "ONNX export", folder, key)
        # the deployable files, also where people look for them: exports/<run root>-<key>/
        published = publish_copy(folder, [*manifest["files"], "manifest.json"],
                                 EXPORTS_DIR / f"{Path(run_root).name}-{key[:8]}")
        record["published"] = str(published)
        publish_markdown("model-card", ExportDir(folder).card_markdown(), "model card")
        return record


def retrain_config(config: PipelineConfig, search: dict | None) -> Any:
    """The retrain section with the architecture the pipeline chose (the searched best, or ``config.arch``)."""
    arch = search["metrics"]["best_arch"] if config.arch == SEARCHED else config.arch
    return type(config.retrain).model_validate({**config.retrain.model_dump(), "arch": arch})  # canonical form


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

    if torch.cuda.is_available():
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

    The run root and the data must be on a filesystem all nodes share. For each distributed stage in order this
    computes the stage's folder exactly as node 0 does (same config, same upstream digests), joins the torchrun job,
    then waits for node 0's manifest before the next stage (whose inputs it is). Transfers and export run on node 0.
    """
    datasets = resolve_datasets(config.data, Path(root), ("imagenet",))
    imagenet, records = datasets["imagenet"], {}

    def join(stage: str, stage_cfg: Any, upstream: dict[str, dict], launch) -> dict:
        folder = stage_dir(root, stage, key := stage_key(stage, stage_cfg, upstream_digests(upstream)))
        log.info("node %d joins %s in %s", config.nodes.rank, stage, folder)
        launch(folder)
        deadline = time.monotonic() + timeout_s
        while not (folder / "manifest.json").is_file():
            if time.monotonic() > deadline:
                raise TimeoutError(f"node 0 wrote no manifest in {folder} within {timeout_s:.0f} s")
            time.sleep(poll_s)
        records[stage] = stage_record(stage, folder, key)
        return records[stage]

    nodes, train, val = config.nodes, stage_path(imagenet, "train"), stage_path(imagenet, "val")
    up = {"imagenet": imagenet}
    if "supernet" in config.stages:
        join("supernet", config.supernet, up, lambda f: run_supernet(config.supernet, train, f, rendezvous=nodes))
    if "search" in config.stages:
        sup = {**up, "supernet": records["supernet"]}
        probe = None
        if config.search.evaluator.proxy == "linear_probe":
            probe = join("linear-probe", config.linear_probe, sup, lambda f: run_linear_probe(
                config.linear_probe, Path(records["supernet"]["dir"]), train, f, val, rendezvous=nodes))
            sup["probe"] = probe
        join("search", config.search, sup, lambda f: run_search(
            config.search, Path(records["supernet"]["dir"]), train, f, Path(probe["dir"]) if probe else None,
            rendezvous=nodes))
    if "retrain" in config.stages:
        cfg = retrain_config(config, records.get("search"))
        join("retrain", cfg, up, lambda f: run_retrain(cfg, Path(imagenet["path"]), f, rendezvous=nodes))
    return {"pinas_version": __version__, "node_rank": nodes.rank, "run_root": root, "stages": records}


def run_stages(config: PipelineConfig, root: str):
    """The stages of ``config.stages`` in order, each a cached task.

    Returns (records, seconds per stage, datasets, failed): a transfer that fails does not stop the others nor the
    export (which then documents the transfers that finished); ``failed`` names it, its error and its log file.
    """
    storage = Path(root) / RESULTS_DIR  # a Path: Prefect stores each record as <path>/<cache key>
    datasets = data_task(config.data, root, needed_datasets(config))
    preflight_task(config, datasets, root)
    stages: dict[str, dict] = {}
    failed: dict[str, dict] = {}
    seconds: dict[str, float] = {}

    def run(stage: str, fn, stage_config: Any, upstream: dict[str, dict], **extra: Any) -> dict:
        t = time.perf_counter()
        stages[stage] = fn.with_options(result_storage=storage)(stage, stage_config, upstream, root, **extra)
        seconds[stage] = round(time.perf_counter() - t, 2)
        return stages[stage]

    imagenet, nodes = {"imagenet": datasets["imagenet"]}, config.nodes
    if "supernet" in config.stages:
        run("supernet", supernet_task, config.supernet, imagenet, nodes=nodes)
    if "search" in config.stages:
        upstream = {**imagenet, "supernet": stages["supernet"]}
        if config.search.evaluator.proxy == "linear_probe":
            upstream["probe"] = run("linear-probe", probe_task, config.linear_probe, upstream, nodes=nodes)
        run("search", search_task, config.search, upstream, nodes=nodes)
    if "retrain" in config.stages:
        run("retrain", retrain_task, retrain_config(config, stages.get("search")), imagenet, nodes=nodes)
    if "transfer" in config.stages:
        t = time.perf_counter()
        futures = {}
        DEVICE_POOLS[root] = device_pool(config)
        for name, (task_cfg, devices) in config.transfer.placed(DEVICE_POOLS[root]).items():
            stage, upstream = f"transfer-{name}", {"retrain": stages["retrain"], name: datasets[name]}
            futures[stage] = (transfer_task.with_options(result_storage=storage).submit(stage, task_cfg, upstream,
                                                                                        root, devices),
                              stage_dir(root, stage, stage_key(stage, task_cfg, upstream_digests(upstream))))
        for stage, (future, folder) in futures.items():
            future.wait()
            if future.state.is_completed():
                stages[stage] = future.result()
            else:
                error = str(future.state.message or future.state.name).splitlines()[0]
                failed[stage] = {"error": error, "log": str(folder / TransferDir.LOG), "dir": str(folder)}
                log.error("%s failed: %s (log: %s)", stage, error, folder / TransferDir.LOG)
            seconds[stage] = round(time.perf_counter() - t, 2)
    if "export" in config.stages:
        transfers = {k: v for k, v in stages.items() if k.startswith("transfer-")}
        run("export", export_task, config.export, {**imagenet, "retrain": stages["retrain"], **transfers})
    return stages, seconds, datasets, failed
