"""A latency table checked independently: whole networks of another random set of architectures, measured in ONNX
Runtime with the table's own settings, against the table's predictions.

Prints MAPE and Kendall tau of predicted vs measured, the spread of the measured latencies across architectures, and
the run-to-run spread of one architecture measured again (how much of the ordering noise alone can scramble).

    python benchmarks/bench_latency_table.py latency-demo-64px-b1.json [--archs 30] [--seed 1234]
    python benchmarks/bench_latency_table.py --measure --space resnest50   # measure the table first (minutes)
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from pinas.deploy.latency_table import TableSettings, measure_table, onnx_bytes, time_onnx
from pinas.models.backbone import Classifier, build_subnet
from pinas.search.constraints import LatencyTable
from pinas.space import get_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", nargs="?", type=Path)
    parser.add_argument("--measure", action="store_true", help="measure the table first (the command's defaults; "
                        "also when the file does not exist)")
    parser.add_argument("--space", default="demo")
    parser.add_argument("--archs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1234, help="another seed than the command's check uses")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = args.table or Path(f"latency-{args.space}.json")
    started = time.perf_counter()
    if args.measure or not path.exists():
        measure_table(TableSettings(space=args.space), path, validate=30)
        print(f"measured {path} in {time.perf_counter() - started:.0f} s")
    table = json.loads(path.read_text())
    settings = TableSettings.model_validate(table["settings"])
    predict = LatencyTable(table["fixed_ms"], table["layers"])
    space, size = get_space(settings.space), settings.resolved_size()
    shape = (settings.batch, 3, size, size)
    rng = np.random.default_rng(args.seed)
    archs = list(dict.fromkeys(space.sample(rng) for _ in range(args.archs)))
    measured, predicted, models = [], [], {}
    for arch in archs:
        models[arch] = onnx_bytes(Classifier(build_subnet(space, space.format(arch)), settings.num_classes), shape,
                                  settings.opset)
        measured.append(time_onnx(models[arch], shape, settings)["median_ms"])
        predicted.append(predict(arch))
    again = [time_onnx(models[archs[0]], shape, settings)["median_ms"] for _ in range(5)]
    m, p = np.asarray(measured), np.asarray(predicted)
    own = table.get("validation", {})
    print(f"== {path}: {space.name} at {size} px, batch {settings.batch}, {settings.threads} thread(s), "
          f"{settings.provider}; {len(archs)} architectures not in the table's own check (seed {args.seed}); "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"  MAPE {np.mean(np.abs(p - m) / m) * 100:.2f} %, Kendall tau {stats.kendalltau(p, m).statistic:.3f} "
          f"(the table's own check: MAPE {own.get('mape_pct')} %, tau {own.get('kendall_tau')})")
    print(f"  measured {m.min():.3f}-{m.max():.3f} ms (spread {(m.max() - m.min()) / np.median(m) * 100:.1f} % of "
          f"the median); one architecture measured 5 more times: {min(again):.3f}-{max(again):.3f} ms "
          f"({(max(again) - min(again)) / np.median(again) * 100:.1f} %)")
    print(f"  {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
