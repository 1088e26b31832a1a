"""ImageNet-format image folders: listing, the random training crops, the deterministic evaluation view, the loader.

Training crops are cut from the **full decoded image** in the loader workers (:class:`TrainCrops`), as MoCo v2 and the
ResNeSt recipe do: a random resized crop (and the recipe's RandAugment before it) sees the whole field of view, and a
crop is resized once, from the original pixels. Each view of each image is drawn by its own numpy generator seeded
with (seed, step, image index, view) (:func:`sample_rng`), so the crops of a step are a pure function of the step:
a resumed run draws exactly the crops an uninterrupted one would, with any number of workers. The colour operations
that follow run batched on the device (:mod:`pinas.data.transforms`), from the torch RNG that checkpoints capture.

Evaluation decodes deterministically (:class:`ImageFolderDataset`: short side resized, centre square; the centre
crop of the network's input size is taken on the device).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, Dataset

from pinas.data.randaugment import rand_augment

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}
Sample = tuple[Path, int]
Key = tuple[int, int]  # (step, image index): what a training crop is drawn from
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


class DataError(ValueError):
    """A dataset folder that is missing, not in the expected layout, or too small for what is asked of it."""


def scan_image_folder(root: str | Path) -> tuple[list[Sample], list[str]]:
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


@dataclass(frozen=True)
class ImageList:
    """The images of an ImageFolder tree, or a part of it (the classes are always the whole tree's)."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[Sample, ...]

    @classmethod
    def scan(cls, root: str | Path) -> ImageList:
        samples, classes = scan_image_folder(root)
        return cls(Path(root), tuple(classes), tuple(samples))

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: Iterable[int]) -> ImageList:
        return ImageList(self.root, self.classes, tuple(self.samples[i] for i in indices))


def as_image_list(images: ImageList | str | Path) -> ImageList:
    return images if isinstance(images, ImageList) else ImageList.scan(images)


class SearchHoldout(BaseModel):
    """The part of ``train/`` set aside for the search: never trained on by the supernet or the linear probe, and
    the images candidates are scored on, so the search never scores on ``val/``, where the retrained top-1 is
    reported (SPOS practice: 50,000 images drawn at random from ImageNet's training set). A seeded draw over the
    sorted file list, blind to the labels: a pure function of the file list and these settings, the same for a
    label-free supernet whatever the folders' class names."""

    model_config = ConfigDict(extra="forbid")

    images: float = Field(50000, gt=0, description="images held out of train/ for the search: a count (>= 1) or a "
                                                   "fraction of train/ (< 1)")
    seed: int = 0

    def count(self, total: int) -> int:
        return int(self.images) if self.images >= 1 else round(self.images * total)

    def split(self, images: ImageList) -> tuple[ImageList, ImageList]:
        """(the training part, the held-out part) of ``images``: disjoint, in file order, every class trained on."""
        total, wanted = len(images), self.count(len(images))
        held = set(np.random.default_rng(self.seed).permutation(total)[:wanted].tolist())
        kept = [i for i in range(total) if i not in held]
        emptied = sorted(set(images.classes[label] for _, label in images.samples)
                         - {images.classes[images.samples[i][1]] for i in kept})
        if not 0 < wanted < total or emptied:
            raise DataError(f"search holdout: holding out {wanted} of the {total} images of {images.root} leaves "
                            + (f"no training image of class {emptied[0]!r}" if emptied else "no training image")
                            + "; set data.search_holdout to a smaller count or fraction (or another seed)")
        return images.subset(kept), images.subset(sorted(held))


# ------------------------------------------------------------------------------------------------- decoding
def decode_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """HWC PIL image -> CHW uint8 tensor."""
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def decode_square(path: Path, size: int) -> torch.Tensor:
    """uint8 CHW tensor: short side resized to ``size`` (bilinear), then centre-cropped to ``size`` x ``size``."""
    img = decode_rgb(path)
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return to_uint8_tensor(img.crop((left, top, left + size, top + size)))


