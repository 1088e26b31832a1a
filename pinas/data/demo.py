"""Seeded demo data written in the real on-disk formats: ImageNet folder, COCO 2017, ADE20K and Cityscapes.

Why generated: the demo profile must run the *real* pipeline (stock MMDetection / MMSegmentation dataset classes,
ImageFolder-style classification) offline, on CPU, in minutes, and still learn something measurable.

Why one scene description: a :class:`Scene` (textured background + ordered list of shapes) is the single source of
every label. :func:`render_scene` turns it into an RGB image, an instance-id map and a class map; the COCO boxes and
masks, the ADE20K label PNG and the Cityscapes trainId PNG are all read off those two maps, so they cannot disagree.
Detection and segmentation sets share their scenes (same seed, split and index), which makes the agreement checkable
on the written files. Colours are random, so the class is carried by the shape alone.

Why per-image generators: each image's RNG is derived from (seed, stream, split, index), so an image does not depend
on how many others were generated, and the same spec always gives byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
ROUND_CLASSES = frozenset({"circle", "ring"})  # written as RLE in COCO; the polygonal ones as polygons
IGNORE_INDEX = 255  # Cityscapes trainId "ignore" and the background of class maps
MIN_INSTANCE_PIXELS = 16  # an instance occluded below this is never kept in a scene
MAX_OCCLUDED_FRACTION = 0.5  # later shapes may hide at most this much of an earlier one
FORMAT_VERSION = 2  # bump when the rendering changes, so stale folders are reported instead of reused
JPEG_QUALITY = 90
SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}
_STREAM_CODE = {"cls": 1, "det": 2}
_CITIES = {"train": "demotown", "val": "demoville"}

# Which spec fields a dataset depends on: changing the detection sizes must not invalidate the ImageNet folder.
_DET_FIELDS = ("seed", "num_classes", "det_image_size", "det_train_images", "det_val_images", "max_objects")
_SPEC_FIELDS = {"imagenet": ("seed", "num_classes", "cls_image_size", "cls_train_per_class", "cls_val_per_class"),
                "coco": _DET_FIELDS, "ade20k": _DET_FIELDS, "cityscapes": _DET_FIELDS}


@dataclass(frozen=True)
class DemoDataSpec:
    """Sizes of the generated data; the defaults keep a CPU demo to seconds of generation."""

    seed: int = 0
    num_classes: int = 5  # takes a prefix of SHAPE_CLASSES
    cls_image_size: int = 72  # ImageNet-style images (the demo network crops 64 px from these)
    cls_train_per_class: int = 120
    cls_val_per_class: int = 30
    det_image_size: int = 128  # COCO / ADE20K / Cityscapes images
    det_train_images: int = 48
    det_val_images: int = 16
    max_objects: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes <= len(SHAPE_CLASSES):
            raise ValueError(f"num_classes must be in 1..{len(SHAPE_CLASSES)}, got {self.num_classes}")
        counts = (self.seed, self.cls_train_per_class, self.cls_val_per_class, self.det_train_images,
                  self.det_val_images)
        if min(counts) < 0 or self.max_objects < 1 or min(self.cls_image_size, self.det_image_size) < 32:
            raise ValueError(f"invalid {self}: seed and counts must be >= 0, max_objects >= 1 and image sizes "
                             ">= 32 px (smaller shapes are too small to label reliably)")

    @property
    def classes(self) -> tuple[str, ...]:
        return SHAPE_CLASSES[: self.num_classes]


@dataclass(frozen=True)
class Shape:
    """One object. Geometry is in units of the image side, so a scene can be rendered at any size."""

    cls: int  # index into SHAPE_CLASSES
    color: tuple[int, int, int]
    cx: float
    cy: float
    radius: float  # circumradius
    angle: float  # radians; ignored by round shapes


@dataclass(frozen=True)
class Background:
    kind: str  # "noise" | "stripes" | "gradient"
    color_a: tuple[int, int, int]
    color_b: tuple[int, int, int]
    angle: float
    frequency: float  # stripe cycles per image side, or noise grid cells
    seed: int  # texture noise and pixel grain


@dataclass(frozen=True)
class Scene:
    background: Background
    shapes: tuple[Shape, ...]  # painted in order: later shapes occlude earlier ones


class Rendering(NamedTuple):
    rgb: np.ndarray  # (H, W, 3) uint8
    instance_ids: np.ndarray  # (H, W) int32: 0 background, i + 1 where scene.shapes[i] is visible
    class_map: np.ndarray  # (H, W) uint8: shape class index, IGNORE_INDEX for background


# --------------------------------------------------------------------------------------------- geometry & rendering
def _regular_polygon(n: int, start: float) -> np.ndarray:
    angles = start + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


_W = 0.35  # half-width of a cross arm
_UNIT_POLYGONS = {"square": _regular_polygon(4, np.pi / 4), "triangle": _regular_polygon(3, -np.pi / 2),
                  "cross": np.array([(_W, -1), (_W, -_W), (1, -_W), (1, _W), (_W, _W), (_W, 1), (-_W, 1), (-_W, _W),
                                     (-1, _W), (-1, -_W), (-_W, -_W), (-_W, -1)])}


def shape_polygon(shape: Shape, size: int) -> np.ndarray | None:
    """Vertices (N, 2) in pixels, or None for round shapes.

    Rounded to 1/100 px so the polygon stored in the COCO JSON is exactly the one that was rasterised.
    """
    name = SHAPE_CLASSES[shape.cls]
    if name in ROUND_CLASSES:
        return None
    cos, sin = np.cos(shape.angle), np.sin(shape.angle)
    unit = _UNIT_POLYGONS[name] @ np.array([[cos, sin], [-sin, cos]])
    return np.round((unit * shape.radius + (shape.cx, shape.cy)) * size, 2)


def shape_mask(shape: Shape, size: int) -> np.ndarray:
    """Full (unoccluded) boolean mask of a shape.

    Polygons are rasterised with pycocotools, the same code that decodes COCO polygons in ``annToMask`` and in
    MMDetection's ``LoadAnnotations``, so a stored polygon decodes to exactly the rendered pixels.
    """
    polygon = shape_polygon(shape, size)
    if polygon is not None:
        rles = mask_utils.frPyObjects([polygon.ravel().tolist()], size, size)
        with warnings.catch_warnings():  # pycocotools' Cython decode trips a NumPy 2 copy-keyword warning
            warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
            return mask_utils.decode(rles)[:, :, 0].astype(bool)
    centres = (np.arange(size) + 0.5) / size
    d2 = (centres[None, :] - shape.cx) ** 2 + (centres[:, None] - shape.cy) ** 2
    if SHAPE_CLASSES[shape.cls] == "circle":
        return d2 <= (0.85 * shape.radius) ** 2
    outer = 0.9 * shape.radius
    return ((0.55 * outer) ** 2 <= d2) & (d2 <= outer**2)


def _render_background(bg: Background, size: int) -> np.ndarray:
    """Float RGB texture: two colours blended by a noise/stripe/gradient weight, the "stuff" to learn to ignore."""
    rng = np.random.default_rng([bg.seed, 0])
    if bg.kind == "noise":
        cells = max(2, int(bg.frequency))
        grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32))
        weight = np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC)).clip(0, 1)
    else:
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size
        u = coords[None, :] * np.cos(bg.angle) + coords[:, None] * np.sin(bg.angle)
        if bg.kind == "stripes":
            weight = 0.5 + 0.5 * np.sin(2 * np.pi * bg.frequency * u)
        else:
            weight = (u - u.min()) / max(float(np.ptp(u)), 1e-6)
    a, b = np.array(bg.color_a, np.float32), np.array(bg.color_b, np.float32)
    return a + weight[:, :, None] * (b - a)


def render_scene(scene: Scene, size: int) -> Rendering:
    """Paint a scene at ``size`` x ``size``; every label of every format is derived from the returned maps."""
    rgb = _render_background(scene.background, size)
    instance_ids = np.zeros((size, size), np.int32)
    class_map = np.full((size, size), IGNORE_INDEX, np.uint8)
    for i, shape in enumerate(scene.shapes):
        mask = shape_mask(shape, size)
        rgb[mask] = shape.color
        instance_ids[mask] = i + 1
        class_map[mask] = shape.cls
    grain = np.random.default_rng([scene.background.seed, 1]).integers(-8, 9, rgb.shape, dtype=np.int16)
    return Rendering((rgb + grain).clip(0, 255).astype(np.uint8), instance_ids, class_map)


# --------------------------------------------------------------------------------------------- scene sampling
def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    return int(values[0]), int(values[1]), int(values[2])


def _shape_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A light colour (150-255 per channel): shapes are always lighter than the dark backgrounds.

    One polarity on purpose: when a shape could be lighter *or* darker than its background, a network first has
    to learn to ignore the sign of the contrast, and a few CPU epochs on 600 images were not enough (retraining
    stayed at chance, about 22 %, against about 78 % with one polarity, random colours and textures kept).
    """
    return _rgb(rng.integers(150, 256, 3))


