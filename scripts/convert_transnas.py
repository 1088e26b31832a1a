"""Convert NASLib's TransNAS-Bench-101 micro table (``all_benchmarks_zen.zip``) into the file pinas ships.

    python scripts/convert_transnas.py ../shared/data/transnas-bench-101/all_benchmarks_zen.zip

reads the 35 ``zen/benchmark--transbench101_micro--<task>--<offset>.json`` files and writes
``pinas/bench/data/transnas101_micro.csv.gz``: one row per cell (its six edge operations as digits, in the
benchmark's order), then each task's validation metric and Zen-NAS score, in a fixed task order. Values are written
with ``repr`` (every digit of the source's floats). Provenance and citation: ``pinas/bench/data/README.md``.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

TASKS = ("class_object", "class_scene", "jigsaw", "room_layout", "segmentsemantic", "normal", "autoencoder")
OUT = Path(__file__).resolve().parents[1] / "pinas" / "bench" / "data" / "transnas101_micro.csv.gz"
NAME = re.compile(r"zen/benchmark--transbench101_micro--(\w+)--(\d+)\.json$")


def convert(source: Path, out: Path = OUT) -> str:
    cells: dict[str, dict[str, tuple[float, float]]] = {}
    with zipfile.ZipFile(source) as archive:
        for name in sorted(archive.namelist()):
            match = NAME.match(name)
            if not match:
                continue
            for record in json.loads(archive.read(name)):
                digits = "".join(re.findall(r"\d", record["arch"]))
                cells.setdefault(digits, {})[match.group(1)] = (record["val_accuracy"], record["zen"]["score"])
    if len(cells) != 4 ** 6 or any(set(v) != set(TASKS) for v in cells.values()):
        raise ValueError(f"{source}: expected all 4096 cells on the tasks {TASKS}")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["arch", *TASKS, *(f"zen_{t}" for t in TASKS)])
    for arch in sorted(cells):
        writer.writerow([arch, *(repr(cells[arch][t][0]) for t in TASKS), *(repr(cells[arch][t][1]) for t in TASKS)])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(text.getvalue().encode(), mtime=0))  # mtime 0: the same bytes every time
    return hashlib.sha256(source.read_bytes()).hexdigest()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="all_benchmarks_zen.zip")
    args = parser.parse_args()
    print(f"source sha256 {convert(args.source)}; wrote {OUT}")
