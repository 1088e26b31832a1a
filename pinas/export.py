"""Stage 5: ONNX export of the retrained network, verified against torch, timed, optionally int8, with a model card.

What the stage guarantees, in order:

1. ``model.onnx`` (the classifier) and ``backbone.onnx`` (the four stage maps, for detection / segmentation
   deployment) are exported with a dynamic batch axis, pass ``onnx.checker`` with ``full_check`` and strict shape
   inference, and declare the input shape, so a consumer can validate inputs without running the model.
2. Parity: onnxruntime and torch eager agree on real validation images, decoded exactly like the retrain
   evaluation. Exceeding ``tolerance_abs`` or falling below ``min_top1_agreement`` fails the stage
   (:class:`ParityError`): a silently wrong export is worse than none.
3. Latency of torch eager vs onnxruntime at fixed thread counts, each in its own process (:mod:`pinas.latency`).
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

import contextlib
import io
import json
import logging
import platform
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from . import __version__
from .artifacts import (
    MANIFEST,
    ArtifactError,
    atomic_write_bytes,
    atomic_write_json,
    load_tensors,
    sha256_file,
    write_manifest,
)
from .cost import count_with_torch
from .data import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataset, Normalize, center_crop, sequential_batches
from .onnx_predict import META_CLASSES, META_PREPROCESS, resize_size
from .space import ArchError, get_space
from .supernet import Classifier, PiNASBackbone, build_subnet

log = logging.getLogger(__name__)

INPUT_NAME = "image"
STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")
MODEL_FILE, BACKBONE_FILE, INT8_FILE = "model.onnx", "backbone.onnx", "model.int8.onnx"
CARD_JSON, CARD_MD = "model_card.json", "model_card.md"
_BATCH = 16  # inference chunk for parity / accuracy; smaller than most sets, so the dynamic axis gets exercised


class ExportError(RuntimeError):
    """The export stage cannot run (bad inputs) or produced a model that fails its checks."""


class ParityError(ExportError):
    """onnxruntime's outputs differ from torch eager beyond the configured tolerance."""


class ExportConfig(BaseModel):
    """Settings of the export stage (one section of the pipeline config)."""

    model_config = ConfigDict(extra="forbid")

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


# ------------------------------------------------------------------------------------------------------ inputs
def load_retrain(retrain_dir: str | Path) -> tuple[Classifier, dict[str, Any], dict[str, Any]]:
    """(eval-mode Classifier, model_config.json, metrics.json or {}) from a retrain output folder."""
    retrain_dir = Path(retrain_dir)
    if not retrain_dir.is_dir():
        raise ExportError(f"retrain folder {retrain_dir} does not exist")
    config_path, weights_path = retrain_dir / "model_config.json", retrain_dir / "model.pt"
    for path in (weights_path, config_path):
        if not path.is_file():
            raise ExportError(f"{path}: missing (the retrain stage writes model.pt and model_config.json)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{config_path}: not valid JSON ({exc})") from exc
    missing = [k for k in ("space", "arch", "num_classes", "input_size") if k not in config]
    if missing:
        raise ExportError(f"{config_path}: missing field(s) {', '.join(missing)}")
    try:
        space = get_space(config["space"])
        model = Classifier(build_subnet(space, config["arch"]), int(config["num_classes"]))
    except (ArchError, ValueError) as exc:
        raise ExportError(f"{config_path}: {exc}") from exc
    classes = config.get("classes")
    if classes is not None and len(classes) != int(config["num_classes"]):
        raise ExportError(f"{config_path}: {len(classes)} classes listed but num_classes={config['num_classes']}")
    try:
        state = load_tensors(weights_path)
        model.load_state_dict(state)
    except (ArtifactError, RuntimeError) as exc:
        raise ExportError(f"{weights_path}: does not load into {config['space']}:{config['arch']} ({exc})") from exc
    metrics_path = retrain_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return model.eval(), config, metrics


