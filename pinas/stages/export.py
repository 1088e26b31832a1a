"""Stage 5: ONNX export of the retrained network, verified against torch, timed, optionally int8, with a model card.

What the stage guarantees, in order:

1. ``model.onnx`` (the classifier) and ``backbone.onnx`` (the four stage maps, for detection / segmentation
   deployment) are exported with a dynamic batch axis, pass ``onnx.checker`` with ``full_check`` and strict shape
   inference, and declare the input shape, so a consumer can validate inputs without running the model.
2. Parity: onnxruntime and torch eager agree on real validation images, decoded exactly like the retrain
   evaluation. Exceeding ``tolerance_abs`` or falling below ``min_top1_agreement`` fails the stage
   (:class:`ParityError`): a silently wrong export is worse than none.
3. Optional int8 (onnxruntime static QDQ quantisation calibrated on training images), with top-1 of fp32 and
   int8 on the same validation images. Off by default: it costs a second pass over ``eval_images``, its speed-up
   depends on the CPU, and whether its accuracy delta is acceptable is the user's call. Dynamic quantisation is
   not offered: for these convolution nets it is slower than fp32 (ConvInteger kernels; measured figures in
   ``docs/measurements.md``).
4. Latency of torch eager vs onnxruntime (and int8) at fixed thread counts, each in its own process
   (:mod:`pinas.deploy.latency`).
5. ``model_card.json`` / ``model_card.md`` and the stage manifest (digests of every file, config, metrics).

Every step reads the retrain's preprocessing record (:class:`pinas.data.preprocess.EvalPreprocessing`) and writes
it into the ONNX metadata, where the torch-free predictor finds it.

The dynamo exporter (torch 2.13's default, needs onnxscript) is tried first; the TorchScript exporter is a
fallback with ``exporter="auto"``, and the card records which one produced the files and why.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from pinas.data.preprocess import EvalPreprocessing
from pinas.deploy.errors import ExportError
from pinas.deploy.predict import META_CLASSES, META_PREPROCESS
from pinas.io.artifacts import MANIFEST, ArtifactError, atomic_write_bytes, atomic_write_json, sha256_file
from pinas.io.stage_dirs import ExportDir, RetrainDir, TransferDir
from pinas.stages.common import NO_CONTEXT, StageConfig, StageContext, StageInputs


class ExportConfig(StageConfig):
    """Settings of the export stage (one section of the pipeline config)."""

    opset: int = Field(18, ge=13, le=23, description="ONNX opset; 18 is the dynamo exporter's native opset and "
                                                     "runs on onnxruntime >= 1.14")
    exporter: Literal["auto", "dynamo", "torchscript"] = Field(
        "auto", description="auto: dynamo, falling back to the TorchScript exporter if dynamo fails")
    tolerance_abs: float = Field(1e-3, gt=0, description="max |onnxruntime - torch| allowed on any output")
    min_top1_agreement: float = Field(0.98, ge=0, le=1, description="fraction of images with the same top-1")
    parity_images: int = Field(64, ge=1, description="validation images for the parity check")
    latency_batches: tuple[int, ...] = Field((1, 32), description="batch sizes timed; empty skips timing")
    threads: int = Field(1, ge=1, description="intra-op threads of both runtimes (timing, parity, accuracy)")
    warmup: int = Field(5, ge=0)
    repeats: int = Field(30, ge=1)
    int8: bool = Field(False, description="also write model.int8.onnx (static QDQ quantisation)")
    calibration_images: int = Field(256, ge=1, description="training images that calibrate int8 ranges")
    eval_images: int = Field(1000, ge=1, description="validation images for the fp32 vs int8 top-1 comparison")
    latency_table: str | None = Field(None, description="a latency table (pinas-pipeline latency-table): the card "
                                      "puts its prediction for this architecture beside the exported model's "
                                      "latency measured with the table's own runtime settings")


@dataclass
class ExportInputs:
    """What the steps of an export share: the retrained network, its record, and the images parity runs on."""

    retrain: RetrainDir
    model: Any
    model_config: dict[str, Any]
    preprocessing: EvalPreprocessing
    images: torch.Tensor
    meta: dict[str, str]
    val_dir: Path
    train_dir: Path


def run_export(cfg: ExportConfig, retrain_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
               transfer_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export, verify, time and document a retrained classifier (the steps of the module docstring); returns the
    stage manifest. ``data_dir`` is the ImageNet-format root: ``val/<class>/*`` for parity (and the int8
    comparison), ``train/<class>/*`` for int8 calibration. ``out_dir`` is conventionally ``exports/<run>/``.
    """
    inputs = load_inputs(cfg, Path(retrain_dir), Path(data_dir))
    folder = ExportDir(out_dir)
    folder.path.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # a re-run that fails must not leave the old run looking complete
    exported = export_and_check(cfg, inputs, folder)
    int8 = export_int8(cfg, inputs, folder) if cfg.int8 else None
    latency = time_runtimes(cfg, inputs, folder) if cfg.latency_batches else None
    if cfg.latency_table:
        from pinas.deploy.latency_table import check_exported

        latency = {**(latency or {}), "table": check_exported(Path(cfg.latency_table), folder / ExportDir.MODEL,
                                                              inputs.model_config)}
    files = [ExportDir.MODEL, ExportDir.BACKBONE] + ([ExportDir.INT8] if int8 else [])
    return write_card(cfg, inputs, folder, files, exported, int8, latency, transfer_metrics or {})

