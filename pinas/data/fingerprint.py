"""The identity of a dataset folder for cache keys: every file's name, size and modification time, plus the
content digest of its annotation / index files.

Why this much: a cached transfer must not report results for old data, and appending to
``instances_val2017.json`` or renaming a category changes neither a file name nor a file count. Why not more: hashing
every image of ImageNet (1.3 M files, ~150 GB) would take longer than some stages, while one ``stat`` per file is
cheap (``benchmarks/bench_fingerprint.py``: about 1 s per 100,000 files here). Annotation and index files (JSON,
TXT) are hashed, and their digests are kept in a :class:`DigestCache` keyed by (path, size, mtime, ctime, inode),
so a re-run hashes a 450 MB COCO annotation file only when it changed.

A folder written by the demo data generator is identified by its manifest (its content is a function of the spec).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from pinas.io.artifacts import atomic_write_json, sha256_file

#: files whose content decides what a dataset means (annotations, split lists), hashed in full
INDEX_SUFFIXES = (".json", ".txt")
GENERATED_MANIFEST = "manifest.json"


class DigestCache:
    """sha256 of files by (path, size, mtime, ctime, inode), kept in a JSON file between runs (``path=None``:
    memory only)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, str] = {}
        if self.path is not None and self.path.is_file():
            try:
                self._entries = dict(json.loads(self.path.read_text()))
            except (json.JSONDecodeError, TypeError, ValueError):
                self._entries = {}  # a damaged cache only costs a re-hash
        self._dirty = False

    def digest(self, path: str, st: os.stat_result) -> str:
        # ctime too: any write changes it, and unlike mtime no tool sets it back
        key = f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"
        if key not in self._entries:
            self._entries[key] = sha256_file(path)
            self._dirty = True
        return self._entries[key]

    def save(self) -> None:
        if self.path is not None and self._dirty:
            atomic_write_json(self.path, self._entries)
            self._dirty = False


def _walk(folder: str, rel: str, h, cache: DigestCache) -> None:
    """Hash the entries below ``folder`` in name order (one line per entry, one ``update`` per folder)."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    lines, subfolders = [], []
    for entry in entries:
        name = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat()  # follows symlinks: a linked dataset counts as its target's files
        if stat.S_ISDIR(st.st_mode):
            lines.append(f"d {name}\n")
            subfolders.append((entry.path, name))
        elif stat.S_ISREG(st.st_mode):
            digest = cache.digest(entry.path, st) if entry.name.lower().endswith(INDEX_SUFFIXES) else ""
            lines.append(f"f {name} {st.st_size} {st.st_mtime_ns} {digest}\n")
    h.update("".join(lines).encode())
    for path, name in subfolders:
        _walk(path, name, h, cache)


def _generated(root: Path) -> bool:
    """Written by :mod:`pinas.data.demo` (its content is then a function of the manifest's spec)."""
    try:
        manifest = json.loads((root / GENERATED_MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"dataset", "format_version", "spec"} <= set(manifest)


def fingerprint_tree(root: str | os.PathLike, cache: DigestCache | None = None) -> str:
    """sha256 over every file's relative path, size and mtime (and the content of index files) below ``root``."""
    root = Path(root)
    if _generated(root):
        return hashlib.sha256((root / GENERATED_MANIFEST).read_bytes()).hexdigest()
    cache = cache if cache is not None else DigestCache()
    h = hashlib.sha256(f"{root.resolve()}\n".encode())
    _walk(str(root), "", h, cache)
    cache.save()
    return h.hexdigest()
