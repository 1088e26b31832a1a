"""A latency table measured on this machine, in the runtime the model is deployed with (ONNX Runtime).

The search bounds latency with a table: a fixed part (stem and head) plus one entry per (layer, choice), summed over
an architecture's choices. :func:`measure_table` measures each entry *in context*: the layer's block with the
choice fixed, exported to ONNX at the exact input shape the layer sees in the network (batch, channels, size), run
in ONNX Runtime with the execution provider and intra-op thread count asked for, median of ``repeats`` runs after
``warmup``. The table then proves itself (:func:`validate_table`): whole networks of random architectures and of the
space's two extremes are exported and measured the same way, and their measured latency is compared with the sum
the table predicts (mean absolute percentage error, Kendall tau). A table whose error is above ``threshold`` is
marked untrusted, and the search says so where it uses it.

Each entry is measured as its own ONNX Runtime call, which costs something even for an empty model (feeding the
input, launching, fetching the output); the whole network pays that once. So every entry is stored less the cost of
a trivial model at its input shape, and one such call is added to the fixed part.

Measured entries are written to ``<out>.partial.json`` as they come (atomically), so a killed measurement started
again with the same settings measures only what is missing. The finished table is one JSON file with the machine,
the runtime and its versions, the settings and the date in it: measure on the target machine (``pinas-pipeline
latency-table`` there), copy the JSON, point ``search.latency_table`` at it.
"""
from __future__ import annotations

import io
import logging
import os
import platform
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats
from torch import nn

from pinas import __version__
from pinas.deploy.latency import ort_session, summarize
from pinas.io.artifacts import atomic_write_json, read_json
from pinas.models.backbone import Classifier, PiNASBackbone, build_subnet
from pinas.search.constraints import LatencyTable
from pinas.space import SearchSpace, get_space

log = logging.getLogger("pinas")
FORMAT = "pinas-latency-table/1"


class TableSettings(BaseModel):
    """What a table is measured for and with: a table made with other settings is another table."""

    model_config = ConfigDict(extra="forbid")

    space: str = "demo"
    input_size: int | None = Field(None, ge=16, description="image side; default: the space's")
    batch: int = Field(1, ge=1)
    threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads")
    provider: str = Field("CPUExecutionProvider", description="ONNX Runtime execution provider, e.g. "
                                                             "CUDAExecutionProvider")
    num_classes: int = Field(1000, ge=1, description="classifier head counted in the fixed part")
    warmup: int = Field(5, ge=0)
    repeats: int = Field(30, ge=3)
    opset: int = 18

    def resolved_size(self) -> int:
        return self.input_size or get_space(self.space).input_size


def onnx_bytes(module: nn.Module, shape: Sequence[int], opset: int) -> bytes:
    """``module`` (eval) exported at exactly ``shape`` (no dynamic axes: the table is for one batch size)."""
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module.eval(), (torch.randn(*shape),), buf, dynamo=False, opset_version=opset,
                          input_names=["input"])
    return buf.getvalue()


def time_onnx(model: bytes, shape: Sequence[int], settings: TableSettings) -> dict[str, float]:
    """Median (and spread) in ms of ``settings.repeats`` runs of the model after ``settings.warmup``."""
    session = ort_session(model, settings.threads, settings.provider)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)
    for _ in range(settings.warmup):
        session.run(None, {name: x})
    seconds = []
    for _ in range(settings.repeats):
        start = time.perf_counter()
        session.run(None, {name: x})
        seconds.append(time.perf_counter() - start)
    return summarize(seconds, shape[0])


class _Choice(nn.Module):
    def __init__(self, layer: nn.Module, choice: int):
        super().__init__()
        self.layer, self.choice = layer, choice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, self.choice)


