"""What a transfer config must satisfy before anything trains: checked in seconds, each error naming its cause.

* the model accepts the backbone: built without weights and run on one small zero image, so a neck or head whose
  ``in_channels`` do not match the backbone's stage channels fails here, not after the first epoch;
* every train / val split has images once the config's own filtering (``filter_cfg``, its classes) is applied;
* segmentation label maps hold only the training classes and the ignore index (a sample of each split is read).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pinas.openmmlab.datasets import describe, loader_datasets

#: label maps read per split for the range check (evenly spread); reading all of ADE20K would take minutes
LABEL_SAMPLE = 32
PROBE_SIZE = 128


class TransferConfigError(ValueError):
    """A transfer config that cannot train on its data; the message names the config, the field or the file."""


def _scope(cfg) -> str:
    return cfg.get("default_scope", "mmdet")


def registries(cfg):
    """(MODELS, DATASETS) of the config's scope, with it set as the default scope."""
    from mmengine.registry import init_default_scope

    init_default_scope(_scope(cfg))
    if _scope(cfg) == "mmseg":
        from mmseg.registry import DATASETS, MODELS
    else:
        from mmdet.registry import DATASETS, MODELS
    return MODELS, DATASETS


def check_model(cfg, config: Path) -> None:
    """Build the model (no pretrained weights) and run it on one zero image."""
    models, _ = registries(cfg)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone["init_cfg"] = None
    try:
        model = models.build(model_cfg).eval()
        x = torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE)
        with torch.no_grad():
            if _scope(cfg) == "mmseg":
                model._forward(x)
            else:
                from mmdet.structures import DetDataSample

                size = (PROBE_SIZE, PROBE_SIZE)
                model._forward(x, [DetDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size,
                                                               batch_input_shape=size, scale_factor=(1.0, 1.0)))])
    except Exception as exc:  # the point is to turn whatever the model raises into one sentence
        backbone = cfg.model.backbone
        raise TransferConfigError(
            f"{config}: the model does not accept the backbone {backbone.get('type')} ({backbone.get('space')} "
            f"{backbone.get('arch')}, out_indices {tuple(backbone.get('out_indices', (0, 1, 2, 3)))}): "
            f"{type(exc).__name__}: {exc}; check the neck / heads' in_channels") from None


def _label_values(path: str) -> np.ndarray:
    with Image.open(path) as img:
        return np.unique(np.asarray(img))


def check_datasets(cfg, config: Path, classes: tuple[str, ...]) -> None:
    """Every train / val dataset has samples after filtering; segmentation labels lie in the classes."""
    _, datasets = registries(cfg)
    ignore = 255
    for split, ds_cfg in loader_datasets(cfg):
        where = f"{config}: {describe(split, ds_cfg)}"
        try:
            dataset = datasets.build({**ds_cfg, "lazy_init": True})  # its pipeline is built too, not run
            # what full_init does, in steps: an empty result would otherwise surface as numpy's "need at least
            # one array to concatenate" when MMEngine packs the list
            dataset.data_list = dataset.load_data_list()
            loaded = len(dataset.data_list)
            samples = dataset.filter_data()
        except Exception as exc:
            raise TransferConfigError(f"{where}: cannot be read ({type(exc).__name__}: {exc})") from None
        if not samples:
            kept = dataset.metainfo.get("classes")
            raise TransferConfigError(
                f"{where}: empty after the config's filtering ({loaded} samples read, none kept by filter_cfg "
                f"{ds_cfg.get('filter_cfg')} with classes {tuple(kept) if kept else None}); do the annotation "
                "file's categories and boxes / the folder's images match what the config expects?")
        infos = [samples[i] for i in np.linspace(0, len(samples) - 1, min(LABEL_SAMPLE, len(samples)))
                 .round().astype(int)]
        for info in infos:
            if not info.get("seg_map_path"):
                break
            values = _label_values(info["seg_map_path"]).astype(np.int64)
            if info.get("reduce_zero_label"):
                values = np.where(values == 0, ignore, values - 1)
            label_map = info.get("label_map") or {}
            values = np.array([label_map.get(int(v), int(v)) for v in values])
            bad = sorted(int(v) for v in values if not (0 <= v < len(classes) or v == ignore))
            if bad:
                raise TransferConfigError(
                    f"{where}: label map {info['seg_map_path']} holds values {bad} outside the {len(classes)} "
                    f"classes {classes} and the ignore index {ignore} (reduce_zero_label="
                    f"{bool(info.get('reduce_zero_label'))})")


def check_transfer(cfg, config: Path, classes: tuple[str, ...]) -> None:
    check_model(cfg, config)
    check_datasets(cfg, config, classes)
