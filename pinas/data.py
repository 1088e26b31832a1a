"""ImageNet-format data and the batched on-device augmentation of supernet-Pi training.

Images are decoded in loader workers to a fixed square (short side resized to ``size``, centre crop), as uint8, so
workers do no random work: all randomness (the MoCo v2 views) happens on the training device with kornia, batched,
from the torch RNG that checkpoints capture. That keeps resumed runs exact and keeps CPU workers cheap.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
    """A loader over an explicit batch stream (see :class:`pinas.training.EpochBatchSampler`).

    It gets a generator of its own: a DataLoader iterator otherwise draws its worker seed from the global torch RNG,
    which would shift the augmentation stream of a resumed run against an uninterrupted one.
    """
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, generator=torch.Generator().manual_seed(0))


def sequential_batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


class Normalize(nn.Module):
    """uint8 (or 0..1 float) images -> ImageNet-normalised float."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        return (x - self.mean) / self.std


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


class MocoV2Views(nn.Module):
    """The MoCo v2 / OpenSelfSup view pipeline (method doc 2.2), batched on the device with kornia.

    RandomResizedCrop(scale crop_min_scale-1) -> ColorJitter(jitter, jitter, jitter, hue) p=0.8 -> grayscale
    p=grayscale_p -> Gaussian blur sigma U(0.1, 2) p=blur_p -> horizontal flip -> normalise. The defaults are the
    paper's; the strengths are settings because tiny images (the demo profile) lose their identity under the full
    distortion. The blur kernel is ~10% of the crop, as in SimCLR/MoCo v2 (23 px at 224).
    """

    def __init__(self, size: int, crop_min_scale: float = 0.2, jitter: float = 0.4, hue: float = 0.4,
                 grayscale_p: float = 0.2, blur_p: float = 0.5):
        super().__init__()
        import kornia.augmentation as K

        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
        steps: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=(crop_min_scale, 1.0))]
        if jitter or hue:
            steps.append(K.ColorJitter(jitter, jitter, jitter, hue, p=0.8))
        if grayscale_p:
            steps.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p:
            steps.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=blur_p))
        steps.append(K.RandomHorizontalFlip())
        self.augment = nn.Sequential(*steps)
        self.normalize = Normalize()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255) if images.dtype == torch.uint8 else images
        return self.normalize(self.augment(x).clamp_(0, 1))