class _Call(nn.Module):
    """The cheapest model at a shape: what one ONNX Runtime call costs there before any layer runs (feeding the
    input, launching, fetching the output). Every entry pays it once; the whole network pays it once in all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0


class _Head(nn.Module):
    def __init__(self, fc: nn.Linear):
        super().__init__()
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def layer_shapes(backbone: PiNASBackbone, space: SearchSpace, size: int, batch: int) -> list[tuple[int, ...]]:
    """The input shape of every searchable layer (the same for every choice: a choice changes no output shape)."""
    shapes: list[tuple[int, ...]] = []
    hooks = [layer.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
             for layer in backbone.layers()]
    with torch.no_grad():
        backbone(torch.zeros(batch, 3, size, size), space.default_arch())
    for hook in hooks:
        hook.remove()
    return shapes


def measure_table(settings: TableSettings, out: Path, validate: int = 30, threshold_pct: float = 10.0,
                  seed: int = 0, stop_after: int | None = None) -> dict[str, Any] | None:
    """Measure (or finish measuring) the table for ``settings`` into ``out``; returns it, validated.

    ``stop_after`` returns None after that many new entries, as a killed run would (for tests of resumption).
    """
    space, size = get_space(settings.space), settings.resolved_size()
    partial = out.with_name(out.name + ".partial.json")
    entries: dict[str, dict] = {}
    if partial.is_file():
        saved = read_json(partial)
        if saved.get("settings") == settings.model_dump():
            entries = saved["entries"]
            log.info("latency table: resuming with %d of %d entries measured", len(entries),
                     1 + space.num_layers * space.num_choices)
        else:
            log.warning("latency table: %s was measured with other settings; starting over", partial)
    torch.manual_seed(seed)
    model = Classifier(PiNASBackbone(space), settings.num_classes).eval()
    backbone = model.backbone
    shapes = layer_shapes(backbone, space, size, settings.batch)
    with torch.no_grad():
        final = backbone(torch.zeros(settings.batch, 3, size, size), space.default_arch(), return_stages=True)[-1]
    jobs: list[tuple[str, nn.Module, tuple[int, ...]]] = [("stem", backbone.stem, (settings.batch, 3, size, size)),
                                                          ("head", _Head(model.fc), tuple(final.shape))]
    for i, (layer, shape) in enumerate(zip(backbone.layers(), shapes)):
        jobs += [(f"{i}:{c}", _Choice(layer, c), shape) for c in range(space.num_choices)]
    jobs += [(f"call:{'x'.join(map(str, shape))}", _Call(), shape) for shape in dict.fromkeys(s for _, _, s in jobs)]
    new = 0
    for key, module, shape in jobs:
        if key in entries:
            continue
        entries[key] = {**time_onnx(onnx_bytes(module, shape, settings.opset), shape, settings),
                        "shape": list(shape)}
        new += 1
        log.info("latency table: %s %.3f ms (%d/%d)", key, entries[key]["median_ms"], len(entries), len(jobs))
        atomic_write_json(partial, {"settings": settings.model_dump(), "entries": entries})
        if stop_after is not None and new >= stop_after:
            return None
    def call(entry: dict) -> float:
        return entries[f"call:{'x'.join(map(str, entry['shape']))}"]["median_ms"]

    def in_network(key: str) -> float:
        """An entry less the cost of calling it on its own, floored at 0 (a layer cannot be negative)."""
        return max(entries[key]["median_ms"] - call(entries[key]), 0.0)

    table = {"format": FORMAT, "settings": {**settings.model_dump(), "input_size": size},
             "runtime": "onnxruntime", "machine": machine(), "versions": versions(),
             "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "fixed_ms": round(in_network("stem") + in_network("head") + call(entries["stem"]), 4),
             "layers": [[round(in_network(f"{i}:{c}"), 4) for c in range(space.num_choices)]
                        for i in range(space.num_layers)],
             "entries": entries}
    if validate:
        table["validation"] = validate_table(table, validate, threshold_pct, seed + 1)
    atomic_write_json(out, table)
    partial.unlink(missing_ok=True)
    return table


def validate_table(table: dict[str, Any], count: int, threshold_pct: float, seed: int) -> dict[str, Any]:
    """Whole networks of ``count`` random architectures and the space's fastest and slowest (by the table),
    exported and measured as the entries were; the table's error on them."""
    settings = TableSettings.model_validate(table["settings"])
    predict = LatencyTable(table["fixed_ms"], table["layers"])
    space, size = get_space(settings.space), settings.resolved_size()
    rng = np.random.default_rng(seed)
    layers = np.asarray(table["layers"], float)
    archs = [tuple(int(c) for c in layers.argmin(1)), tuple(int(c) for c in layers.argmax(1))]
    archs += [space.sample(rng) for _ in range(count)]
    archs = list(dict.fromkeys(archs))
    shape = (settings.batch, 3, size, size)
    measured, predicted = [], []
    for n, arch in enumerate(archs):
        network = Classifier(build_subnet(space, space.format(arch)), settings.num_classes)
        measured.append(time_onnx(onnx_bytes(network, shape, settings.opset), shape, settings)["median_ms"])
        predicted.append(predict(arch))
        log.info("latency table check %d/%d: %s predicted %.3f ms, measured %.3f ms", n + 1, len(archs),
                 space.format(arch), predicted[-1], measured[-1])
    m, p = np.asarray(measured), np.asarray(predicted)
    mape = float(np.mean(np.abs(p - m) / m) * 100)
    tau = stats.kendalltau(p, m).statistic
    return {"archs": [space.format(a) for a in archs], "measured_ms": [round(v, 4) for v in measured],
            "predicted_ms": [round(v, 4) for v in predicted], "mape_pct": round(mape, 2),
            "kendall_tau": None if not np.isfinite(tau) else round(float(tau), 4),
            "measured_range_ms": [round(float(m.min()), 4), round(float(m.max()), 4)],
            "threshold_pct": threshold_pct, "trusted": mape <= threshold_pct}


