"""ImageNet-format image folders, decoded to fixed-size uint8 squares, and the loader every stage uses.

Images are decoded in loader workers to a fixed square (short side resized to ``size``, centre crop), as uint8, so
workers do no random work: all randomness happens on the training device, batched (:mod:`pinas.data.transforms`),
from the torch RNG that checkpoints capture. That keeps resumed runs exact and keeps CPU workers cheap.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


class DataError(ValueError):
    """A dataset folder that is missing or not in the expected layout."""


def scan_image_folder(root: str | Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """(path, class index) for every image of an ImageFolder tree ``root/<class>/*``, classes sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    samples = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).iterdir())
               if p.suffix.lower() in IMAGE_SUFFIXES]
    if not samples:
        raise DataError(f"image folder {root} has class folders but no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return samples, classes


def decode_square(path: Path, size: int) -> torch.Tensor:
    """uint8 CHW tensor: short side resized to ``size`` (bilinear), then centre-cropped to ``size`` x ``size``."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


class ImageFolderDataset(Dataset):
    """An ImageFolder tree decoded to fixed-size uint8 squares (labels kept for the probe and retraining)."""

    def __init__(self, root: str | Path, size: int, limit: int | None = None):
        self.root = Path(root)
        self.samples, self.classes = scan_image_folder(root)
        if limit is not None:
            # an evenly spread subset keeps every class present
            idx = np.linspace(0, len(self.samples) - 1, num=min(limit, len(self.samples))).round().astype(int)
            self.samples = [self.samples[i] for i in idx]
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return decode_square(path, self.size), label


def batch_loader(dataset: Dataset, batches, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A loader over an explicit batch stream (see :class:`pinas.engine.sampler.EpochBatchSampler`).

    It gets a generator of its own: a DataLoader iterator otherwise draws its worker seed from the global torch RNG,
    which would shift the augmentation stream of a resumed run against an uninterrupted one.
    """
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, generator=torch.Generator().manual_seed(0))


def sequential_batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


def check_classes(expected: list[str], folder: Path, what: str) -> None:
    """Fail naming the folder when its classes differ from ``expected`` (e.g. the ones a head was trained on)."""
    _, classes = scan_image_folder(folder)
    if classes != list(expected):
        raise DataError(f"{what} {folder}: classes {classes} differ from the expected {list(expected)}")