class ImageFolderDataset(Dataset):
    """The evaluation view of an ImageFolder tree (or an :class:`ImageList`): each image decoded to a fixed uint8
    square (labels kept for the probe and retraining)."""

    def __init__(self, images: ImageList | str | Path, size: int, limit: int | None = None):
        images = as_image_list(images)
        if limit is not None:  # an evenly spread subset keeps every class present
            images = images.subset(np.linspace(0, len(images) - 1, num=min(limit, len(images))).round().astype(int))
        self.root, self.classes, self.samples = images.root, list(images.classes), list(images.samples)
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def batch_keys(self, step: int, indices: Sequence[int]) -> list[int]:
        """What the loader asks for: the evaluation view does not depend on the step."""
        return list(indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return decode_square(path, self.size), label


# --------------------------------------------------------------------------------------------- training crops
def sample_rng(seed: int, step: int, index: int, view: int) -> np.random.Generator:
    """The generator of one view of one image at one step: independent of every other draw."""
    return np.random.default_rng([seed, step, index, view])


def crop_box(rng: np.random.Generator, width: int, height: int, scale: tuple[float, float],
             ratio: tuple[float, float], attempts: int = 10) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a random resized crop: area a uniform fraction of the image in ``scale``,
    aspect ratio log-uniform in ``ratio``; after ``attempts`` misses, the largest centred box within ``ratio``
    (Inception / MoCo's RandomResizedCrop; the ResNeSt recipe's ERandomCrop draws the same distribution)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


@dataclass(frozen=True)
class CropSpec:
    """How the loader cuts a training view from a full image: optional RandAugment(n, m) on the whole image (the
    ResNeSt recipe's order), a random resized crop (area ``scale``, aspect ``ratio``) resized to ``size`` with
    ``interpolation``, a horizontal flip with probability 1/2; ``views`` independent views per image."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    views: int = 1
    randaug: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"crop scale {self.scale} must satisfy 0 < min <= max <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"crop ratio {self.ratio} must satisfy 0 < min <= max")

    def draw(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        if self.randaug is not None:
            img = rand_augment(img, *self.randaug, rng)
        left, top, w, h = crop_box(rng, *img.size, self.scale, self.ratio)
        view = img.resize((self.size, self.size), _RESAMPLE[self.interpolation], box=(left, top, left + w, top + h))
        return view.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else view


class TrainCrops(Dataset):
    """An ImageFolder tree (or an :class:`ImageList`) whose items are random training views, asked for by
    ``(step, index)`` keys (:meth:`batch_keys`): a uint8 ``(3, size, size)`` tensor, or ``(views, 3, size, size)``
    with several views, and the label. The draws depend only on (``seed``, step, index, view)."""

    def __init__(self, images: ImageList | str | Path, spec: CropSpec, seed: int):
        images = as_image_list(images)
        self.root, self.classes, self.samples = images.root, list(images.classes), list(images.samples)
        self.spec, self.seed = spec, seed

    def __len__(self) -> int:
        return len(self.samples)

    def batch_keys(self, step: int, indices: Sequence[int]) -> list[Key]:
        return [(step, int(i)) for i in indices]

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, int]:
        step, index = key
        path, label = self.samples[index]
        img = decode_rgb(path)
        views = [to_uint8_tensor(self.spec.draw(img, sample_rng(self.seed, step, index, v)))
                 for v in range(self.spec.views)]
        return (views[0] if self.spec.views == 1 else torch.stack(views)), label


# ------------------------------------------------------------------------------------------------------ loading
def keyed_batches(dataset: ImageFolderDataset | TrainCrops, batches: Iterable[Sequence[int]],
                  start: int = 0) -> Iterator[list]:
    """The loader's requests for a stream of index batches, the first of which is step ``start``."""
    for step, batch in enumerate(batches, start):
        yield dataset.batch_keys(step, batch)


def loader(dataset: ImageFolderDataset | TrainCrops, requests: Iterable[list], num_workers: int = 0,
           pin_memory: bool = False) -> DataLoader:
    """A loader over explicit requests, each a list of the dataset's keys (:meth:`TrainCrops.batch_keys`).

    It gets a generator of its own: a DataLoader iterator otherwise draws its worker seed from the global torch RNG,
    which would shift the augmentation stream of a resumed run against an uninterrupted one. Workers start from a
    fork server rather than as forks of this process: a process that has run a Prefect flow holds threads whose
    exit hooks fail in a forked child, which then dies with exit code 1 and no message.
    """
    return DataLoader(dataset, batch_sampler=requests, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, generator=torch.Generator().manual_seed(0),
                      multiprocessing_context="forkserver" if num_workers else None)


def batch_loader(dataset: ImageFolderDataset | TrainCrops, batches: Iterable[Sequence[int]], num_workers: int = 0,
                 pin_memory: bool = False, start: int = 0) -> DataLoader:
    """A loader over a stream of index batches (see :class:`pinas.engine.sampler.EpochBatchSampler`) whose first
    batch is step ``start`` (what the training crops are seeded with)."""
    return loader(dataset, keyed_batches(dataset, batches, start), num_workers, pin_memory)


def sequential_batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


def check_classes(expected: list[str], folder: Path, what: str) -> None:
    """Fail naming the folder when its classes differ from ``expected`` (e.g. the ones a head was trained on)."""
    _, classes = scan_image_folder(folder)
    if classes != list(expected):
        raise DataError(f"{what} {folder}: classes {classes} differ from the expected {list(expected)}")