class StageFeatures(nn.Module):
    """The backbone as deployed downstream: image -> the four stage maps (strides 4, 8, 16, 32)."""

    def __init__(self, backbone: PiNASBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.backbone(x, return_stages=True)


def eval_dataset(folder: Path, input_size: int, limit: int | None, resize: int | None = None) -> ImageFolderDataset:
    """Images decoded like the retrain evaluation: short side to ``resize`` (default round(size*8/7)), square.

    :func:`iter_batches` then centre-crops ``input_size``, as the retrain evaluation does.
    """
    return ImageFolderDataset(folder, resize or resize_size(input_size), limit=limit)


def iter_batches(dataset: ImageFolderDataset, input_size: int, batch: int = _BATCH
                 ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Normalised float batches and their labels, streamed (the int8 comparison may read thousands of images)."""
    normalize = Normalize()
    for idx in sequential_batches(len(dataset), batch):
        items = [dataset[i] for i in idx]
        x = torch.stack([img for img, _ in items])
        yield normalize(center_crop(x, input_size)), np.array([label for _, label in items])


# ------------------------------------------------------------------------------------------------------ export
@contextlib.contextmanager
def _quiet_exporter():
    """The exporters log about torchvision ops and warn about deprecated APIs; none of it concerns these models."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _export_proto(module: nn.Module, example: torch.Tensor, output_names: Sequence[str], opset: int,
                  exporter: str) -> onnx.ModelProto:
    with _quiet_exporter():
        if exporter == "dynamo":
            program = torch.onnx.export(module, (example,), None, dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=list(output_names),
                                        dynamic_shapes=({0: "batch"},), verbose=False)
            return program.model_proto
        buf = io.BytesIO()
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=list(output_names),
                          dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *output_names)})
        return onnx.load_from_string(buf.getvalue())


def check_onnx(path: Path, input_size: int, output_names: Sequence[str]) -> onnx.ModelProto:
    """Full checker, strict shape inference, and the declared I/O: (batch, 3, S, S) in, dynamic batch out."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path}: fails the ONNX checker ({exc})") from exc

    def dims(value_info) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    inputs = [dims(v) for v in model.graph.input]
    if len(inputs) != 1 or not isinstance(inputs[0][0], str) or inputs[0][1:] != [3, input_size, input_size]:
        raise ExportError(f"{path}: input is {inputs}, expected one input [batch, 3, {input_size}, {input_size}]")
    outputs = {v.name: dims(v) for v in model.graph.output}
    if list(outputs) != list(output_names) or any(not d or not isinstance(d[0], str) for d in outputs.values()):
        raise ExportError(f"{path}: outputs {outputs}, expected {list(output_names)} with a dynamic batch axis")
    return model


def export_onnx(module: nn.Module, path: Path, input_size: int, output_names: Sequence[str], opset: int = 18,
                exporter: str = "auto", metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Export ``module`` (eval mode) to ``path`` atomically and check it; returns exporter, opset, I/O shapes."""
    module.eval()
    example = torch.randn(2, 3, input_size, input_size)  # batch 2: torch.export specialises a size-1 axis
    info: dict[str, Any] = {"requested_opset": opset}
    if exporter in ("auto", "dynamo"):
        try:
            proto = _export_proto(module, example, output_names, opset, "dynamo")
            info["exporter"] = "dynamo"
        except Exception as exc:
            if exporter == "dynamo":
                raise ExportError(f"dynamo ONNX export of {path.name} failed: {exc}") from exc
            log.warning("dynamo export of %s failed (%s); falling back to the TorchScript exporter", path.name, exc)
            info["fallback_reason"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            exporter = "torchscript"
    if exporter == "torchscript":
        proto = _export_proto(module, example, output_names, min(opset, 20), "torchscript")
        info["exporter"] = "torchscript"
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name, proto.producer_version = "pinas", __version__
    atomic_write_bytes(path, proto.SerializeToString())
    checked = check_onnx(path, input_size, output_names)
    info["opset"] = next(o.version for o in checked.opset_import if o.domain in ("", "ai.onnx"))
    if info["opset"] != opset:
        log.warning("%s: asked for opset %d, the exporter produced opset %d", path.name, opset, info["opset"])
    info["input"] = {INPUT_NAME: ["batch", 3, input_size, input_size]}
    info["outputs"] = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                       for v in checked.graph.output}
    return info


