"""A fully cached pipeline re-run from a cold process: its wall time and where it goes.

    python benchmarks/bench_cached_rerun.py [--run-dir DIR] [--repeats 3] [--drop-caches]

Without ``--run-dir`` the demo pipeline first runs into a temporary run root (2.5-4 minutes on 2 cores, not part
of the figures). Then, each in a fresh process:

* imports: ``import flows.cli, flows.pipeline`` (what the CLI loads before it can run anything);
* temporary API: Prefect's temporary server (what runs without ``PREFECT_API_URL``) from import to healthy;
* baseline: an empty Prefect flow run on its own temporary API, the floor any Prefect-based re-run pays;
* re-run: ``pinas-pipeline run --run-dir DIR`` (``--repeats`` times); its ``last_run.json`` gives the flow body and
  the per-stage times (the cache checks: key, manifest verification, record read);
* re-run without the early API start: ``python -m flows.cli run`` (the CLI without the entry point that starts
  Prefect's temporary server while the CLI loads, :mod:`flows.early_api`).

Prints the median of each, the sum of the parts against the wall time (the difference is Prefect's run set-up and
teardown, the server's stop and interpreter exit, less the overlap of the imports with the server's start), the
ratios to the baseline and to the CLI without the early start, and the machine's load. ``--drop-caches`` (root
only) empties the page cache before every measurement: a cold disk as well as a cold process.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVER_START = """
import time
t = time.perf_counter()
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()
server.start(timeout=120)
print(time.perf_counter() - t)
server.stop()
"""
EMPTY_FLOW = "from prefect import flow\nflow(name='empty')(lambda: None)()\n"


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def wall(command: list[str], cold: bool, **kwargs) -> tuple[float, str]:
    if cold:
        drop_caches()
    t = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, **kwargs)
    seconds = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def stage_seconds(seconds: dict[str, float]) -> float:
    """The stages' time: the transfers run side by side, each timed from their common start."""
    transfers = [v for k, v in seconds.items() if k.startswith("transfer-")]
    return sum(v for k, v in seconds.items() if not k.startswith("transfer-")) + max(transfers, default=0.0)


def median_of(repeats: int, fn) -> float:
    return statistics.median(fn() for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, help="a run root whose demo run has finished (default: run one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--drop-caches", action="store_true", help="empty the page cache before each measurement")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the temporary API, as a first user has
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    cli = [str(BIN / "pinas-pipeline"), "run"]
    scratch = None
    if args.run_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="pinas-rerun-"))
        args.run_dir = scratch / "runs"
        print(f"running the demo pipeline into {args.run_dir} first (not timed) ...", flush=True)
        wall([*cli, "--run-dir", str(args.run_dir)], False, env=env)
    python, cold, n = str(BIN / "python"), args.drop_caches, args.repeats
    imports = median_of(n, lambda: wall([python, "-c", "import flows.cli, flows.pipeline"], cold, env=env)[0])
    server = median_of(n, lambda: float(wall([python, "-c", SERVER_START], cold, env=env)[1].split()[-1]))
    baseline = median_of(n, lambda: wall([python, "-c", EMPTY_FLOW], cold, env=env)[0])
    manifests = {m: m.stat().st_mtime_ns for m in args.run_dir.glob("stages/*/manifest.json")}
    reruns, summaries = [], []
    for _ in range(n):
        reruns.append(wall([*cli, "--run-dir", str(args.run_dir)], cold, env=env)[0])
        summaries.append(json.loads((args.run_dir / "last_run.json").read_text()))
    late = median_of(n, lambda: wall([python, "-m", "flows.cli", "run", "--run-dir", str(args.run_dir)], cold,
                                     env=env)[0])
    rerun = statistics.median(reruns)
    body = statistics.median(s["total_seconds"] for s in summaries)
    stages = statistics.median(stage_seconds(s["seconds"]) for s in summaries)
    rebuilt = sorted(m.parent.name for m, t in manifests.items() if m.stat().st_mtime_ns != t)
    load = os.getloadavg()
    parts = imports + server + body
    print(f"\ncached re-run of {args.run_dir} ({'cold page cache' if cold else 'warm page cache'}), median of {n}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print(f"  pinas-pipeline run (wall)          {rerun:6.2f} s   runs: {', '.join(f'{r:.2f}' for r in reruns)}")
    print("  its parts, each measured alone in a fresh process:")
    print(f"    imports (flows.cli, pipeline)    {imports:6.2f} s   (interpreter start included)")
    print(f"    temporary Prefect API start      {server:6.2f} s   (import of the server code included)")
    print(f"    flow body                        {body:6.2f} s   of which the stages' cache checks {stages:.2f} s")
    print(f"    sum {parts:.2f} s; wall - sum {rerun - parts:+.2f} s (run set-up, teardown and exit, less the overlap "
          "of the imports with the server's start)")
    print(f"  without the early API start        {late:6.2f} s   ratio re-run / that {rerun / late:.2f}")
    print(f"  baseline: an empty Prefect flow    {baseline:6.2f} s   ratio re-run / baseline {rerun / baseline:.2f}")
    print(f"  goal <= 15 s: {'met' if rerun <= 15 else 'NOT met'}")
    print(f"  stages rebuilt during the re-runs: {', '.join(rebuilt) or 'none'} ({len(manifests)} stage folders)")
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