def run(cfg: ExportConfig, inputs: StageInputs, out_dir: Path, ctx: StageContext = NO_CONTEXT) -> dict:
    """The pipeline's entry (:mod:`pinas.stages.graph`): the retrained network, checked on ``imagenet``; the
    finished transfers' metrics go into the model card."""
    transfers = {task: TransferDir(path).manifest()["metrics"] for task, path in inputs.transfers.items()}
    return run_export(cfg, inputs.stage("retrain"), inputs.dataset("imagenet"), out_dir, transfers)


def load_inputs(cfg: ExportConfig, retrain_dir: Path, data_dir: Path) -> ExportInputs:
    """The retrained network and its record, and the parity images decoded with its preprocessing; checked before
    anything is written."""
    from pinas.deploy.parity import eval_dataset, iter_batches

    val_dir, train_dir = data_dir / "val", data_dir / "train"
    if not val_dir.is_dir():
        raise ExportError(f"{val_dir}: validation folder not found (expected {val_dir}/<class>/<image>)")
    if cfg.int8 and not train_dir.is_dir():
        raise ExportError(f"{train_dir}: training folder not found; int8=True calibrates on training images")
    retrain = RetrainDir(retrain_dir)
    try:
        model, mcfg, preprocessing = retrain.load_classifier(), retrain.model_config(), retrain.preprocessing()
    except ArtifactError as exc:
        raise ExportError(str(exc)) from exc
    parity_set = eval_dataset(val_dir, preprocessing, cfg.parity_images)
    if mcfg.get("classes") is not None and list(mcfg["classes"]) != parity_set.classes:
        raise ExportError(f"{val_dir}: classes {parity_set.classes} do not match the model's "
                          f"{mcfg['classes']} ({retrain / RetrainDir.MODEL_CONFIG})")
    meta = {META_PREPROCESS: json.dumps(preprocessing.to_dict()),
            META_CLASSES: json.dumps(mcfg.get("classes") or [str(i) for i in range(int(mcfg["num_classes"]))]),
            "pinas.space": mcfg["space"], "pinas.arch": mcfg["arch"]}
    images = torch.cat([x for x, _ in iter_batches(parity_set, preprocessing)])
    return ExportInputs(retrain, model, mcfg, preprocessing, images, meta, val_dir, train_dir)


def export_and_check(cfg: ExportConfig, inputs: ExportInputs, folder: ExportDir) -> dict[str, Any]:
    """Steps 1 and 2: the classifier and the backbone exported and checked, each against torch eager."""
    from pinas.deploy.onnx_export import STAGE_NAMES, StageFeatures, export_onnx
    from pinas.deploy.parity import check_parity

    size, meta = inputs.preprocessing.crop, inputs.meta
    info = export_onnx(inputs.model, folder / ExportDir.MODEL, size, ("logits",), cfg.opset, cfg.exporter, meta)
    parity = {"model": check_parity(folder / ExportDir.MODEL, inputs.model, inputs.images, cfg.tolerance_abs,
                                    cfg.min_top1_agreement, cfg.threads)}
    features = StageFeatures(inputs.model.backbone).eval()
    info["backbone"] = export_onnx(features, folder / ExportDir.BACKBONE, size, STAGE_NAMES, cfg.opset,
                                   cfg.exporter, {k: v for k, v in meta.items() if k != META_CLASSES})
    parity["backbone"] = check_parity(folder / ExportDir.BACKBONE, features, inputs.images, cfg.tolerance_abs,
                                      threads=cfg.threads)
    return {"export": info, "parity": parity}


