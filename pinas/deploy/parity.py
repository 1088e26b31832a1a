"""onnxruntime against torch eager on real validation images: a silently wrong export is worse than none.

Images are decoded exactly like the retrain evaluation (its :class:`~pinas.data.preprocess.EvalPreprocessing`), so the
check sees what deployment will see.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from pinas.data.images import ImageFolderDataset, sequential_batches
from pinas.data.preprocess import EvalPreprocessing
from pinas.data.transforms import Normalize, center_crop
from pinas.deploy.errors import ParityError
from pinas.deploy.onnx_export import INPUT_NAME

_BATCH = 16  # inference chunk for parity / accuracy; smaller than most sets, so the dynamic axis gets exercised


def eval_dataset(folder: Path, preprocessing: EvalPreprocessing, limit: int | None) -> ImageFolderDataset:
    """Images decoded like the retrain evaluation: the short side to ``preprocessing.resize``, square;
    :func:`iter_batches` then takes the centre crop and normalises."""
    return ImageFolderDataset(folder, preprocessing.resize, limit=limit)


def iter_batches(dataset: ImageFolderDataset, preprocessing: EvalPreprocessing, batch: int = _BATCH
                 ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Normalised float batches and their labels, streamed (the int8 comparison may read thousands of images)."""
    normalize = Normalize(preprocessing.mean, preprocessing.std)
    for idx in sequential_batches(len(dataset), batch):
        items = [dataset[i] for i in idx]
        x = torch.stack([img for img, _ in items])
        yield normalize(center_crop(x, preprocessing.crop)), np.array([label for _, label in items])



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
