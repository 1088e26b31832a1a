"""Running a stage entry point in a subprocess, under ``torchrun`` when more than one process is asked for.

A flow task cannot interrupt one long call into torch, and DDP needs one process per device, so multi-process
training runs as ``python -m torch.distributed.run --nproc_per_node N -m <module> ...``. Its output is streamed into
the caller's log line by line and a non-zero exit raises, so Prefect's retries apply.
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

log = logging.getLogger("pinas")


class LaunchError(RuntimeError):
    pass


def run_module(module: str, args: Sequence[str], nproc: int = 1, env: dict[str, str] | None = None,
               log_file: Path | None = None) -> None:
    """Run ``python -m module args`` (through torchrun for ``nproc > 1``), streaming its output to the log (and to
    ``log_file``, appended, when given)."""
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", module, *args]
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