def export_int8(cfg: ExportConfig, inputs: ExportInputs, folder: ExportDir) -> dict[str, Any]:
    """Step 4: static int8 calibrated on training images; top-1 of fp32 and int8 on the same validation images."""
    from pinas.deploy.quantize import calibration_batches, compare_accuracy, quantize_int8

    int8 = quantize_int8(folder / ExportDir.MODEL, folder / ExportDir.INT8,
                         calibration_batches(inputs.train_dir, inputs.preprocessing, cfg.calibration_images),
                         inputs.meta)
    int8.update(compare_accuracy({"fp32": folder / ExportDir.MODEL, "int8": folder / ExportDir.INT8},
                                 inputs.val_dir, inputs.preprocessing, cfg.eval_images, cfg.threads))
    int8["top1_delta"] = round(int8["top1_int8"] - int8["top1_fp32"], 4)  # percentage points
    return int8


def time_runtimes(cfg: ExportConfig, inputs: ExportInputs, folder: ExportDir) -> dict[str, Any]:
    """Step 3: torch eager against onnxruntime (and int8), each in processes of their own."""
    from pinas.deploy.latency import compare

    models = {"onnxruntime": folder / ExportDir.MODEL}
    if (folder / ExportDir.INT8).is_file() and cfg.int8:
        models["int8"] = folder / ExportDir.INT8
    return compare(inputs.retrain.path, models, cfg.latency_batches, cfg.threads, cfg.warmup, cfg.repeats)


def write_card(cfg: ExportConfig, inputs: ExportInputs, folder: ExportDir, files: list[str], exported: dict,
               int8: dict | None, latency: dict | None, transfer_metrics: dict[str, Any]) -> dict[str, Any]:
    """Step 5: the model card (JSON and Markdown) and the stage manifest."""
    from pinas.deploy.card import build_card, render_card_md

    retrain = inputs.retrain
    metrics_in = {k: v for k, v in retrain.metrics().items() if not isinstance(v, (list, dict))}
    preprocessing = {**inputs.preprocessing.to_dict(), "color": "RGB", "layout": "NCHW float32",
                     "description": inputs.preprocessing.describe()}
    card = build_card(inputs.model, inputs.model_config, inputs.images[:1], folder.path, files,
                      preprocessing=preprocessing, retrain_metrics=metrics_in, transfer_metrics=transfer_metrics,
                      export=exported["export"], parity=exported["parity"], latency=latency, int8=int8,
                      source={"retrain_dir": str(retrain.path), "model.pt": sha256_file(retrain / RetrainDir.MODEL)})
    atomic_write_json(folder / ExportDir.CARD_JSON, card)
    atomic_write_bytes(folder / ExportDir.CARD_MD, render_card_md(card).encode())
    parity, info = exported["parity"], exported["export"]
    metrics = {"opset": info["opset"], "exporter": info["exporter"],
               "parity_max_abs_diff": parity["model"]["max_abs_diff"],
               "backbone_parity_max_abs_diff": parity["backbone"]["max_abs_diff"],
               "top1_agreement": parity["model"]["top1_agreement"], "params": card["model"]["params"],
               "macs": card["model"]["macs"]}
    if latency and "table" in latency:
        metrics.update(latency_table_predicted_ms=latency["table"]["predicted_ms"],
                       latency_table_measured_ms=latency["table"]["measured_ms"])
    for batch, entry in (latency or {}).get("batches", {}).items():
        metrics[f"latency_ms_torch_b{batch}"] = entry["torch"]["median_ms"]
        metrics[f"latency_ms_onnxruntime_b{batch}"] = entry["onnxruntime"]["median_ms"]
        metrics[f"latency_ratio_b{batch}"] = entry["ratio_onnxruntime"]
    if int8:
        metrics.update(top1_fp32=int8["top1_fp32"], top1_int8=int8["top1_int8"], top1_delta_int8=int8["top1_delta"])
    handed = {"model.pt": card["source"]["model.pt"],
              "model_config.json": sha256_file(retrain / RetrainDir.MODEL_CONFIG)}
    return folder.write_manifest(files + [ExportDir.CARD_JSON, ExportDir.CARD_MD], cfg.model_dump(mode="json"),
                                 metrics, extra={"inputs": handed})


if __name__ == "__main__":  # python -m pinas.stages.export RETRAIN_DIR DATA_DIR OUT_DIR
    print(json.dumps(run_export(ExportConfig(), *sys.argv[1:4])["metrics"], indent=2))
