"""Stage 5: ONNX export of the retrained network, verified against torch, timed, optionally int8, with a model card.

What the stage guarantees, in order:

1. ``model.onnx`` (the classifier) and ``backbone.onnx`` (the four stage maps, for detection / segmentation
   deployment) are exported with a dynamic batch axis, pass ``onnx.checker`` with ``full_check`` and strict shape
   inference, and declare the input shape, so a consumer can validate inputs without running the model.
2. Parity: onnxruntime and torch eager agree on real validation images, decoded exactly like the retrain
   evaluation. Exceeding ``tolerance_abs`` or falling below ``min_top1_agreement`` fails the stage
   (:class:`ParityError`): a silently wrong export is worse than none.
3. Latency of torch eager vs onnxruntime at fixed thread counts, each in its own process (:mod:`pinas.deploy.latency`).
4. Optional int8 (onnxruntime static QDQ quantisation calibrated on training images), with top-1 of fp32 and
   int8 on the same validation images. Off by default: at demo scale (64 px) it bought only 10-25% latency, it
   costs a second pass over ``eval_images``, and whether its accuracy delta is acceptable is the user's call.
   For the paper profile turning it on is worth it: on ResNeSt-50-sized nets at 224 px, batch 1, one thread, the
   int8 model ran in ~0.62x the fp32 onnxruntime time on these (non-VNNI) CPUs. Dynamic quantisation is not
   offered: for these convolution nets it was 1.2-3x *slower* than fp32 here (ConvInteger kernels).
5. ``model_card.json`` / ``model_card.md`` and the stage manifest (digests of every file, config, metrics).

The dynamo exporter (torch 2.13's default, needs onnxscript) is tried first; the TorchScript exporter is a
fallback with ``exporter="auto"``, and the card records which one produced the files and why.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from pinas.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pinas.deploy.errors import ExportError
from pinas.deploy.predict import META_CLASSES, META_PREPROCESS, resize_size
from pinas.io.artifacts import MANIFEST, ArtifactError, atomic_write_bytes, atomic_write_json, sha256_file
from pinas.io.stage_dirs import ExportDir, RetrainDir
from pinas.stages.common import StageConfig


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


def run_export(cfg: ExportConfig, retrain_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
               transfer_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export, verify, time and document a retrained classifier; returns the stage manifest.

    ``data_dir`` is the ImageNet-format root: ``val/<class>/*`` for parity (and the int8 comparison),
    ``train/<class>/*`` for int8 calibration. ``out_dir`` is conventionally ``exports/<run>/``.
    """
    # the ONNX stack (onnx, onnxruntime, onnxscript) takes a second or two to import: loaded when an export runs,
    # not whenever a pipeline config is read
    from pinas.deploy.card import build_card, render_card_md
    from pinas.deploy.latency import compare
    from pinas.deploy.onnx_export import STAGE_NAMES, StageFeatures, export_onnx
    from pinas.deploy.parity import check_parity, eval_dataset, iter_batches
    from pinas.deploy.quantize import calibration_batches, compare_accuracy, quantize_int8

    retrain_dir, data_dir, out_dir = Path(retrain_dir), Path(data_dir), Path(out_dir)
    val_dir, train_dir = data_dir / "val", data_dir / "train"
    if not val_dir.is_dir():
        raise ExportError(f"{val_dir}: validation folder not found (expected {val_dir}/<class>/<image>)")
    if cfg.int8 and not train_dir.is_dir():
        raise ExportError(f"{train_dir}: training folder not found; int8=True calibrates on training images")
    retrain = RetrainDir(retrain_dir)
    try:
        model, mcfg, retrain_metrics = retrain.load_classifier(), retrain.model_config(), retrain.metrics()
    except ArtifactError as exc:
        raise ExportError(str(exc)) from exc
    size = int(mcfg["input_size"])
    resize = int(mcfg.get("decode_size") or resize_size(size))  # honour a retrain that decoded at another size
    parity_set = eval_dataset(val_dir, size, cfg.parity_images, resize)
    if mcfg.get("classes") is not None and list(mcfg["classes"]) != parity_set.classes:
        raise ExportError(f"{val_dir}: classes {parity_set.classes} do not match the model's "
                          f"{mcfg['classes']} ({retrain / RetrainDir.MODEL_CONFIG})")
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = ExportDir(out_dir)
    (folder / MANIFEST).unlink(missing_ok=True)  # a re-run that fails must not leave the old run looking complete

    preprocess = {"resize": resize, "crop": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                  "interpolation": "bilinear", "color": "RGB", "layout": "NCHW float32",
                  "description": f"RGB; resize the short side to {resize} px (bilinear) and centre-crop "
                                 f"{size}x{size}; scale to [0, 1]; subtract ImageNet mean {list(IMAGENET_MEAN)} and "
                                 f"divide by std {list(IMAGENET_STD)}; NCHW float32"}
    meta = {META_PREPROCESS: json.dumps({k: v for k, v in preprocess.items() if k != "description"}),
            META_CLASSES: json.dumps(mcfg.get("classes") or [str(i) for i in range(int(mcfg["num_classes"]))]),
            "pinas.space": mcfg["space"], "pinas.arch": mcfg["arch"]}
    images = torch.cat([x for x, _ in iter_batches(parity_set, size)])
    export_info = export_onnx(model, folder / ExportDir.MODEL, size, ("logits",), cfg.opset, cfg.exporter, meta)
    parity = {"model": check_parity(folder / ExportDir.MODEL, model, images, cfg.tolerance_abs,
                                    cfg.min_top1_agreement, cfg.threads)}
    features = StageFeatures(model.backbone).eval()
    backbone_info = export_onnx(features, folder / ExportDir.BACKBONE, size, STAGE_NAMES, cfg.opset, cfg.exporter,
                                {k: v for k, v in meta.items() if k != META_CLASSES})
    parity["backbone"] = check_parity(folder / ExportDir.BACKBONE, features, images, cfg.tolerance_abs,
                                      threads=cfg.threads)
    files = [ExportDir.MODEL, ExportDir.BACKBONE]
    int8 = None
    if cfg.int8:
        int8 = quantize_int8(folder / ExportDir.MODEL, folder / ExportDir.INT8,
                             calibration_batches(train_dir, size, cfg.calibration_images, resize), meta)
        int8.update(compare_accuracy({"fp32": folder / ExportDir.MODEL, "int8": folder / ExportDir.INT8}, val_dir,
                                     size, cfg.eval_images, cfg.threads, resize))
        int8["top1_delta"] = round(int8["top1_int8"] - int8["top1_fp32"], 4)  # percentage points
        files.append(ExportDir.INT8)
    latency = None
    if cfg.latency_batches:
        onnx_models = {"onnxruntime": folder / ExportDir.MODEL}
        if cfg.int8:
            onnx_models["int8"] = folder / ExportDir.INT8
        latency = compare(retrain_dir, onnx_models, cfg.latency_batches, cfg.threads, cfg.warmup, cfg.repeats)

    card = build_card(model, mcfg, images[:1], folder.path, files, preprocessing=preprocess,
                      retrain_metrics={k: v for k, v in retrain_metrics.items() if not isinstance(v, (list, dict))},
                      transfer_metrics=transfer_metrics or {}, export={**export_info, "backbone": backbone_info},
                      parity=parity, latency=latency, int8=int8,
                      source={"retrain_dir": str(retrain_dir), "model.pt": sha256_file(retrain / RetrainDir.MODEL)})
    atomic_write_json(folder / ExportDir.CARD_JSON, card)
    atomic_write_bytes(folder / ExportDir.CARD_MD, render_card_md(card).encode())
    metrics = {"opset": export_info["opset"], "exporter": export_info["exporter"],
               "parity_max_abs_diff": parity["model"]["max_abs_diff"],
               "backbone_parity_max_abs_diff": parity["backbone"]["max_abs_diff"],
               "top1_agreement": parity["model"]["top1_agreement"], "params": card["model"]["params"],
               "macs": card["model"]["macs"]}
    for batch, entry in (latency or {}).get("batches", {}).items():
        metrics[f"latency_ms_torch_b{batch}"] = entry["torch"]["median_ms"]
        metrics[f"latency_ms_onnxruntime_b{batch}"] = entry["onnxruntime"]["median_ms"]
        metrics[f"latency_ratio_b{batch}"] = entry["ratio_onnxruntime"]
    if int8:
        metrics.update(top1_fp32=int8["top1_fp32"], top1_int8=int8["top1_int8"], top1_delta_int8=int8["top1_delta"])
    inputs = {"model.pt": card["source"]["model.pt"],
              "model_config.json": sha256_file(retrain / RetrainDir.MODEL_CONFIG)}
    return folder.write_manifest(files + [ExportDir.CARD_JSON, ExportDir.CARD_MD], cfg.model_dump(mode="json"),
                                 metrics, extra={"inputs": inputs})


if __name__ == "__main__":  # python -m pinas.stages.export RETRAIN_DIR DATA_DIR OUT_DIR
    print(json.dumps(run_export(ExportConfig(), *sys.argv[1:4])["metrics"], indent=2))