def check_exported(table_path: Path, onnx_path: Path, model_config: dict[str, Any]) -> dict[str, Any]:
    """The table's prediction for an exported architecture beside that ONNX model's latency, measured with the
    table's own runtime settings (the same provider, threads, batch and statistic) on this machine."""
    space = get_space(model_config["space"])
    table = LatencyTable.load(table_path, space)  # refuses a table of another space or input size
    raw = read_json(table_path)
    settings = TableSettings.model_validate(raw.get("settings", {}))
    shape = (settings.batch, 3, space.input_size, space.input_size)
    measured = time_onnx(onnx_path.read_bytes(), shape, settings)["median_ms"]
    predicted = table(space.parse(model_config["arch"]))
    check = raw.get("validation") or {}
    return {"path": str(table_path), "settings": settings.model_dump(), "predicted_ms": round(predicted, 4),
            "measured_ms": round(measured, 4), "error_pct": round((predicted - measured) / measured * 100, 2),
            "table_mape_pct": check.get("mape_pct"), "table_kendall_tau": check.get("kendall_tau"),
            "measured_on": machine()}


def machine() -> dict[str, Any]:
    return {"node": platform.node(), "system": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "load_1min": round(os.getloadavg()[0], 2)}


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"pinas": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="pinas-pipeline latency-table", description=(
        "Measure the search's latency table on this machine in ONNX Runtime, then check it on whole networks."))
    parser.add_argument("--space", default="demo")
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--provider", default="CPUExecutionProvider")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--validate", type=int, default=30, help="random architectures measured whole (0: none)")
    parser.add_argument("--threshold", type=float, default=10.0, help="MAPE %% above which the table is untrusted")
    parser.add_argument("--out", type=Path, default=None, help="default: latency-<space>-<size>px-b<batch>.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = TableSettings(space=args.space, input_size=args.input_size, batch=args.batch, threads=args.threads,
                             provider=args.provider, warmup=args.warmup, repeats=args.repeats)
    out = args.out or Path(f"latency-{settings.space}-{settings.resolved_size()}px-b{settings.batch}.json")
    torch.set_num_threads(1)  # the exports only; the timing is ONNX Runtime's own threads
    table = measure_table(settings, out, args.validate, args.threshold)
    print(f"latency table: {out} (fixed {table['fixed_ms']:.3f} ms + {len(table['layers'])} layers)")
    check = table.get("validation")
    if check:
        print(f"  checked on {len(check['archs'])} whole networks ({check['measured_range_ms'][0]:.3f}-"
              f"{check['measured_range_ms'][1]:.3f} ms measured): MAPE {check['mape_pct']:.2f} %, Kendall tau "
              f"{check['kendall_tau']}; {'trusted' if check['trusted'] else 'NOT trusted'} "
              f"(threshold {check['threshold_pct']:g} %)")
    return 0
