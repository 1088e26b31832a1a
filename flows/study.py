"""The ranking study as a Prefect flow: does a supernet rank architectures like their stand-alone accuracy?

For each supernet objective of ``config.study.supernets`` the supernet (and, for the linear-probe proxy, its probe)
is the pipeline's own cached stage task; the study's architectures are retrained stand-alone with the pipeline's
retrain recipe, one cached task per (architecture, seed), at most ``study.concurrency`` at once; then the
``study-<objective>`` stage scores them with every proxy and correlates (:mod:`pinas.stages.study`). Everything is
cached like the pipeline's stages and in the same run root, so a killed study run again keeps every finished
retrain, and a pipeline run's supernet is the study's ``pi`` supernet when the settings agree.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import INPUTS
from prefect.context import FlowRunContext

from flows.caching import RESULTS_DIR
from flows.liveness import alive
from flows.params import flow_config
from flows.pipeline import data_task, run_stage, stage_path
from flows.ui import metrics_markdown, publish_images, publish_markdown, publish_table, route_library_logs
from pinas import __version__
from pinas.config import PipelineConfig, Profile
from pinas.io.artifacts import atomic_write_json, check_writable_dir
from pinas.io.stage_dirs import StudyDir
from pinas.models.supernet_pi import Objective
from pinas.preflight import check_study
from pinas.stages.study import StudyScoreConfig, applicable_proxies, proxy_scores, retrain_step

#: the cost pick's head size: every architecture has the same head, so the order by MACs does not depend on it
PICK_CLASSES = 1000
SUMMARY = "last_study.json"


def study_architectures(config: PipelineConfig) -> list[str] | None:
    """The architectures the study retrains (a bad ``arch_list`` or pick is a ``ValueError`` naming it); None when
    they are picked by the proxy once the first supernet is trained."""
    if config.retrain.space != config.supernet.space:
        raise ValueError(f"study: retrain.space {config.retrain.space!r} differs from supernet.space "
                         f"{config.supernet.space!r}")
    if config.study.picks_by_proxy:
        return None
    return config.study.architectures(config.supernet.space, PICK_CLASSES)


@task(name="study-pick", cache_policy=INPUTS, persist_result=True, result_serializer="json")
def pick_task(config: PipelineConfig, supernet: dict[str, Any], probe: dict[str, Any] | None,
              imagenet: dict[str, Any]) -> list[str]:
    """The proxy pick: the search proxy scores the study's pool on the first supernet; half the architectures
    spread over its range, half random."""
    study = config.study
    pool = study.pool_archs(config.supernet.space)
    scores = proxy_scores(config.search.evaluator, config.search.holdout, Path(supernet["dir"]),
                          stage_path(imagenet, "train"), pool, Path(probe["dir"]) if probe else None)
    return study.architectures(config.supernet.space, PICK_CLASSES, scores)


def publish_study(stage: str, config: StudyScoreConfig, record: dict[str, Any]) -> None:
    """The study's summary and its table of architectures in the UI, read from its folder."""
    title = f"Ranking study: {config.objective} supernet"
    publish_markdown(f"{stage}-summary", metrics_markdown(title, record), f"{title} summary")
    publish_table(f"{stage}-architectures", [
        {"arch": r["arch"], "MMACs": round(r["macs"] / 1e6, 2), "top1_per_seed": [round(t, 2) for t in r["top1"]],
         "top1_mean": round(r["top1_mean"], 2), **{p: round(r[p], 5) for p in config.proxies}}
        for r in StudyDir(record["dir"]).report()["architectures"]], f"{stage}: retrained top-1 and proxy scores")


