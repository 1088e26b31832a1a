"""``pinas-pipeline``: run the pipeline (demo profile by default), and tools around it.

    pinas-pipeline run [--config FILE.yaml] [--profile demo|paper] [--run-dir DIR] [--set section.key=value ...]
    pinas-pipeline study [--supernets pi,same_path,spos] [--archs N] [same options as run]
    pinas-pipeline bench transnas [--runs 300] [--budgets 25,50,100,200] [--strategies ...] [--out DIR]
    pinas-pipeline latency-table [--space demo] [--batch 1] [--threads 1] [--provider ...] [--out FILE.json]

Without a configured Prefect server (``PREFECT_API_URL``), Prefect starts a temporary local API for the run.
Bad input (YAML, unknown keys, wrong types, missing dataset folders, an unwritable run root, settings the data
cannot satisfy) is reported in one message naming the field or file, with exit code 2, before Prefect is started
and before anything is trained.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

import flows  # noqa: F401  (sets Prefect's environment before Prefect is imported)
from flows import early_api
from pinas.config import ConfigError, load_config, needed_datasets
from pinas.data.images import DataError
from pinas.data.sources import check_folders, resolve_datasets
from pinas.io.artifacts import RunRootError, check_writable_dir
from pinas.io.locking import FolderBusyError
from pinas.preflight import PreflightError, check_run, check_study
from pinas.space import ArchError
from pinas.stages.graph import BY_NAME, step_names

EXIT_BAD_INPUT = 2
EXIT_STAGE_FAILED = 1


class NoPrefectAPI(RuntimeError):
    """No Prefect API could be reached or started."""


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``["supernet.epochs=2", "data.imagenet=/x"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected section.key=value")
        dotted, raw = pair.split("=", 1)
        node = out
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def _print_summary(summary: dict[str, Any]) -> None:
    if "node_rank" in summary:  # a follower node: node 0 prints the results
        print(f"\npinas {summary['pinas_version']} — node {summary['node_rank']} joined "
              f"{', '.join(summary['stages'])} in {summary['run_root']}")
        return
    print(f"\npinas {summary['pinas_version']} — profile {summary['profile']} — run root {summary['run_root']}")
    for name, record in summary["stages"].items():
        # the metrics worth a line in the terminal (everything is in last_run.json and the stage manifests)
        shown = {k: record["metrics"][k] for k in BY_NAME[record["kind"]].headline if k in record["metrics"]}
        print(f"  {name:<20} {summary['seconds'].get(name, 0):>8.1f} s  {record['dir']}")
        if shown:
            print(f"  {'':<20} {json.dumps(shown)}")
        if "published" in record:
            print(f"  {'':<20} ONNX model and card: {record['published']}")
    print(f"  total {summary['total_seconds']:.1f} s; summary in {Path(summary['run_root']) / 'last_run.json'}")


def flow_parameters(args: argparse.Namespace, profile: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The flow's parameters for what the command line asked: the run's parameters in the UI read the same."""
    return {"profile": profile, "run_root": str(args.run_dir), "overrides": overrides,
            "config_file": str(args.config) if args.config else ""}


def cmd_run(args: argparse.Namespace) -> int:
    overrides = parse_sets(args.set)
    config = load_config(args.config, args.profile, overrides)
    check_writable_dir(args.run_dir)
    check_folders(config.data, needed_datasets(config))
    check_run(config, resolve_datasets(config.data, args.run_dir, needed_datasets(config)), args.run_dir)
    early_api.start()  # the input is good: the temporary API comes up while the pipeline is imported
    from flows.pipeline import StagesFailed, pinas_pipeline  # imports Prefect: once the config is known to be good

    try:
        summary = with_prefect_api(lambda: pinas_pipeline(**flow_parameters(args, config.profile, overrides)))
    except StagesFailed as failed:
        _print_summary(failed.summary)
        for stage, info in failed.summary["failed"].items():
            print(f"pinas-pipeline: {stage} failed: {info['error']}\n  its log: {info['log']}", file=sys.stderr)
        print("pinas-pipeline: the other stages finished; run the same command again to redo only the failed ones",
              file=sys.stderr)
        return EXIT_STAGE_FAILED
    _print_summary(summary)
    return 0


def with_prefect_api(run_flow):
    """``run_flow()``, with Prefect's failure to start its temporary API turned into one line saying what to do."""
    early_api.wait()  # begun once the input was checked, if it was
    try:
        return run_flow()
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        raise NoPrefectAPI(
            "the temporary Prefect API server did not start in time (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="
            f"{os.environ.get('PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS')}; the machine may be busy). Start "
            "one with `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api, or raise that "
            "timeout, then run the same command again") from None