def _sample_background(rng: np.random.Generator) -> Background:
    kind = ("noise", "stripes", "gradient")[int(rng.integers(3))]
    color_a = rng.integers(0, 111, 3)
    color_b = (color_a + rng.integers(-40, 41, 3)).clip(0, 110)
    return Background(kind, _rgb(color_a), _rgb(color_b), angle=float(rng.uniform(0, np.pi)),
                      frequency=float(rng.uniform(2, 7)), seed=int(rng.integers(2**31)))


def _sample_shape(rng: np.random.Generator, cls: int, radius: tuple[float, float],
                  centre: tuple[float, float] | None = None) -> Shape:
    r = float(rng.uniform(*radius))
    lo, hi = centre if centre is not None else (r, 1 - r)  # keep detection shapes inside the frame
    return Shape(cls, _shape_color(rng), cx=float(rng.uniform(lo, hi)),
                 cy=float(rng.uniform(lo, hi)), radius=r, angle=float(rng.uniform(0, 2 * np.pi)))


def _rng(spec: DemoDataSpec, stream: str, split: str, *index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, _STREAM_CODE[stream], _SPLIT_CODE[split], *index])


def cls_scene(spec: DemoDataSpec, split: str, cls: int, index: int) -> Scene:
    """Classification scene: one large, roughly centred shape of class ``cls`` (survives a 64-of-72 px crop)."""
    rng = _rng(spec, "cls", split, cls, index)
    bg = _sample_background(rng)
    return Scene(bg, (_sample_shape(rng, cls, radius=(0.2, 0.32), centre=(0.4, 0.6)),))


