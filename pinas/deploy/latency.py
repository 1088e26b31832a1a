"""CPU latency of torch eager vs onnxruntime, each backend timed in its own fresh process.

Why subprocesses: on a few shared cores the two runtimes fight over threads (torch's OpenMP pool keeps spinning
after a call, onnxruntime has its own pool), and eager torch under contention swung by 100x here. A fresh
interpreter per (backend, batch) with ``OMP_NUM_THREADS`` and the runtime's own thread setting fixed before
anything is imported gives figures that compare like with like. The child prints one JSON line; this module is
also that child (``python -m pinas.deploy.latency '<json spec>'``). Nothing here imports torch at module level, so an
onnxruntime child never loads it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("torch", "onnxruntime")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class LatencyError(RuntimeError):
    """A timing child process that failed (its stderr tail is in the message)."""


def summarize(seconds: Sequence[float], batch: int) -> dict[str, float]:
    """Median and spread in milliseconds; p10/p90 and the IQR because CPU timings have long upper tails."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p10, p25, p50, p75, p90 = np.percentile(ms, [10, 25, 50, 75, 90])
    return {"batch": batch, "n": int(ms.size), "median_ms": round(float(p50), 4), "p10_ms": round(float(p10), 4),
            "p90_ms": round(float(p90), 4), "iqr_ms": round(float(p75 - p25), 4),
            "mean_ms": round(float(ms.mean()), 4), "min_ms": round(float(ms.min()), 4),
            "median_ms_per_image": round(float(p50) / batch, 4)}


def _time_calls(call: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def _torch_call(spec: dict[str, Any]) -> Callable[[], Any]:
    import torch  # only the torch child loads torch: the onnxruntime child must time onnxruntime alone

    from pinas.io.stage_dirs import RetrainDir

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    folder = RetrainDir(spec["target"])
    model, config = folder.load_classifier(), folder.model_config()
    x = torch.randn(spec["batch"], 3, config["input_size"], config["input_size"])

    def call():
        with torch.inference_mode():
            return model(x)

    return call


def ort_session(model: str | bytes, threads: int, provider: str = "CPUExecutionProvider"):
    """An onnxruntime session for timing: ``threads`` intra-op threads, one inter-op, sequential execution."""
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        raise ValueError(f"ONNX Runtime here has no {provider} (available: "
                         f"{', '.join(ort.get_available_providers())})")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, options, providers=[provider])


def _ort_call(spec: dict[str, Any]) -> Callable[[], Any]:
    session = ort_session(str(spec["target"]), spec["threads"])
    inp = session.get_inputs()[0]
    size = [int(d) for d in inp.shape[1:]]
    x = np.random.default_rng(0).standard_normal((spec["batch"], *size)).astype(np.float32)
    return lambda: session.run(None, {inp.name: x})


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    call = (_torch_call if spec["backend"] == "torch" else _ort_call)(spec)
    result = summarize(_time_calls(call, spec["warmup"], spec["repeats"]), spec["batch"])
    result.update(backend=spec["backend"], threads=spec["threads"], torch_loaded="torch" in sys.modules)
    return result


def measure(backend: str, target: str | Path, batch: int, threads: int = 1, warmup: int = 5, repeats: int = 30,
            timeout: float = 1800) -> dict[str, Any]:
    """Time ``batch``-image forwards of one backend in a fresh process.

    ``target`` is a retrain folder (``model.pt`` + ``model_config.json``) for ``torch`` and an ``.onnx`` file for
    ``onnxruntime``. Inputs are random: latency of these convnets does not depend on pixel values.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    spec = {"backend": backend, "target": str(Path(target).resolve()), "batch": int(batch), "threads": int(threads),
            "warmup": int(warmup), "repeats": int(repeats)}
    env = {**os.environ, **{var: str(threads) for var in _THREAD_VARS}}
    package_root = str(Path(__file__).resolve().parents[2])  # so the child finds pinas even if not installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "pinas.deploy.latency", json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise LatencyError(f"{backend} timing at batch {batch} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(torch_target: str | Path, onnx_targets: dict[str, str | Path], batches: Sequence[int] = (1, 32),
            threads: int = 1, warmup: int = 5, repeats: int = 30, rounds: int = 1) -> dict[str, Any]:
    """Torch eager against each ONNX model (e.g. ``{"onnx": ..., "int8": ...}``) at every batch size.

    Backends alternate within a round, and with ``rounds > 1`` the whole sweep repeats, so a burst of load from
    elsewhere lands on all of them rather than on one. Each figure is the median over rounds of the per-round
    medians; ``ratio_<name>`` is that model's median over torch's (below 1 means onnxruntime is faster).
    """
    per_round: dict[int, dict[str, list[dict]]] = {b: {} for b in batches}
    for _ in range(rounds):
        for batch in batches:
            runs = [("torch", "torch", torch_target)] + [(name, "onnxruntime", p) for name, p in onnx_targets.items()]
            for name, backend, target in runs:
                result = measure(backend, target, batch, threads, warmup, repeats)
                per_round[batch].setdefault(name, []).append(result)
    out: dict[str, Any] = {"threads": threads, "warmup": warmup, "repeats": repeats, "rounds": rounds,
                           "cpu_count": os.cpu_count(), "batches": {}}
    for batch, by_name in per_round.items():
        entry: dict[str, Any] = {}
        for name, results in by_name.items():
            best = sorted(results, key=lambda r: r["median_ms"])[len(results) // 2]
            entry[name] = best if rounds == 1 else {**best, "round_medians_ms": [r["median_ms"] for r in results]}
        for name in onnx_targets:
            entry[f"ratio_{name}"] = round(entry[name]["median_ms"] / entry["torch"]["median_ms"], 4)
        out["batches"][str(batch)] = entry
    return out


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
