"""Torch-free inference with an exported pinas classifier: numpy, Pillow and onnxruntime only.

Why a separate module: the point of exporting is to deploy without PyTorch, so this file must not import torch,
nor anything in ``pinas`` that does. The preprocessing record (:class:`pinas.data.preprocess.EvalPreprocessing`,
torch-free) comes from the ONNX file's metadata, where the export stage wrote the retrain's record, with the class
names; it is applied here with Pillow and numpy, step for step like the retrain evaluation (``decode_square`` to the
record's ``resize``, centre crop, mean/std); ``tests/test_export.py`` checks that both give the same top-1.

CLI: ``python -m pinas.deploy.predict model.onnx img1.jpg [img2.jpg ...] [--top 3] [--json]``
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from pinas.data.preprocess import EvalPreprocessing

META_PREPROCESS = "pinas.preprocess"
META_CLASSES = "pinas.classes"


def load_image(image: str | os.PathLike | Image.Image, preprocessing: EvalPreprocessing) -> np.ndarray:
    """float32 CHW: RGB, short side to ``resize`` (bilinear) and centre square, centre ``crop``, normalised.

    The two-step crop (square of ``resize``, then ``crop`` inside it) mirrors ``pinas.data.images.decode_square``
    followed by ``center_crop`` exactly, including where the rounding puts an odd pixel.
    """
    opened = None if isinstance(image, Image.Image) else Image.open(image)
    try:
        img = (image if opened is None else opened).convert("RGB")
        resize, crop = preprocessing.resize, preprocessing.crop
        w, h = img.size
        scale = resize / min(w, h)
        img = img.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - resize) // 2, (h - resize) // 2
        square = np.asarray(img.crop((left, top, left + resize, top + resize)))
    finally:
        if opened is not None:
            opened.close()
    off = (resize - crop) // 2
    x = square[off:off + crop, off:off + crop].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    mean_ = np.asarray(preprocessing.mean, dtype=np.float32).reshape(3, 1, 1)
    std_ = np.asarray(preprocessing.std, dtype=np.float32).reshape(3, 1, 1)
    return (x - mean_) / std_


class OnnxClassifier:
    """An exported classifier in an onnxruntime CPU session, with the preprocessing it was trained with.

    ``input_size`` defaults to the model's declared input; passing a different one is an error, not a resize.
    """

    def __init__(self, path: str | os.PathLike, input_size: int | None = None, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        if len(inp.shape) != 4:
            raise ValueError(f"{self.path}: expected an image model with input (N, C, H, W), got {inp.shape}")
        self.input_shape = tuple(inp.shape[1:])  # (C, H, W); ints, or a name for a dynamic axis
        meta = self.session.get_modelmeta().custom_metadata_map
        declared = self.input_shape[-1] if isinstance(self.input_shape[-1], int) else None
        if input_size is not None and declared is not None and input_size != declared:
            raise ValueError(f"{self.path}: model expects {declared}x{declared} input, input_size={input_size} given")
        if META_PREPROCESS in meta:
            self.preprocessing = EvalPreprocessing.from_dict(json.loads(meta[META_PREPROCESS]),
                                                             f"{self.path} metadata {META_PREPROCESS}")
        elif input_size or declared:  # a model pinas did not export: the ImageNet evaluation of its input size
            self.preprocessing = EvalPreprocessing.for_input(int(input_size or declared))
        else:
            raise ValueError(f"{self.path}: input size is not declared in the model; pass input_size")
        if declared is not None and self.preprocessing.crop != declared:
            raise ValueError(f"{self.path}: its preprocessing crops {self.preprocessing.crop} px, its input is "
                             f"{declared} px")
        self.input_size = self.preprocessing.crop
        self.classes: list[str] | None = json.loads(meta[META_CLASSES]) if META_CLASSES in meta else None

    def preprocess(self, images: Sequence[str | os.PathLike | Image.Image]) -> np.ndarray:
        return np.stack([load_image(im, self.preprocessing) for im in images])

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Reject a batch the model cannot take, naming expected vs got, before onnxruntime sees it."""
        expected = "(N, " + ", ".join(str(d) for d in self.input_shape) + ")"
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            got = getattr(x, "shape", type(x).__name__)
            raise ValueError(f"input must be a batch of images shaped {expected}, got shape {got}")
        for axis, (want, have) in enumerate(zip(self.input_shape, x.shape[1:]), start=1):
            if isinstance(want, int) and want != have:
                raise ValueError(f"input shape mismatch: model expects {expected}, got {tuple(x.shape)} "
                                 f"(axis {axis}: expected {want}, got {have})")
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"input must be normalised float32 images, got dtype {x.dtype}; pass image files or "
                             "PIL images to have them preprocessed")
        return np.ascontiguousarray(x, dtype=np.float32)

    def logits(self, images: np.ndarray | Sequence[str | os.PathLike | Image.Image]) -> np.ndarray:
        """Raw scores for a preprocessed float batch (N, C, H, W), or for image files / PIL images."""
        x = images if isinstance(images, np.ndarray) else self.preprocess(images)
        return self.session.run(None, {self.input_name: self.check_input(x)})[0]

    def predict(self, images: np.ndarray | Sequence[str | os.PathLike | Image.Image]) -> np.ndarray:
        """Top-1 class index per image."""
        return self.logits(images).argmax(axis=1)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pinas.deploy.predict", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=1, help="classes to show per image")
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        parser.error(f"image not found: {', '.join(missing)}")
    clf = OnnxClassifier(args.model, args.input_size)
    probs = _softmax(clf.logits(args.images))
    for path, p in zip(args.images, probs):
        top = np.argsort(-p)[:args.top]
        ranked = [{"index": int(i), "label": clf.classes[i] if clf.classes else str(i), "prob": round(float(p[i]), 6)}
                  for i in top]
        if args.json:
            print(json.dumps({"image": str(path), "top": ranked}))
        else:
            print(f"{path}: " + ", ".join(f"{r['label']} ({r['prob']:.3f})" for r in ranked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
