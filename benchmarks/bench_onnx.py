"""onnxruntime vs torch eager CPU latency of a pinas classifier, as a ratio measured in the same run.

Goal: onnxruntime / torch-eager median latency <= 0.7 at batch 1. Each (backend, batch) is timed in its own
process with a fixed thread count (see pinas.deploy.latency), and backends alternate over ``--rounds`` so
background load hits both. Latency does not depend on the weights, so the network is freshly initialised.

    python benchmarks/bench_onnx.py                          # demo space, 64 px
    python benchmarks/bench_onnx.py --space demo resnest50   # + the paper space at 224 px (slow on 2 cores)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pinas.deploy.latency import compare  # noqa: E402
from pinas.deploy.onnx_export import export_onnx  # noqa: E402
from pinas.deploy.quantize import quantize_int8  # noqa: E402
from pinas.models.backbone import Classifier, build_subnet  # noqa: E402
from pinas.space import get_space  # noqa: E402

DEFAULT_ARCH = {"demo": "10-23-31-02", "resnest50": "pinas-cls"}
NUM_CLASSES = {"demo": 5, "resnest50": 1000}
GOAL_BATCH1 = 0.7


def bench_space(name: str, args: argparse.Namespace, work: Path) -> dict:
    space = get_space(name)
    arch = space.format(space.parse(args.arch or DEFAULT_ARCH[name]))
    size = space.input_size
    model = Classifier(build_subnet(space, arch), NUM_CLASSES[name]).eval()
    retrain = work / name
    retrain.mkdir()
    torch.save(model.state_dict(), retrain / "model.pt")
    (retrain / "model_config.json").write_text(json.dumps(
        {"space": name, "arch": arch, "num_classes": NUM_CLASSES[name], "input_size": size}))
    start = time.perf_counter()
    info = export_onnx(model, retrain / "model.onnx", size, ("logits",), args.opset)
    print(f"[{name}] exported {arch} at {size} px with {info['exporter']} (opset {info['opset']}) "
          f"in {time.perf_counter() - start:.1f} s", flush=True)
    onnx_models = {"onnxruntime": retrain / "model.onnx"}
    if args.int8:  # latency only: ranges from random inputs are fine for timing, not for accuracy
        rng = np.random.default_rng(0)
        calib = (rng.standard_normal((4, 3, size, size)).astype(np.float32) for _ in range(2))
        quantize_int8(retrain / "model.onnx", retrain / "model.int8.onnx", calib)
        onnx_models["int8"] = retrain / "model.int8.onnx"
    large = size >= 160
    result = compare(retrain, onnx_models, args.batches, args.threads,
                     args.warmup_224 if large else args.warmup, args.repeats_224 if large else args.repeats,
                     args.rounds)
    result.update(space=name, arch=arch, input_size=size)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", nargs="+", default=["demo"], choices=sorted(DEFAULT_ARCH))
    parser.add_argument("--arch", default=None, help="architecture (default: a mixed one per space)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup-224", type=int, default=1, help="warm-up calls for 224 px spaces")
    parser.add_argument("--repeats-224", type=int, default=5, help="timed calls for 224 px spaces")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians of round medians")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--int8", action="store_true", help="also time a static int8 (QDQ) model")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_onnx.") as tmp:
        for name in args.space:
            results.append(bench_space(name, args, Path(tmp)))
    print(f"\nCPU latency, {args.threads} thread(s), median [p10-p90] ms, medians over {args.rounds} round(s)")
    print(f"{'space':<10} {'batch':>5} {'backend':<12} {'median':>10} {'p10-p90':>20} {'vs torch':>8}")
    ok = True
    for r in results:
        for batch, e in r["batches"].items():
            for name, t in e.items():
                if name.startswith("ratio_"):
                    continue
                ratio = e.get(f"ratio_{name}", 1.0)
                print(f"{r['space']:<10} {batch:>5} {name:<12} {t['median_ms']:>10.2f} "
                      f"{t['p10_ms']:>9.2f}-{t['p90_ms']:<10.2f} {ratio:>8.3f}")
            if batch == "1":
                ok &= e["ratio_onnxruntime"] <= GOAL_BATCH1
    print(f"goal (fp32 onnxruntime/torch <= {GOAL_BATCH1} at batch 1): {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