def correlation_rows(reports: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per (supernet, proxy): tau and rho with their intervals, and the seed-to-seed tau beside them."""
    rows = []
    for objective, report in reports.items():
        noise = report["seed_noise"]["seed_to_seed_kendall_tau"]
        for proxy, c in report["correlations"].items():
            rows.append({"supernet": objective, "proxy": proxy, "n": c["n"], "kendall_tau": _round(c["kendall_tau"]),
                         "tau_ci95": [_round(v) for v in c["kendall_tau_ci95"]],
                         "spearman_rho": _round(c["spearman_rho"]),
                         "rho_ci95": [_round(v) for v in c["spearman_rho_ci95"]], "seed_to_seed_tau": _round(noise)})
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@flow(name="pinas-study", log_prints=True)
def pinas_study(profile: Profile = "demo", run_root: str = "runs", supernets: list[Objective] = [],  # noqa: B006
                archs: int = 0, imagenet: str = "", devices: int = 0, overrides: dict[str, Any] = {},  # noqa: B006
                config_file: str = "") -> dict[str, Any]:
    """Train each supernet of ``study.supernets``, retrain the study's architectures, score and correlate.

    An empty field keeps what the profile (and the config file) say; ``overrides`` is merged last.

    Args:
        profile: demo (generated data, CPU) or paper (ResNeSt-50 space, ImageNet, GPUs).
        run_root: folder of the stages and the cache; a pipeline run's supernet in the same run root is reused.
        supernets: the supernet objectives compared on the same retrained architectures (pi, same_path, spos);
            none selected keeps study.supernets.
        archs: architectures retrained stand-alone (at least 3); 0 keeps study.archs.
        imagenet: ImageNet-format folder (train/ and val/ of class folders): data.imagenet.
        devices: GPUs (processes) per node for the training stages; 0 keeps the profile's.
        overrides: any other settings by section, merged last, e.g. {"study": {"seeds": [0, 1, 2], "concurrency": 2},
            "retrain": {"epochs": 20}}; the sections of pinas.config.PipelineConfig.
        config_file: a YAML file on the worker, merged over the profile before the fields above.
    """
    config = flow_config(locals())  # first: locals() holds exactly the parameters
    started = time.perf_counter()
    route_library_logs()
    root = str(check_writable_dir(Path(run_root)))
    study, storage = config.study, Path(root) / RESULTS_DIR
    picked = study_architectures(config)
    probe_needed = "linear_probe" in study.proxies or (picked is None and config.search.evaluator.proxy ==
                                                         "linear_probe")
    with alive(Path(root), FlowRunContext.get().flow_run.id):
        imagenet = {"imagenet": data_task(config.data, root, ("imagenet",))["imagenet"]}
        check_study(config, Path(imagenet["imagenet"]["path"]))  # before any training
        trained, probes = {}, {}
        for objective in study.supernets:
            cfg = config.supernet.model_copy(update={"objective": objective})
            trained[objective] = run_stage("supernet", "supernet", cfg, imagenet, root, config.nodes)
            if probe_needed:
                probes[objective] = run_stage("linear-probe", "linear-probe", config.linear_probe,
                                              {**imagenet, "supernet": trained[objective]}, root, config.nodes)
        if picked is None:
            first = study.supernets[0]
            picked = pick_task.with_options(result_storage=storage)(config, trained[first], probes.get(first),
                                                                    imagenet["imagenet"])
        retrains = run_retrains(config, picked, imagenet, root)
        records, reports = {}, {}
        for objective, supernet in trained.items():
            score_cfg = StudyScoreConfig(objective=objective, archs=picked, seeds=study.seeds,
                                         proxies=applicable_proxies(study.proxies, objective),
                                         baselines=study.baselines,
                                         evaluator=config.search.evaluator, holdout=config.search.holdout,
                                         bootstrap=study.bootstrap, seed=study.seed)
            upstream = {**imagenet, "supernet": supernet, **retrains}
            if "linear_probe" in study.proxies:
                upstream["linear-probe"] = probes[objective]
            stage = f"study-{objective}"
            records[stage] = run_stage(stage, "study", score_cfg, upstream, root)
            publish_study(stage, score_cfg, records[stage])
            reports[objective] = StudyDir(records[stage]["dir"]).report()
    rows = correlation_rows(reports)
    summary = {"pinas_version": __version__, "profile": config.profile, "run_root": root, "archs": picked,
               "seeds": study.seeds, "correlations": rows,
               "retrain_noise": next(iter(reports.values()))["seed_noise"],  # the same retrains for every supernet
               "studies": {stage: rec["dir"] for stage, rec in records.items()},
               "total_seconds": round(time.perf_counter() - started, 2)}
    atomic_write_json(Path(root) / SUMMARY, summary)
    publish_table("study-correlations", rows, "ranking study: Kendall tau / Spearman rho per supernet and proxy")
    publish_images("study-plots", "Ranking study: proxy score against stand-alone top-1", {
        f"{stage}, {proxy}": Path(rec["dir"]) / StudyDir.scatter(proxy)
        for stage, rec in records.items() for proxy in reports[stage.removeprefix("study-")]["correlations"]
        if proxy not in reports[stage.removeprefix("study-")]["baselines"]},
        "ranking study scatter plots")
    return summary


def run_retrains(config: PipelineConfig, archs: list[str], imagenet: dict[str, dict], root: str) -> dict[str, dict]:
    """Every (architecture, seed) retrained as its own cached task, ``study.concurrency`` at a time; returns the
    records keyed ``retrain-<arch>-s<seed>``. A finished retrain (an earlier study's with the same settings in
    this run root) comes from the cache."""
    study = config.study
    futures, running = {}, []
    for arch in archs:
        for seed in study.seeds:
            cfg = type(config.retrain).model_validate({**config.retrain.model_dump(), "arch": arch, "seed": seed})
            if len(running) >= study.concurrency:
                running.pop(0).wait()
            running.append(future := run_stage("retrain", "retrain", cfg, imagenet, root, config.nodes, submit=True))
            futures[retrain_step(arch, seed)] = future
    return {name: future.result() for name, future in futures.items()}