def det_scene(spec: DemoDataSpec, split: str, index: int) -> Scene:
    """Detection/segmentation scene: 1..max_objects shapes that may overlap partially.

    A candidate is rejected (and redrawn, at most 10 times) if it would leave an earlier instance with less than
    half of its area or fewer than MIN_INSTANCE_PIXELS pixels; dropping such candidates *in the scene* keeps every
    label format consistent. Every scene has at least one object, and its last shape is fully visible.
    """
    rng = _rng(spec, "det", split, index)
    bg, size = _sample_background(rng), spec.det_image_size
    shapes: list[Shape] = []
    full: list[int] = []
    visible: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        for _try in range(10):
            cand = _sample_shape(rng, int(rng.integers(spec.num_classes)), radius=(0.08, 0.2))
            mask = shape_mask(cand, size)
            after = [v & ~mask for v in visible]
            keeps = [a.sum() >= max(MIN_INSTANCE_PIXELS, (1 - MAX_OCCLUDED_FRACTION) * f) for a, f in zip(after, full)]
            if mask.sum() >= MIN_INSTANCE_PIXELS and all(keeps):
                shapes.append(cand)
                full.append(int(mask.sum()))
                visible = after + [mask]
                break
    if not shapes:  # only reachable for tiny images; a big centred shape always fits
        shapes.append(_sample_shape(rng, int(rng.integers(spec.num_classes)), (0.3, 0.3), (0.5, 0.5)))
    return Scene(bg, tuple(shapes))