# ------------------------------------------------------------------------------------------------------ checks
def ort_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(onnx_path: Path, module: nn.Module, images: torch.Tensor, tolerance_abs: float,
                 min_top1_agreement: float | None = None, threads: int | None = None) -> dict[str, Any]:
    """Compare onnxruntime with torch eager on ``images``; raise :class:`ParityError` when they disagree.

    Every output is compared (the backbone has four); top-1 agreement applies to a single-output classifier.
    """
    session = ort_session(onnx_path, threads)
    names = [o.name for o in session.get_outputs()]
    ref: list[list[np.ndarray]] = [[] for _ in names]
    got: list[list[np.ndarray]] = [[] for _ in names]
    module.eval()
    with torch.inference_mode():
        for start in range(0, len(images), _BATCH):
            x = images[start:start + _BATCH]
            out = module(x)
            for i, t in enumerate(out if isinstance(out, tuple) else (out,)):
                ref[i].append(t.numpy())
            for i, a in enumerate(session.run(None, {INPUT_NAME: x.numpy()})):
                got[i].append(a)
    report: dict[str, Any] = {"images": len(images), "tolerance_abs": tolerance_abs, "outputs": {}}
    problems = []
    for name, r, g in zip(names, ref, got):
        r, g = np.concatenate(r), np.concatenate(g)
        if r.shape != g.shape:
            problems.append(f"output {name!r} has shape {g.shape}, torch gives {r.shape}")
            continue
        diff = np.abs(r - g)
        max_diff = float(np.nan_to_num(diff, nan=np.inf).max())
        report["outputs"][name] = {"max_abs_diff": max_diff, "mean_abs_diff": float(diff.mean()),
                                   "max_abs_torch": float(np.abs(r).max())}
        if not max_diff <= tolerance_abs:
            problems.append(f"output {name!r}: max |onnxruntime - torch| = {max_diff:.3g} exceeds "
                            f"tolerance_abs={tolerance_abs:g}")
        if min_top1_agreement is not None and len(names) == 1:
            agreement = float((r.argmax(1) == g.argmax(1)).mean())
            report["top1_agreement"] = agreement
            report["min_top1_agreement"] = min_top1_agreement
            if agreement < min_top1_agreement:
                problems.append(f"top-1 agreement {agreement:.4f} is below min_top1_agreement={min_top1_agreement}")
    report["max_abs_diff"] = max((o["max_abs_diff"] for o in report["outputs"].values()), default=float("inf"))
    if problems:
        raise ParityError(f"{onnx_path}: parity check failed on {len(images)} validation images: "
                          + "; ".join(problems))
    return report


