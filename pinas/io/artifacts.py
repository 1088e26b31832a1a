"""Artifacts on disk: atomic writes, content digests and stage manifests.

Every file a stage hands to the next is written to a temporary name in the same folder, fsynced and renamed, so a
crash leaves either the old good file or the new complete one, never a torn file. A stage's ``manifest.json``
records the sha256 of each output; the pipeline trusts a cached stage only when those digests still match.
Tensor artifacts are plain state dicts loaded with ``torch.load(weights_only=True)``: no pickled code crosses a
stage boundary.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pinas import __version__

MANIFEST = "manifest.json"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class ArtifactError(RuntimeError):
    """A stage output that is missing, corrupted, or does not match its manifest."""


class RunRootError(OSError):
    """A run root that cannot be created or written (permissions, read-only or full disk)."""


class ArtifactWriteError(RunRootError):
    """Writing a file in the run root failed (disk full, quota, file size limit, permissions, read-only disk).

    Raised by :func:`atomic_write` with the file's path and the system's reason. Nothing was replaced, so the
    previous version of the file (a good checkpoint, say) is still there and a later run resumes from it.
    """

    def __str__(self) -> str:
        return self.strerror  # the message, without OSError's "[Errno N]" prefix


class _WriteErrorKeeper:
    """A file proxy that remembers the ``OSError`` of a failed ``write``.

    ``torch.save`` reports a failed write as ``RuntimeError: unexpected pos ...``; the kept error lets
    :func:`atomic_write` say what actually happened (``No space left on device``) and where.
    """

    def __init__(self, f: io.BufferedWriter):
        self._f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def check_writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` and prove it is writable, with a message that says what to do when it is not."""
    folder = Path(folder).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise RunRootError(f"run root {folder} is not writable ({exc.strerror or exc}); "
                           "pass --run-dir with a folder you can write to") from exc
    return folder


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    A failing disk (full, over quota or file size limit, read-only, permissions) raises :class:`ArtifactWriteError`
    naming ``path``; the temp file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    tmp, keeper = None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; artifacts get the usual permissions
        with os.fdopen(fd, "wb") as f:
            keeper = _WriteErrorKeeper(f)
            write(keeper)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = keeper.error if keeper is not None and keeper.error is not None else exc
        if isinstance(cause, OSError) and not isinstance(cause, ArtifactWriteError):
            raise ArtifactWriteError(
                cause.errno, f"could not write {path} ({cause.strerror or cause}); nothing was replaced. Free "
                f"space or fix permissions under {path.parent}, then run the same command again: finished stages "
                "come from the cache and the interrupted one resumes from its last checkpoint") from exc
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_tensors(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with an error that names the file when it is missing or corrupted."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ArtifactError(f"{path}: not a readable tensor checkpoint ({type(exc).__name__}: {exc})") from exc


def write_manifest(stage_dir: str | os.PathLike, stage: str, files: list[str], config: dict[str, Any],
                   metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Digest ``files`` (paths relative to ``stage_dir``) and write the stage manifest atomically, last."""
    stage_dir = Path(stage_dir)
    manifest = {
        "stage": stage,
        "pinas_version": __version__,
        "files": {rel: sha256_file(stage_dir / rel) for rel in files},
        "config": config,
        "metrics": metrics or {},
        **(extra or {}),
    }
    atomic_write_json(stage_dir / MANIFEST, manifest)
    return manifest


def read_json(path: str | os.PathLike, missing: str = "missing") -> Any:
    """A JSON file, or :class:`ArtifactError` naming it when it is missing (``missing`` says why) or corrupted."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: corrupted, not valid JSON ({exc})") from exc


def read_manifest(stage_dir: str | os.PathLike) -> dict[str, Any]:
    return read_json(Path(stage_dir) / MANIFEST, "no manifest (the stage did not finish)")


def verify_manifest(stage_dir: str | os.PathLike) -> dict[str, Any]:
    """Return the manifest if every listed file exists with its recorded digest, else raise naming the file."""
    stage_dir = Path(stage_dir)
    manifest = read_manifest(stage_dir)
    for rel, digest in manifest["files"].items():
        path = stage_dir / rel
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (listed in {stage_dir / MANIFEST})")
        actual = sha256_file(path)
        if actual != digest:
            raise ArtifactError(f"{path}: sha256 {actual[:12]}... does not match the manifest's {digest[:12]}...")
    return manifest


def publish_copy(source_dir: str | os.PathLike, files: list[str], dest_dir: str | os.PathLike) -> Path:
    """Copy ``files`` (relative to ``source_dir``) into ``dest_dir``, replacing it as a whole (staged, then renamed)."""
    dest = Path(dest_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for rel in files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(source_dir) / rel, staging / rel)
        staging.chmod(0o777 & ~_UMASK)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
