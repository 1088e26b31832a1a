"""Static int8 quantisation (onnxruntime QDQ) calibrated on training images, and the accuracy it costs.

Off by default: at demo scale (64 px) it bought only 10-25% latency, it costs a second pass over ``eval_images``,
and whether its accuracy delta is acceptable is the user's call. For the paper profile turning it on is worth it:
on ResNeSt-50-sized nets at 224 px, batch 1, one thread, the int8 model ran in ~0.62x the fp32 onnxruntime time on
these (non-VNNI) CPUs. Dynamic quantisation is not offered: for these convolution nets it was 1.2-3x *slower* than
fp32 here (ConvInteger kernels).
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pinas.data.preprocess import EvalPreprocessing
from pinas.deploy.onnx_export import INPUT_NAME
from pinas.deploy.parity import eval_dataset, iter_batches, ort_session
from pinas.io.artifacts import atomic_write_bytes


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


def calibration_batches(train_dir: Path, preprocessing: EvalPreprocessing, limit: int
                        ) -> Iterator[np.ndarray]:
    """Training images (an even spread over classes), preprocessed like evaluation, as the int8 calibration set."""
    return (x.numpy() for x, _ in iter_batches(eval_dataset(train_dir, preprocessing, limit), preprocessing))


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


def compare_accuracy(models: dict[str, Path], val_dir: Path, preprocessing: EvalPreprocessing, limit: int,
                     threads: int | None = None) -> dict[str, Any]:
    """Top-1 (%, like the retrain metrics) of each ONNX model on the same validation images, and the fraction of
    images on which each agrees with the first model."""
    sessions = {name: ort_session(path, threads) for name, path in models.items()}
    preds: dict[str, list[np.ndarray]] = {name: [] for name in models}
    labels = []
    for x, y in iter_batches(eval_dataset(val_dir, preprocessing, limit), preprocessing):
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