# ------------------------------------------------------------------------------------------------------ int8
class _CalibrationReader:
    """Feeds float batches to onnxruntime's calibrator (duck-types ``CalibrationDataReader``) and counts images."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._batches = iter(batches)
        self.images = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._batches, None)
        if x is None:
            return None
        self.images += len(x)
        return {INPUT_NAME: x}


def calibration_batches(train_dir: Path, input_size: int, limit: int, resize: int | None = None
                        ) -> Iterator[np.ndarray]:
    """Training images (an even spread over classes), preprocessed like evaluation, as the int8 calibration set."""
    return (x.numpy() for x, _ in iter_batches(eval_dataset(train_dir, input_size, limit, resize), input_size))


def quantize_int8(fp32_path: Path, out_path: Path, batches: Iterable[np.ndarray],
                  metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Static int8 (QDQ, per-channel weights) with min/max activation ranges calibrated on ``batches``.

    ``reduce_range`` uses 7-bit weights: onnxruntime's u8s8 kernels can saturate on x86 CPUs without VNNI.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = _CalibrationReader(batches)
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=out_path.parent) as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
        quant_pre_process(str(fp32_path), str(prepared))  # shape inference + graph fusions ORT recommends first
        quantize_static(str(prepared), str(quantized), reader,
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        # No CalibMaxIntermediateOutputs: onnxruntime 1.32 drops (not merges) the batches it clears, and min/max
        # calibration keeps only per-tensor ReduceMin/ReduceMax results per batch, so memory stays small anyway.
        model = onnx.load(str(quantized))
        del model.metadata_props[:]
        for key, value in (metadata or {}).items():
            model.metadata_props.add(key=key, value=value)
        atomic_write_bytes(out_path, model.SerializeToString())
    onnx.checker.check_model(str(out_path), full_check=True)
    return {"calibration_images": reader.images, "format": "QDQ", "per_channel": True, "reduce_range": True,
            "activations": "uint8", "weights": "int8", "calibration": "minmax"}


def compare_accuracy(models: dict[str, Path], val_dir: Path, input_size: int, limit: int,
                     threads: int | None = None, resize: int | None = None) -> dict[str, Any]:
    """Top-1 (%, like the retrain metrics) of each ONNX model on the same validation images, and the fraction of
    images on which each agrees with the first model."""
    sessions = {name: ort_session(path, threads) for name, path in models.items()}
    preds: dict[str, list[np.ndarray]] = {name: [] for name in models}
    labels = []
    for x, y in iter_batches(eval_dataset(val_dir, input_size, limit, resize), input_size):
        labels.append(y)
        for name, session in sessions.items():
            preds[name].append(session.run(None, {INPUT_NAME: x.numpy()})[0].argmax(1))
    y = np.concatenate(labels)
    first = np.concatenate(preds[next(iter(models))])
    out: dict[str, Any] = {"images": int(y.size)}
    for name, p in preds.items():
        p = np.concatenate(p)
        out[f"top1_{name}"] = round(100 * float((p == y).mean()), 4)
        out[f"agreement_{name}"] = round(float((p == first).mean()), 6)
    return out


# ------------------------------------------------------------------------------------------------------ card
def _versions(exporters: set[str]) -> dict[str, str]:
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
    lat = card.get("latency")
    if lat:
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


# ------------------------------------------------------------------------------------------------------ stage
def run_export(cfg: ExportConfig, retrain_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
               transfer_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export, verify, time and document a retrained classifier; returns the stage manifest.

    ``data_dir`` is the ImageNet-format root: ``val/<class>/*`` for parity (and the int8 comparison),
    ``train/<class>/*`` for int8 calibration. ``out_dir`` is conventionally ``exports/<run>/``.
    """
    retrain_dir, data_dir, out_dir = Path(retrain_dir), Path(data_dir), Path(out_dir)
    val_dir, train_dir = data_dir / "val", data_dir / "train"
    if not val_dir.is_dir():
        raise ExportError(f"{val_dir}: validation folder not found (expected {val_dir}/<class>/<image>)")
    if cfg.int8 and not train_dir.is_dir():
        raise ExportError(f"{train_dir}: training folder not found; int8=True calibrates on training images")
    model, mcfg, retrain_metrics = load_retrain(retrain_dir)
    size = int(mcfg["input_size"])
    resize = int(mcfg.get("decode_size") or resize_size(size))  # honour a retrain that decoded at another size
    parity_set = eval_dataset(val_dir, size, cfg.parity_images, resize)
    if mcfg.get("classes") is not None and list(mcfg["classes"]) != parity_set.classes:
        raise ExportError(f"{val_dir}: classes {parity_set.classes} do not match the model's "
                          f"{mcfg['classes']} ({retrain_dir / 'model_config.json'})")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # a re-run that fails must not leave the old run looking complete

    preprocess = {"resize": resize, "crop": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                  "interpolation": "bilinear", "color": "RGB", "layout": "NCHW float32",
                  "description": f"RGB; resize the short side to {resize} px (bilinear) and centre-crop "
                                 f"{size}x{size}; scale to [0, 1]; subtract ImageNet mean {list(IMAGENET_MEAN)} and "
                                 f"divide by std {list(IMAGENET_STD)}; NCHW float32"}
    meta = {META_PREPROCESS: json.dumps({k: v for k, v in preprocess.items() if k != "description"}),
            META_CLASSES: json.dumps(mcfg.get("classes") or [str(i) for i in range(int(mcfg["num_classes"]))]),
            "pinas.space": mcfg["space"], "pinas.arch": mcfg["arch"]}
    images = torch.cat([x for x, _ in iter_batches(parity_set, size)])
    export_info = export_onnx(model, out_dir / MODEL_FILE, size, ("logits",), cfg.opset, cfg.exporter, meta)
    parity = {"model": check_parity(out_dir / MODEL_FILE, model, images, cfg.tolerance_abs, cfg.min_top1_agreement,
                                      cfg.threads)}
    features = StageFeatures(model.backbone).eval()
    backbone_info = export_onnx(features, out_dir / BACKBONE_FILE, size, STAGE_NAMES, cfg.opset, cfg.exporter,
                                {k: v for k, v in meta.items() if k != META_CLASSES})
    parity["backbone"] = check_parity(out_dir / BACKBONE_FILE, features, images, cfg.tolerance_abs,
                                      threads=cfg.threads)
    files = [MODEL_FILE, BACKBONE_FILE]
    int8 = None
    if cfg.int8:
        int8 = quantize_int8(out_dir / MODEL_FILE, out_dir / INT8_FILE,
                             calibration_batches(train_dir, size, cfg.calibration_images, resize), meta)
        int8.update(compare_accuracy({"fp32": out_dir / MODEL_FILE, "int8": out_dir / INT8_FILE}, val_dir, size,
                                     cfg.eval_images, cfg.threads, resize))
        int8["top1_delta"] = round(int8["top1_int8"] - int8["top1_fp32"], 4)  # percentage points
        files.append(INT8_FILE)
    latency = None
    if cfg.latency_batches:
        from .latency import compare

        onnx_models = {"onnxruntime": out_dir / MODEL_FILE} | ({"int8": out_dir / INT8_FILE} if cfg.int8 else {})
        latency = compare(retrain_dir, onnx_models, cfg.latency_batches, cfg.threads, cfg.warmup, cfg.repeats)

    cost = count_with_torch(model, size)
    with torch.inference_mode():
        maps = features(images[:1])
    card = {
        "model": {"space": mcfg["space"], "arch": mcfg["arch"], "num_classes": int(mcfg["num_classes"]),
                  "classes": mcfg.get("classes"), "input_size": size, "params": cost.params, "macs": cost.macs,
                  "params_m": cost.params_m, "gmacs": cost.gmacs},
        "backbone": {"outputs": {n: {"channels": int(t.shape[1]), "stride": size // int(t.shape[-1])}
                                 for n, t in zip(STAGE_NAMES, maps)},
                     "params": sum(p.numel() for p in model.backbone.parameters())},
        "preprocessing": preprocess,
        "retrain_metrics": {k: v for k, v in retrain_metrics.items() if not isinstance(v, (list, dict))},
        "transfer_metrics": transfer_metrics or {},
        "export": {**export_info, "backbone": backbone_info},
        "files": {name: {"sha256": sha256_file(out_dir / name), "bytes": (out_dir / name).stat().st_size}
                  for name in files},
        "parity": parity,
        "latency": latency,
        "int8": int8,
        "versions": _versions({export_info["exporter"], backbone_info["exporter"]}),
        "platform": {"machine": platform.machine(), "processor": platform.processor(), "system": platform.system()},
        "source": {"retrain_dir": str(retrain_dir), "model.pt": sha256_file(retrain_dir / "model.pt")},
    }
    atomic_write_json(out_dir / CARD_JSON, card)
    atomic_write_bytes(out_dir / CARD_MD, render_card_md(card).encode())
    metrics = {"opset": export_info["opset"], "exporter": export_info["exporter"],
               "parity_max_abs_diff": parity["model"]["max_abs_diff"],
               "backbone_parity_max_abs_diff": parity["backbone"]["max_abs_diff"],
               "top1_agreement": parity["model"]["top1_agreement"], "params": cost.params, "macs": cost.macs}
    for batch, entry in (latency or {}).get("batches", {}).items():
        metrics[f"latency_ms_torch_b{batch}"] = entry["torch"]["median_ms"]
        metrics[f"latency_ms_onnxruntime_b{batch}"] = entry["onnxruntime"]["median_ms"]
        metrics[f"latency_ratio_b{batch}"] = entry["ratio_onnxruntime"]
    if int8:
        metrics.update(top1_fp32=int8["top1_fp32"], top1_int8=int8["top1_int8"], top1_delta_int8=int8["top1_delta"])
    return write_manifest(out_dir, "export", files + [CARD_JSON, CARD_MD], cfg.model_dump(mode="json"), metrics,
                          extra={"inputs": {"model.pt": card["source"]["model.pt"],
                                            "model_config.json": sha256_file(retrain_dir / "model_config.json")}})


def default_export_dir(run_name: str, root: str | Path = "exports") -> Path:
    return Path(root) / run_name


if __name__ == "__main__":  # pragma: no cover - convenience: python -m pinas.export RETRAIN_DIR DATA_DIR OUT_DIR
    manifest = run_export(ExportConfig(), *sys.argv[1:4])
    print(json.dumps(manifest["metrics"], indent=2))
