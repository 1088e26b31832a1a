"""How long a dataset fingerprint takes on an ImageNet-sized tree.

Builds a tree of ``--files`` small files (class folders of ``--per-dir`` files, as ImageNet's train/) plus one large
annotation JSON (``--json-mb``, as COCO's), then times, each in a fresh order:

* baseline: ``os.walk`` listing every name (what any fingerprint must at least do);
* cold: :func:`pinas.data.fingerprint.fingerprint_tree` with an empty digest cache (stats every file, hashes the JSON);
* warm: the same with the digest cache of the cold run (a re-run on unchanged data).

Prints seconds, files per second, the ratio to the baseline, and the extrapolation to ImageNet's 1.28 M files.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from pinas.data.fingerprint import DigestCache, fingerprint_tree


def build(root: Path, files: int, per_dir: int, json_mb: int) -> None:
    payload = b"x" * 64
    for i in range(files):
        folder = root / "train" / f"n{i // per_dir:08d}"
        if i % per_dir == 0:
            folder.mkdir(parents=True)
        (folder / f"img_{i:08d}.JPEG").write_bytes(payload)
    (root / "annotations").mkdir()
    records = [{"id": i, "file_name": f"{i:012d}.jpg", "bbox": [1.5, 2.5, 30.0, 40.0]} for i in range(json_mb * 12000)]
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps({"annotations": records}))


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--per-dir", type=int, default=200)
    parser.add_argument("--json-mb", type=int, default=50, help="approximate size of the annotation JSON")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-fingerprint-"))
    try:
        t = timed(lambda: build(root, args.files, args.per_dir, args.json_mb))
        size = (root / "annotations" / "instances_train2017.json").stat().st_size / 2 ** 20
        print(f"tree: {args.files} files in {args.files // args.per_dir} folders + a {size:.0f} MB JSON "
              f"(built in {t:.1f} s); load {os.getloadavg()[0]:.2f}")
        baseline = timed(lambda: sum(len(f) for _, _, f in os.walk(root)))
        cache = DigestCache(root.parent / f"{root.name}-digests.json")
        cold = timed(lambda: fingerprint_tree(root, cache))
        warm = timed(lambda: fingerprint_tree(root, DigestCache(cache.path)))
        for name, seconds in (("os.walk baseline", baseline), ("fingerprint, cold", cold),
                              ("fingerprint, warm", warm)):
            imagenet = seconds * 1.28e6 / args.files
            print(f"{name:<20} {seconds:7.2f} s  {args.files / seconds:10.0f} files/s  "
                  f"{seconds / baseline:5.2f}x baseline  ImageNet (1.28 M files) ~{imagenet:.0f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        Path(f"{root}-digests.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