# --------------------------------------------------------------------------------------------- labels from a rendering
def coco_annotations(scene: Scene, rendering: Rendering) -> list[dict]:
    """COCO annotations (without ids) read off the instance-id map, so boxes and masks reflect occlusion.

    Unoccluded polygonal shapes are stored as polygons; round shapes and anything occluded (which may be split or
    holed) as compressed RLE. Note that MMDetection keeps RLE instances only with ``poly2mask=True`` (the default).
    """
    size = rendering.instance_ids.shape[0]
    anns = []
    for i, shape in enumerate(scene.shapes):
        mask = rendering.instance_ids == i + 1
        area = int(mask.sum())
        if area == 0:
            continue
        ys, xs = np.nonzero(mask)
        polygon = shape_polygon(shape, size)
        if polygon is not None and area == int(shape_mask(shape, size).sum()):
            segmentation: list | dict = [polygon.ravel().tolist()]
        else:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        anns.append({"category_id": shape.cls + 1, "bbox": bbox, "area": area, "iscrowd": 0,
                     "segmentation": segmentation})
    return anns


def ade20k_label(class_map: np.ndarray) -> np.ndarray:
    """ADE20K convention: 0 = "other" (dropped by reduce_zero_label), class k stored as k + 1."""
    return np.where(class_map == IGNORE_INDEX, 0, class_map.astype(np.int32) + 1).astype(np.uint8)


def cityscapes_label(class_map: np.ndarray) -> np.ndarray:
    """Cityscapes labelTrainIds convention: trainId = class index, 255 = ignore."""
    return class_map.copy()


# --------------------------------------------------------------------------------------------- writers
def _save_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(path, format="PNG")


def _det_renderings(spec: DemoDataSpec, split: str) -> Iterator[tuple[int, Scene, Rendering]]:
    """The shared scenes of the detection and segmentation sets, in index order."""
    count = spec.det_train_images if split == "train" else spec.det_val_images
    for index in range(count):
        scene = det_scene(spec, split, index)
        yield index, scene, render_scene(scene, spec.det_image_size)


def _build_imagenet(out: Path, spec: DemoDataSpec) -> dict[str, int]:
    counts = {}
    for split, per_class in zip(SPLITS, (spec.cls_train_per_class, spec.cls_val_per_class)):
        for cls, name in enumerate(spec.classes):
            (out / split / name).mkdir(parents=True, exist_ok=True)  # a class folder exists even when empty
            for i in range(per_class):
                rgb = render_scene(cls_scene(spec, split, cls, i), spec.cls_image_size).rgb
                _save_image(out / split / name / f"{name}_{i:05d}.JPEG", rgb)
        counts[split] = per_class * spec.num_classes
    return counts


def _build_coco(out: Path, spec: DemoDataSpec) -> dict[str, int]:
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(spec.classes)]
    counts = {}
    for split, folder in zip(SPLITS, ("train2017", "val2017")):
        (out / folder).mkdir(parents=True, exist_ok=True)
        images: list[dict] = []
        annotations: list[dict] = []
        for index, scene, rendering in _det_renderings(spec, split):
            image_id = index + 1
            file_name = f"{image_id:012d}.jpg"
            _save_image(out / folder / file_name, rendering.rgb)
            images.append({"id": image_id, "file_name": file_name, "width": spec.det_image_size,
                           "height": spec.det_image_size})
            for ann in coco_annotations(scene, rendering):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
        doc = {"info": {"description": "pinas demo shapes", "version": str(FORMAT_VERSION)}, "licenses": [],
               "images": images, "annotations": annotations, "categories": categories}
        (out / "annotations").mkdir(exist_ok=True)
        (out / "annotations" / f"instances_{folder}.json").write_text(json.dumps(doc))
        counts[split], counts[f"{split}_annotations"] = len(images), len(annotations)
    return counts


def _segmentation_builder(paths: Callable[[str, int], tuple[str, str]],
                          to_label: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path, DemoDataSpec], dict]:
    """Writer for an (image, label PNG) dataset; formats differ only in their paths and label convention."""

    def build(out: Path, spec: DemoDataSpec) -> dict[str, int]:
        counts = {}
        for split in SPLITS:
            counts[split] = 0
            for index, _scene, rendering in _det_renderings(spec, split):
                image_path, label_path = paths(split, index)
                _save_image(out / image_path, rendering.rgb)
                _save_image(out / label_path, to_label(rendering.class_map))
                counts[split] += 1
        return counts

    return build


