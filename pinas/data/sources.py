"""Where each stage's data comes from: generated demo data, or the user's dataset folders, checked before training.

``resolve_datasets`` returns the dataset roots a run uses and a fingerprint of each
(:mod:`pinas.data.fingerprint`: names, sizes, mtimes, annotation contents), which goes into the cache keys of the
stages that read it, so changed data is never served from the cache. Folders are checked for the layout the stages
expect, so a wrong path fails at once with the field and path in the message, not an hour into training.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from pinas.data.demo import DemoDataSpec, generate_all
from pinas.data.fingerprint import DigestCache, fingerprint_tree
from pinas.data.images import DataError, SearchHoldout

DATASETS = ("imagenet", "coco", "ade20k", "cityscapes")
FINGERPRINT_CACHE = "annotation-digests.json"  # under <run root>/data/

#: sub-paths each dataset root must contain (the stock OpenMMLab / ImageFolder layouts)
REQUIRED_LAYOUT = {
    "imagenet": ("train", "val"),
    "coco": ("train2017", "val2017", "annotations/instances_train2017.json", "annotations/instances_val2017.json"),
    "ade20k": ("images/training", "images/validation", "annotations/training", "annotations/validation"),
    "cityscapes": ("leftImg8bit/train", "leftImg8bit/val", "gtFine/train", "gtFine/val"),
}


class DataConfig(BaseModel):
    """``generated``: make the demo datasets under the run root; ``folders``: use the paths given here.
    ``search_holdout``: the part of ImageNet ``train/`` the search scores on, which the supernet and the linear
    probe never train on (every stage that reads it takes it from here)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["generated", "folders"] = "folders"
    generated: DemoDataSpec = DemoDataSpec()
    search_holdout: SearchHoldout = SearchHoldout()
    imagenet: Path | None = None
    coco: Path | None = None
    ade20k: Path | None = None
    cityscapes: Path | None = None


def check_layout(name: str, root: Path) -> None:
    """Raise :class:`DataError` naming ``data.<name>`` and the first missing sub-path."""
    if not root.is_dir():
        raise DataError(f"data.{name}: folder {root} does not exist")
    for rel in REQUIRED_LAYOUT[name]:
        if not (root / rel).exists():
            raise DataError(f"data.{name}: {root} is not in the {name} layout: {root / rel} is missing")


def check_folders(cfg: DataConfig, needed: tuple[str, ...]) -> None:
    """Before anything runs: user-given dataset folders exist and have their layout (generated data is made later)."""
    if cfg.source == "folders":
        for name in needed:
            path = getattr(cfg, name)
            if path is None:
                raise DataError(f"data.{name}: no path given (needed by the stages this run includes)")
            check_layout(name, Path(path).expanduser())


def resolve_datasets(cfg: DataConfig, run_root: Path, needed: tuple[str, ...] = DATASETS) -> dict[str, dict]:
    """{name: {"path": str, "fingerprint": str}} for each dataset in ``needed``, generating demo data if asked."""
    if cfg.source == "generated":
        spec_key = hashlib.sha256(json.dumps(asdict(cfg.generated), sort_keys=True).encode()).hexdigest()[:12]
        roots = generate_all(Path(run_root) / "data" / f"demo-{spec_key}", cfg.generated)
        chosen = {name: roots[name] for name in needed}
    else:
        check_folders(cfg, needed)
        chosen = {name: Path(getattr(cfg, name)).expanduser() for name in needed}
    cache = DigestCache(Path(run_root) / "data" / FINGERPRINT_CACHE)
    out = {}
    for name, root in chosen.items():
        check_layout(name, root)
        out[name] = {"path": str(root), "fingerprint": fingerprint_tree(root, cache)}
    return out

