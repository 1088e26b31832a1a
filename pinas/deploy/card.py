"""The model card of an export: ``model_card.json`` is the source of truth, ``model_card.md`` its readable view."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from pinas import __version__
from pinas.deploy.onnx_export import STAGE_NAMES, StageFeatures
from pinas.io.artifacts import sha256_file
from pinas.models.backbone import Classifier
from pinas.models.cost import count_with_torch


def versions(exporters: set[str]) -> dict[str, str]:
    versions = {"pinas": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__}
    if "dynamo" in exporters:
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    return versions


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_card_md(card: dict[str, Any]) -> str:
    """A human-readable view of ``model_card.json`` (the JSON is the source of truth)."""
    m, ex = card["model"], card["export"]
    lines = [f"# pinas model card: {m['space']} `{m['arch']}`", "",
             f"- search space: `{m['space']}`, architecture `{m['arch']}`",
             f"- {m['num_classes']} classes: {', '.join(m.get('classes') or []) or 'unnamed'}",
             f"- input: {m['input_size']}x{m['input_size']} RGB; params {m['params']:,} ({m['params_m']:.3f} M), "
             f"MACs {m['macs']:,} ({m['gmacs']:.4f} G)",
             f"- exporter `{ex['exporter']}`, opset {ex['opset']}, dynamic batch axis",
             f"- preprocessing: {card['preprocessing']['description']}", "", "## Files", "",
             "| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {name} | {f['bytes']:,} | `{f['sha256']}` |" for name, f in card["files"].items()]
    for title, key in (("Retrain metrics", "retrain_metrics"), ("Transfer metrics", "transfer_metrics")):
        if card.get(key):
            lines += ["", f"## {title}", "", "```json", json.dumps(card[key], indent=2, sort_keys=True), "```"]
    lines += ["", "## Parity (onnxruntime vs torch eager, validation images)", "", "| model | output | max abs diff |",
              "|---|---|---|"]
    for model, rep in card["parity"].items():
        lines += [f"| {model} | {name} | {_fmt(o['max_abs_diff'])} |" for name, o in rep["outputs"].items()]
    agreement = card["parity"]["model"].get("top1_agreement")
    lines += ["", f"Top-1 agreement: {_fmt(agreement)} on {card['parity']['model']['images']} images "
                  f"(tolerance {card['parity']['model']['tolerance_abs']:g})."]
    table = (card.get("latency") or {}).get("table")
    if table:
        s = table["settings"]
        lines += ["", f"## Latency table ({table['path']})", "", f"Predicted for this architecture: "
                  f"{table['predicted_ms']:.3f} ms; the exported model measured with the table's settings "
                  f"({s['provider']}, {s['threads']} thread(s), batch {s['batch']}): {table['measured_ms']:.3f} ms "
                  f"({table['error_pct']:+.1f} %). The table's own check on whole networks: MAPE "
                  f"{table['table_mape_pct']} %, Kendall tau {table['table_kendall_tau']}."]
    lat = card.get("latency")
    if lat and lat.get("batches"):
        lines += ["", f"## CPU latency ({lat['threads']} thread(s), {lat['repeats']} repeats, median [p10, p90] ms)",
                  "", "| batch | backend | median | p10 | p90 | ratio vs torch |", "|---|---|---|---|---|---|"]
        for batch, entry in lat["batches"].items():
            for name, r in entry.items():
                if name.startswith("ratio_"):
                    continue
                ratio = entry.get(f"ratio_{name}", 1.0)
                lines.append(f"| {batch} | {name} | {r['median_ms']:.3f} | {r['p10_ms']:.3f} | {r['p90_ms']:.3f} "
                             f"| {ratio:.3f} |")
    if card.get("int8"):
        q = card["int8"]
        lines += ["", "## int8", "", f"Static QDQ quantisation calibrated on {q['calibration_images']} training "
                  f"images: top-1 fp32 {q['top1_fp32']:.2f}%, int8 {q['top1_int8']:.2f}% "
                  f"(delta {q['top1_delta']:+.2f} points, agreement {q['agreement_int8']:.4f}) "
                  f"on {q['images']} val images."]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in card["versions"].items()), ""]
    return "\n".join(lines)


def build_card(model: Classifier, model_config: dict[str, Any], sample: torch.Tensor, folder: Path, files: list[str],
               **sections: Any) -> dict[str, Any]:
    """The card: the network (params, MACs, classes, the backbone's stage maps on ``sample``), the exported files
    with their digests, library versions and platform, plus the stage's own ``sections`` (parity, latency...)."""
    size = int(model_config["input_size"])
    cost = count_with_torch(model, size)
    with torch.inference_mode():
        maps = StageFeatures(model.backbone).eval()(sample)
    export = sections.get("export", {})
    return {
        "model": {"space": model_config["space"], "arch": model_config["arch"],
                  "num_classes": int(model_config["num_classes"]), "classes": model_config.get("classes"),
                  "input_size": size, "params": cost.params, "macs": cost.macs, "params_m": cost.params_m,
                  "gmacs": cost.gmacs},
        "backbone": {"outputs": {n: {"channels": int(t.shape[1]), "stride": size // int(t.shape[-1])}
                                 for n, t in zip(STAGE_NAMES, maps)},
                     "params": sum(p.numel() for p in model.backbone.parameters())},
        **sections,
        "files": {name: {"sha256": sha256_file(Path(folder) / name), "bytes": (Path(folder) / name).stat().st_size}
                  for name in files},
        "versions": versions({export.get("exporter"), export.get("backbone", {}).get("exporter")}),
        "platform": {"machine": platform.machine(), "processor": platform.processor(), "system": platform.system()},
    }
