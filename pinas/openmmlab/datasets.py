"""The datasets of an OpenMMLab config as the transfer stage sees them: where they read, which classes they have.

The class names come from the data, not from a list a config happens to carry: for a COCO-format dataset they are
the annotation file's categories (ordered by id), written into every dataloader's ``metainfo`` and into the heads'
``num_classes``, so a user's own categories work with an unchanged paper config. For segmentation they are the
config's ``metainfo`` classes (or the dataset class's own, e.g. ADE20K's 150), and the heads follow them.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SPLITS = ("train", "val")  # the loaders the transfer stage uses (test_* stays as the config says)
COCO_TYPES = ("CocoDataset", "CocoPanopticDataset")
#: heads whose ``num_classes`` is the number of object / pixel classes (an RPN's "object" class is not)
CLASS_HEADS = ("bbox_head", "mask_head", "decode_head", "auxiliary_head")


def dataset_cfgs(dataset_cfg: Any) -> list:
    """A dataset config and the ones it wraps (RepeatDataset, ConcatDataset, ClassBalancedDataset...)."""
    if not isinstance(dataset_cfg, dict):
        return []
    inner = [dataset_cfg.get("dataset")] + list(dataset_cfg.get("datasets") or [])
    wrapped = [d for sub in inner if sub is not None for d in dataset_cfgs(sub)]
    return wrapped or [dataset_cfg]


def loader_datasets(cfg, splits: tuple[str, ...] = SPLITS) -> Iterator[tuple[str, dict]]:
    """(split, dataset config) for every dataset the given splits' dataloaders read."""
    for split in splits:
        loader = cfg.get(f"{split}_dataloader")
        for ds in dataset_cfgs(loader.get("dataset") if loader else None):
            yield split, ds


def describe(split: str, ds: dict) -> str:
    return f"{split}_dataloader.dataset ({ds.get('type')}, data_root {str(ds.get('data_root') or '')!r})"


def set_data_root(cfg, data_root: Path) -> None:
    for _, ds in loader_datasets(cfg, ("train", "val", "test")):
        ds["data_root"] = str(data_root)
    for split in ("train", "val", "test"):
        evaluator = cfg.get(f"{split}_evaluator")
        datasets = [ds for s, ds in loader_datasets(cfg, (split,))]
        if isinstance(evaluator, dict) and "ann_file" in evaluator and datasets and datasets[0].get("ann_file"):
            # e.g. CocoMetric scores against the validation annotation file of the same data root
            evaluator["ann_file"] = str(data_root / datasets[0]["ann_file"])


def check_paths(cfg) -> None:
    """Every folder and annotation file the train/val loaders and evaluator read must exist; name the first not."""
    for split, ds in loader_datasets(cfg):
        root, where = Path(ds.get("data_root") or ""), describe(split, ds)
        if ds.get("data_root") and not root.is_dir():
            raise FileNotFoundError(f"{where}: data root {root} does not exist")
        if ds.get("ann_file") and not (root / ds["ann_file"]).is_file():
            raise FileNotFoundError(f"{where}: annotation file {root / ds['ann_file']} does not exist")
        for key, prefix in (ds.get("data_prefix") or {}).items():
            if prefix and not (root / prefix).is_dir():
                raise FileNotFoundError(f"{where}: data_prefix.{key} folder {root / prefix} does not exist")
    for split in SPLITS:
        evaluator = cfg.get(f"{split}_evaluator")
        if isinstance(evaluator, dict) and evaluator.get("ann_file") and not Path(evaluator["ann_file"]).is_file():
            raise FileNotFoundError(f"{split}_evaluator: ann_file {evaluator['ann_file']} does not exist")


def coco_categories(ann_file: Path) -> list[str]:
    """The category names of a COCO annotation file, ordered by category id."""
    try:
        categories = json.loads(Path(ann_file).read_text()).get("categories") or []
    except (OSError, ValueError) as exc:
        raise ValueError(f"annotation file {ann_file} is not readable COCO JSON ({exc})") from exc
    if not categories:
        raise ValueError(f"annotation file {ann_file} lists no categories")
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def class_heads(model_cfg: dict, path: str = "model") -> Iterator[tuple[str, dict]]:
    """(dotted path, head config) of every head in ``CLASS_HEADS`` that has a ``num_classes``."""
    for key, value in model_cfg.items():
        for i, head in enumerate(value if isinstance(value, list) else [value]):
            where = f"{path}.{key}" + (f".{i}" if isinstance(value, list) else "")
            if isinstance(head, dict):
                if key in CLASS_HEADS and "num_classes" in head:
                    yield where, head
                yield from class_heads(head, where)


def dataset_classes(ds: dict, registry) -> tuple[str, ...]:
    """The classes a dataset config declares in its ``metainfo``, else its dataset class's own."""
    declared = (ds.get("metainfo") or {}).get("classes")
    return tuple(declared) if declared else tuple(registry.get(ds["type"]).METAINFO.get("classes") or ())


def apply_data_classes(cfg, registry) -> tuple[str, ...]:
    """The classes of the training data, written where the config needs them; returns them.

    COCO-format data: the training annotation file's categories become every loader's ``metainfo.classes``. Then,
    for any data, the heads' ``num_classes`` follow the training dataset's classes. ``registry`` is the scope's
    DATASETS registry (it knows each dataset class's default classes).
    """
    train = next((ds for s, ds in loader_datasets(cfg, ("train",))), None)
    if train is None:
        raise ValueError("the config has no train_dataloader.dataset")
    if train.get("type") in COCO_TYPES and train.get("ann_file"):
        classes = tuple(coco_categories(Path(train.get("data_root") or "") / train["ann_file"]))
        for _, ds in loader_datasets(cfg, ("train", "val", "test")):
            if ds.get("type") in COCO_TYPES:
                ds["metainfo"] = {**(ds.get("metainfo") or {}), "classes": classes}
    else:
        classes = dataset_classes(train, registry)
    if not classes:
        raise ValueError(f"{describe('train', train)}: no class names (give metainfo=dict(classes=...))")
    for _, head in class_heads(cfg.model):
        head["num_classes"] = len(classes)
    return classes