def cmd_study(args: argparse.Namespace) -> int:
    overrides = parse_sets(args.set)
    if args.supernets:
        overrides.setdefault("study", {})["supernets"] = [s.strip() for s in args.supernets.split(",") if s.strip()]
    if args.archs is not None:
        overrides.setdefault("study", {})["archs"] = args.archs
    config = load_config(args.config, args.profile, overrides)
    check_writable_dir(args.run_dir)
    check_folders(config.data, ("imagenet",))
    from flows.study import study_architectures

    try:
        archs = study_architectures(config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    count = f"{len(archs)} architectures" if archs is not None else \
        f"{config.study.archs} architectures (picked by the search proxy once the first supernet is trained)"
    datasets = resolve_datasets(config.data, args.run_dir, ("imagenet",))
    check_study(config, Path(datasets["imagenet"]["path"]))  # before Prefect starts, as a run's pre-flight
    print(f"pinas-pipeline study: {count} x {len(config.study.seeds)} seed(s), supernets "
          f"{', '.join(config.study.supernets)}")
    early_api.start()
    from flows.study import pinas_study

    summary = with_prefect_api(lambda: pinas_study(**flow_parameters(args, config.profile, overrides)))
    print(f"\npinas {summary['pinas_version']} — ranking study — {len(summary['archs'])} architectures, seeds "
          f"{summary['seeds']} — {summary['total_seconds']:.1f} s")
    print(f"  {'supernet':<10} {'proxy':<13} {'Kendall tau [95% CI]':<26} {'Spearman rho [95% CI]':<26} "
          "seed-to-seed tau")
    def num(v, digits=2):
        return "n/a" if v is None else f"{v:+.{digits}f}"

    for r in summary["correlations"]:
        tau = f"{num(r['kendall_tau'], 3)} [{num(r['tau_ci95'][0])}, {num(r['tau_ci95'][1])}]"
        rho = f"{num(r['spearman_rho'], 3)} [{num(r['rho_ci95'][0])}, {num(r['rho_ci95'][1])}]"
        print(f"  {r['supernet']:<10} {r['proxy']:<13} {tau:<26} {rho:<26} {num(r['seed_to_seed_tau'], 3)}")
    noise = summary["retrain_noise"]
    if noise["mean_std"] is not None:
        print(f"  retrain noise: top-1 spread over seeds {noise['mean_std']:.2f} points (mean std), between "
              f"architectures {noise['between_arch_std']:.2f} (std of the seed means); seed-to-seed tau "
              f"{num(noise['seed_to_seed_kendall_tau'], 3)}; ANOVA of top-1 by architecture p = "
              f"{'n/a' if noise['anova_p'] is None else format(noise['anova_p'], '.3g')}")
    print(f"  summary in {Path(summary['run_root']) / 'last_study.json'}; per supernet: "
          + ", ".join(summary["studies"].values()))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from flows.status import format_rows, run_status

    rows = run_status(args.run_dir, step_names(load_config(args.config, args.profile)))
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    profile = load_config(args.config, args.profile).profile  # fail now, not when the first run starts
    from flows.pipeline import pinas_pipeline

    params = {"profile": profile, "run_root": str(args.run_dir.resolve())}
    if args.config:
        params["config_file"] = str(args.config.resolve())
    pinas_pipeline.serve(name=args.name, parameters=params)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pinas-pipeline", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline (the demo profile when no config is given)")
    run.add_argument("--config", type=Path, help="YAML file merged over its profile")
    run.add_argument("--profile", choices=["demo", "paper"], help="profile (default: the file's, else demo)")
    run.add_argument("--run-dir", type=Path, default=Path("runs"), help="run root for stages and cache (./runs)")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one setting, e.g. --set supernet.epochs=2 (repeatable)")
    run.set_defaults(func=cmd_run)
    study = sub.add_parser("study", help="ranking study: retrain N architectures, correlate every proxy with "
                                         "their accuracy, per supernet objective")
    study.add_argument("--config", type=Path, help="YAML file merged over its profile (its study section)")
    study.add_argument("--profile", choices=["demo", "paper"])
    study.add_argument("--run-dir", type=Path, default=Path("runs"))
    study.add_argument("--supernets", help="comma-separated objectives: pi, same_path, spos (study.supernets)")
    study.add_argument("--archs", type=int, help="architectures retrained (study.archs)")
    study.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    study.set_defaults(func=cmd_study)
    status = sub.add_parser("status", help="which stages of a run root are done, cached, running, partial or missing")
    status.add_argument("--run-dir", type=Path, default=Path("runs"))
    status.add_argument("--config", type=Path)
    status.add_argument("--profile", choices=["demo", "paper"])
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    rank = sub.add_parser("rank", help="Kendall tau / Spearman rho between two score files",
                          add_help=False)
    bench = sub.add_parser("bench", help="search strategies on ground truth: bench transnas (TransNAS-Bench-101)",
                           add_help=False)
    bench.add_argument("args", nargs=argparse.REMAINDER, help="see pinas-pipeline bench transnas --help")
    rank.add_argument("args", nargs=argparse.REMAINDER, help="see pinas-pipeline rank --help")
    serve = sub.add_parser("serve", help="serve the pipeline as a long-running deployment (needs a Prefect server)")
    serve.add_argument("--name", default="served", help="deployment name (pinas-pipeline/<name>)")
    serve.add_argument("--config", type=Path)
    serve.add_argument("--profile", choices=["demo", "paper"])
    serve.add_argument("--run-dir", type=Path, default=Path("runs"))
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rank"]:  # its own parser, flags and all
        from pinas.search.ranking import main as rank_main

        return rank_main(argv[1:]) or 0
    if argv[:1] == ["latency-table"]:  # its own parser: a measurement, no Prefect
        from pinas.deploy.latency_table import main as latency_table_main

        return latency_table_main(argv[1:])
    if argv[:1] == ["bench"]:
        if argv[1:2] != ["transnas"]:
            print("pinas-pipeline bench: name the benchmark: pinas-pipeline bench transnas [--help]", file=sys.stderr)
            return EXIT_BAD_INPUT
        from pinas.bench.transnas import main as bench_main

        return bench_main(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    try:
        return args.func(args)
    except (ConfigError, DataError, ArchError, RunRootError, FolderBusyError, FileExistsError, PreflightError,
            NoPrefectAPI) as exc:
        print(f"pinas-pipeline: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
