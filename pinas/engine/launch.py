"""Running a stage entry point in a subprocess, under ``torchrun`` when more than one process is asked for.

A flow task cannot interrupt one long call into torch, and DDP needs one process per device, so multi-process
training runs as ``python -m torch.distributed.run --nproc_per_node N -m <module> ...``. Its output is streamed into
the caller's log line by line and a non-zero exit raises, so Prefect's retries apply.

Across nodes (:class:`Nodes`), every node runs the same command with its own ``--node-rank``; torchrun's static
rendezvous at node 0's address gives global rank ``node_rank * nproc + local_rank``, so a job of 2 nodes x 2
processes computes what 1 node x 4 processes does.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("pinas")


class LaunchError(RuntimeError):
    pass


class Nodes(BaseModel):
    """The machines a distributed stage spans. Every node runs the pipeline with the same config but its ``rank``;
    node 0 writes the stage folders, on a filesystem all nodes share."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(1, ge=1, description="machines; every distributed stage runs nproc processes on each")
    rank: int = Field(0, ge=0, description="this machine's rank (0: the one that writes the results)")
    master_addr: str = Field("127.0.0.1", description="address of node 0, where torchrun's rendezvous listens")
    master_port: int = Field(29500, ge=1, le=65535)

    @model_validator(mode="after")
    def _rank_in_range(self) -> Nodes:
        if self.rank >= self.count:
            raise ValueError(f"rank {self.rank} is not below count {self.count}")
        return self

    def torchrun_args(self, nproc: int) -> list[str]:
        if self.count == 1:
            return ["--standalone", f"--nproc_per_node={nproc}"]
        return [f"--nnodes={self.count}", f"--node_rank={self.rank}", f"--nproc_per_node={nproc}",
                f"--master_addr={self.master_addr}", f"--master_port={self.master_port}"]


SINGLE_NODE = Nodes()


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list in its compressed form: ``gpu[07-09,12],cpu3`` -> ``gpu07``."""
    first = re.match(r"[^,\[]*(\[[^\]]*\])?[^,]*", nodelist.strip()).group(0)
    bracket = re.search(r"\[([^\]]*)\]", first)
    if not bracket:
        return first
    start = re.split(r"[,-]", bracket.group(1))[0]  # the first index, zero padding kept
    return first[:bracket.start()] + start + first[bracket.end():]


def slurm_nodes(env: dict[str, str]) -> dict[str, object]:
    """The node count, this node's rank and node 0's address from Slurm's environment (``srun``), or {} outside
    Slurm. The port is not Slurm's to give: it stays the config's."""
    count = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not count or "SLURM_NODEID" not in env or not nodelist:
        return {}
    return {"count": int(count), "rank": int(env["SLURM_NODEID"]), "master_addr": first_slurm_host(nodelist)}


def run_module(module: str, args: Sequence[str], nproc: int = 1, env: dict[str, str] | None = None,
               log_file: Path | None = None, nodes: Nodes = SINGLE_NODE) -> None:
    """Run ``python -m module args`` (through torchrun for ``nproc > 1`` or several nodes), streaming its output to
    the log (and to ``log_file``, appended, when given)."""
    if nproc > 1 or nodes.count > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", *nodes.torchrun_args(nproc), "-m", module, *args]
    else:
        cmd = [sys.executable, "-m", module, *args]
    log.info("launching: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    assert proc.stdout is not None
    tail: list[str] = []
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") if log_file else contextlib.nullcontext() as copy:
        for line in proc.stdout:
            line = line.rstrip()
            log.info("%s", line)
            if copy:
                copy.write(line + "\n")
            tail = (tail + [line])[-30:]
    if proc.wait() != 0:
        where = f" (full output: {log_file})" if log_file else ""
        causes = [line for line in tail if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)]
        cause = f": {causes[-1]}" if causes else ""
        raise LaunchError(f"{module} exited with code {proc.returncode}{cause}{where}; last lines:\n"
                          + "\n".join(tail))
