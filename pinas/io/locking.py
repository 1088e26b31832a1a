"""One live process at a time per folder, with locks the kernel releases when their holder dies.

Two pipeline runs started with the same config on the same run root would train into the same stage folder and
overwrite each other's checkpoints. A stage therefore holds an ``flock`` on ``.<folder>.lock`` (beside the folder)
while it writes there. The kernel drops an ``flock`` when its process exits for any reason, SIGKILL included, so a
crashed run never leaves a stale lock, and "the lock is free" reliably means "its last holder is gone".
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path


class FolderBusyError(RuntimeError):
    """The folder is being written by another live process."""


def lock_file(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def hold(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder``'s lock for the ``with`` block, or raise :class:`FolderBusyError` naming the holder."""
    path = lock_file(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            raise FolderBusyError(f"{folder} is in use by {holder}, probably another run with the same config on "
                                  "this run root; wait for it to finish, or use another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield Path(folder)
    finally:
        os.close(fd)  # releases the lock


def is_held(folder: str | os.PathLike) -> bool:
    """Whether a live process holds ``folder``'s lock now (False when it never had one)."""
    path = lock_file(folder)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