def _ade20k_paths(split: str, index: int) -> tuple[str, str]:
    folder, stem = ("training", "ADE_train") if split == "train" else ("validation", "ADE_val")
    name = f"{stem}_{index + 1:08d}"
    return f"images/{folder}/{name}.jpg", f"annotations/{folder}/{name}.png"


def _cityscapes_paths(split: str, index: int) -> tuple[str, str]:
    city = _CITIES[split]
    stem = f"{city}/{city}_000000_{index:06d}"
    return f"leftImg8bit/{split}/{stem}_leftImg8bit.png", f"gtFine/{split}/{stem}_gtFine_labelTrainIds.png"


# --------------------------------------------------------------------------------------------- atomic publication
def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")


def _check_existing(target: Path, name: str, spec: DemoDataSpec) -> None:
    """Accept an existing folder only if its manifest matches; never delete or rewrite user data."""
    fields = _SPEC_FIELDS[name]
    problem = None
    try:
        manifest = json.loads((target / "manifest.json").read_text())
    except FileNotFoundError:
        problem = "has no manifest.json (not generated by pinas.demo_data?)"
    except (OSError, ValueError) as exc:
        problem = f"has an unreadable manifest.json ({exc})"
    else:
        wanted = {k: v for k, v in asdict(spec).items() if k in fields}
        found = {k: manifest.get("spec", {}).get(k) for k in fields}
        if manifest.get("format_version") != FORMAT_VERSION:
            problem = f"has format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        elif found != wanted:
            problem = f"was generated from a different spec ({found} != {wanted})"
        elif manifest.get("num_files") != _count_files(target):
            problem = f"holds {_count_files(target)} files but its manifest lists {manifest.get('num_files')}"
    if problem:
        raise FileExistsError(f"demo dataset folder {target} already exists and {problem}; refusing to overwrite "
                              "it. Remove the folder or generate into another root.")


def _publish(root: Path, name: str, spec: DemoDataSpec, build: Callable[[Path, DemoDataSpec], dict]) -> Path:
    """Build into a hidden sibling directory, then rename it into place, so readers never see half a dataset."""
    root = Path(root)
    target = root / name
    if target.exists():
        _check_existing(target, name, spec)
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
    try:
        counts = build(tmp, spec)
        manifest = {"dataset": name, "format_version": FORMAT_VERSION, "spec": asdict(spec),
                    "spec_fields": list(_SPEC_FIELDS[name]), "classes": list(spec.classes), "counts": counts,
                    "num_files": _count_files(tmp)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is meant to be shared
        try:
            os.rename(tmp, target)
        except OSError:  # another process published first: fine if it made the same dataset
            if not target.exists():
                raise
            _check_existing(target, name, spec)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def generate_imagenet(root: Path, spec: DemoDataSpec) -> Path:
    """ImageFolder tree ``imagenet/{train,val}/<class>/<class>_<i>.JPEG``; returns root/"imagenet"."""
    return _publish(root, "imagenet", spec, _build_imagenet)


def generate_coco(root: Path, spec: DemoDataSpec) -> Path:
    """COCO 2017 layout (``train2017/``, ``val2017/``, ``annotations/instances_*.json``); returns root/"coco"."""
    return _publish(root, "coco", spec, _build_coco)


def generate_ade20k(root: Path, spec: DemoDataSpec) -> Path:
    """mmseg ADE20K layout (``images/`` + ``annotations/`` per split, reduce_zero_label labels)."""
    return _publish(root, "ade20k", spec, _segmentation_builder(_ade20k_paths, ade20k_label))


def generate_cityscapes(root: Path, spec: DemoDataSpec) -> Path:
    """mmseg Cityscapes layout (``leftImg8bit/`` + ``gtFine/*_labelTrainIds.png``, 255 = ignore)."""
    return _publish(root, "cityscapes", spec, _segmentation_builder(_cityscapes_paths, cityscapes_label))


def generate_all(root: Path, spec: DemoDataSpec) -> dict[str, Path]:
    """Every demo dataset under ``root``; each is skipped if already generated from the same spec."""
    return {"imagenet": generate_imagenet(root, spec), "coco": generate_coco(root, spec),
            "ade20k": generate_ade20k(root, spec), "cityscapes": generate_cityscapes(root, spec)}
