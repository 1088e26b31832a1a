"""The README's "Deployments and the Prefect UI" commands, run as written against a fresh Prefect server.

Used by ``tests/test_deployment.py`` (does every documented command work on a fresh server?) and by
``scripts/ui_screenshots.py`` (a server with real runs to photograph). The commands are read from the README's
first ``bash`` block under that heading, so the test and the documentation cannot drift apart. The server gets its
own ``PREFECT_HOME`` (database, profiles) and a free local port: the only change made to the commands is the
README's port 4200 replaced by that port. ``prefect server start`` and ``prefect worker start`` lines run in the
background (their output in ``<logs>/``); every other line runs to completion in the checkout, and one that exits
non-zero stops everything with its output.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

HEADING = "## Deployments and the Prefect UI"
BACKGROUND = ("prefect server start", "prefect worker start")
README_PORT = "4200"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def readme_commands(readme: Path) -> list[str]:
    """The commands of the first ``bash`` block under :data:`HEADING`: comments dropped, ``\\`` lines joined."""
    text = readme.read_text()
    section = text[text.index(HEADING):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands, pending = [], ""
    for line in block.splitlines():
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        command = _strip_comment(line).strip()
        if command:
            commands.append(command)
    return commands


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` inside quotes is kept)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def copy_checkout(repo: Path, dest: Path) -> Path:
    """The files git tracks (and untracked ones it does not ignore) copied to ``dest``: a clean checkout to deploy
    from, so runs write their ``runs/`` and ``exports/`` there, not into the developer's tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = repo / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReadmeDeployment:
    """A fresh server and the README's commands against it; ``with`` stops every background process it started."""

    def __init__(self, checkout: Path, work: Path, venv_bin: Path):
        self.checkout, self.logs = checkout, work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv_bin.parent),
                   PREFECT_HOME=str(work / "prefect-home"), PREFECT_SERVER_API_PORT=str(self.port),
                   PREFECT_SERVER_ANALYTICS_ENABLED="false")
        self.env = env
        self.background: list[subprocess.Popen] = []
        self.flow_runs: dict[str, str] = {}  # 'flow/deployment' -> flow run id, from `prefect deployment run`
        self.transcript: list[str] = []

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def __enter__(self) -> ReadmeDeployment:
        return self

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.background):  # the worker (and its flow runs) before the server
            _stop_group(proc)
        _kill_leftovers(f"PREFECT_HOME={self.env['PREFECT_HOME']}")

    # -------------------------------------------------------------------------------------------- commands
    def run_commands(self, commands: list[str]) -> None:
        for command in commands:
            command = command.replace(f":{README_PORT}", f":{self.port}")
            self.transcript.append(f"$ {command}")
            if command.startswith("export "):
                for assignment in shlex.split(command)[1:]:
                    name, _, value = assignment.partition("=")
                    self.env[name] = os.path.expandvars(value)
            elif command.startswith(BACKGROUND):
                self._start(command)
            else:
                self._run(command)

    def _start(self, command: str) -> None:
        name = "server" if command.startswith("prefect server") else "worker"
        log = open(self.logs / f"{name}.log", "ab")
        self.background.append(subprocess.Popen(["bash", "-c", command], cwd=self.checkout, env=self.env,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        if name == "server":
            self.wait_healthy()

    def _run(self, command: str, timeout_s: float = 300) -> None:
        proc = subprocess.run(["bash", "-c", command], cwd=self.checkout, env=self.env, capture_output=True,
                              text=True, timeout=timeout_s)
        self.transcript.append(proc.stdout + proc.stderr)
        if proc.returncode:
            raise RuntimeError(f"README command exited {proc.returncode}: {command}\n{proc.stdout}\n{proc.stderr}")
        created = re.search(r"UUID: ([0-9a-f-]{36})", proc.stdout)
        if command.startswith("prefect deployment run") and created:
            self.flow_runs[shlex.split(command)[3]] = created.group(1)

    # ------------------------------------------------------------------------------------------------- API
    def api(self, path: str, body: dict | None = None) -> dict | list:
        request = urllib.request.Request(f"{self.api_url}{path}", method="POST" if body is not None else "GET",
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def wait_healthy(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.background[0].poll() is not None:
                raise RuntimeError(f"prefect server exited: {(self.logs / 'server.log').read_text()[-3000:]}")
            try:
                self.api("/health")
                return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"prefect server not healthy on port {self.port} within {timeout_s:.0f} s")

    def flow_run(self, run_id: str) -> dict:
        return self.api(f"/flow_runs/{run_id}")

    def wait_final(self, run_id: str, timeout_s: float) -> dict:
        """The flow run once its state is final (Completed, Failed, Cancelled, Crashed)."""
        deadline = time.monotonic() + timeout_s
        while (run := self.flow_run(run_id))["state"]["type"] not in FINAL:
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {run_id} still {run['state']['name']} after {timeout_s:.0f} s")
            time.sleep(3)
        return run

    def log_tail(self, name: str = "worker", chars: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def _stop_group(proc: subprocess.Popen, grace_s: float = 15) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def processes_with(marker: str) -> list[int]:
    """The processes whose environment holds ``marker`` (e.g. ``PREFECT_HOME=/tmp/x``), this one excepted."""
    needle, found = marker.encode() + b"\0", []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes() + b"\0":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _kill_leftovers(marker: str) -> None:
    """SIGKILL every process whose environment holds ``marker``: flow runs a worker started in sessions of their
    own outlive the worker's process group."""
    for pid in processes_with(marker):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
