"""Every error a run can know about before training is reported before training, naming the field or the file.

``check_run`` is what a pipeline run does right after resolving its data (the CLI turns its error into exit 2).
The datasets are copies of the generated demo data in the real formats, edited the way users get them wrong.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from pinas.config import ConfigError, load_config
from pinas.data.sources import DataConfig, resolve_datasets
from pinas.preflight import PreflightError, check_run, mmcv_cuda_ops

#: 80 ImageNet-format training images: the search holdout (a tenth) leaves the demo probe's global batch of 64
SMALL = {"det_train_images": 4, "det_val_images": 2, "cls_train_per_class": 16, "cls_val_per_class": 2}


@pytest.fixture()
def folders(demo_data, tmp_path):
    """Users' folders: copies of the generated data (without the generator's manifest)."""
    out = {}
    for kind in ("imagenet", "coco", "ade20k", "cityscapes"):
        out[kind] = tmp_path / "data" / kind
        shutil.copytree(demo_data(kind, **SMALL), out[kind])
        (out[kind] / "manifest.json").unlink()
    return out


def _check(folders, tmp_path, **overrides):
    config = load_config(profile="demo", overrides={"data": {"source": "folders", **{k: str(v) for k, v in
                                                                                      folders.items()}}, **overrides})
    datasets = resolve_datasets(DataConfig(**config.data.model_dump()), tmp_path / "run")
    check_run(config, datasets, tmp_path / "run")


def test_good_settings_pass_and_the_transfer_checks_are_remembered(folders, tmp_path):
    _check(folders, tmp_path)
    remembered = sorted(p.name.split("-")[0] for p in (tmp_path / "run" / "preflight").glob("*.json"))
    assert remembered == ["ade20k", "cityscapes", "coco"]


def test_unreachable_constraints_and_latency_fail_before_training(folders, tmp_path):
    with pytest.raises(PreflightError, match=r"search: no architecture satisfies max_params_m = 0.001: params in "
                                             r"space 'demo' range from"):
        _check(folders, tmp_path, search={"max_params_m": 0.001}, stages=["supernet", "search"])
    with pytest.raises(ConfigError, match=r"search.max_latency_ms = 5.0 needs search.latency_table"):
        _check(folders, tmp_path, search={"max_latency_ms": 5.0})
    table = tmp_path / "latency.json"
    table.write_text(json.dumps({"fixed_ms": 1.0, "layers": [[1.0, 2.0, 3.0, 4.0]] * 8}))
    with pytest.raises(PreflightError, match=r"max_latency_ms = 2.0: the fastest takes 9.000 ms"):
        _check(folders, tmp_path, search={"max_latency_ms": 2.0, "latency_table": str(table)},
               stages=["supernet", "search"])
    table.write_text(json.dumps({"layers": [[1.0, 2.0]] * 8}))
    with pytest.raises(PreflightError, match=r"search.latency_table: .*layers\[0\] must list 4 ms values"):
        _check(folders, tmp_path, search={"latency_table": str(table)}, stages=["supernet", "search"])


def test_the_linear_probe_proxy_needs_labelled_classes(folders, tmp_path):
    for split in ("train", "val"):
        for extra in sorted((folders["imagenet"] / split).iterdir())[1:]:
            shutil.rmtree(extra)
    with pytest.raises(PreflightError, match=r"search.evaluator.proxy: linear_probe needs labelled images of at least "
                                             r"2 classes"):
        _check(folders, tmp_path, search={"evaluator": {"proxy": "linear_probe"}}, stages=["supernet", "search"])


def test_a_transfer_model_that_does_not_take_the_backbone(folders, tmp_path):
    bad_neck = {"tasks": {"coco": {"cfg_options": {"model.neck.in_channels": [256, 512, 1024, 2048]}},
                          "ade20k": {"enabled": False}, "cityscapes": {"enabled": False}}}
    with pytest.raises(PreflightError, match=r"transfer.tasks.coco \(demo_mask-rcnn_coco.py\): .*does not accept the "
                                             r"backbone PiNASResNeSt \(demo .*expected input.* to have 256 channels"):
        _check(folders, tmp_path, transfer=bad_neck)


def test_annotations_that_filtering_empties_and_labels_outside_the_classes(folders, tmp_path):
    train = folders["coco"] / "annotations" / "instances_train2017.json"
    data = json.loads(train.read_text())
    train.write_text(json.dumps({**data, "annotations": []}))  # no image keeps a box: filter_empty_gt drops them all
    label = sorted((folders["cityscapes"] / "gtFine" / "val").rglob("*_labelTrainIds.png"))[0]
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(label)  # trainId 7 with 5 classes
    with pytest.raises(PreflightError) as err:
        _check(folders, tmp_path, transfer={"tasks": {"ade20k": {"enabled": False}}})
    message = str(err.value)
    assert "transfer.tasks.coco (demo_mask-rcnn_coco.py)" in message
    assert "train_dataloader.dataset (CocoDataset" in message
    assert "empty after the config's filtering" in message
    assert "transfer.tasks.cityscapes (demo_deeplabv3_cityscapes.py): " in message
    assert f"label map {label} holds values [7] outside the 5 classes" in message
    assert message.count("transfer.tasks.") == 2  # both problems, in one report


def test_users_own_coco_categories(folders, tmp_path):
    """A COCO-format dataset with categories of its own: classes and heads follow the annotation file."""
    from pinas.openmmlab.runner import checked_config
    from pinas.stages.transfer import resolve_config

    for split in ("train", "val"):
        path = folders["coco"] / "annotations" / f"instances_{split}2017.json"
        data = json.loads(path.read_text())
        names = {c["id"]: f"fruit-{c['id']}" for c in data["categories"]}
        data["categories"] = [{**c, "name": names[c["id"]]} for c in data["categories"]][:3]
        kept = {c["id"] for c in data["categories"]}
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] in kept]
        path.write_text(json.dumps(data))
    options = {"model.backbone.init_cfg": None, "model.neck.in_channels": [64, 128, 256, 512]}
    cfg, classes = checked_config(resolve_config("mask-rcnn_pinas-trans_fpn_syncbn_1x_coco.py"), tmp_path / "w",
                                  arch="13-31-20-12", space="demo", backbone_checkpoint=None,
                                  data_root=folders["coco"], cfg_options=options)
    assert classes == ("fruit-1", "fruit-2", "fruit-3")
    assert cfg.model.roi_head.bbox_head.num_classes == cfg.model.roi_head.mask_head.num_classes == 3
    assert cfg.train_dataloader.dataset.metainfo.classes == classes == cfg.val_dataloader.dataset.metainfo.classes
    assert cfg.model.rpn_head.get("num_classes", 1) == 1  # the RPN's single "object" class is left alone


def test_more_processes_than_the_node_has_is_refused_unless_forced(folders, tmp_path):
    cores = os.cpu_count() or 1
    devices = 1 << cores.bit_length()  # more than the cores, and a power of two every global batch divides by
    batches = {"supernet": {"batch_size": 4 * devices, "base_batch": 4 * devices, "queue_size": 8 * devices},
               "linear_probe": {"batch_size": 4 * devices}, "retrain": {"batch_size": 4 * devices}}
    refusal = f"devices = {devices}: supernet would run {devices} processes per node, and this node has {cores} CPU"
    with pytest.raises(PreflightError, match=refusal):
        _check(folders, tmp_path, devices=devices, stages=["supernet"], **batches)
    _check(folders, tmp_path, devices=devices, oversubscribe=True, stages=["supernet"], **batches)


@pytest.mark.skipif(mmcv_cuda_ops() == "ok", reason="this mmcv has CUDA ops")
def test_transfers_on_cuda_with_a_cpu_only_mmcv_stop_before_training(folders, tmp_path):
    with pytest.raises(PreflightError) as err:
        _check(folders, tmp_path, arch="11-11-11-11", stages=["retrain", "transfer"], transfer={"device": "cuda"})
    assert "mmcv's ops were compiled without CUDA" in str(err.value) and "transfer.device: cpu" in str(err.value)
    _check(folders, tmp_path, arch="11-11-11-11", stages=["retrain", "transfer"], transfer={"device": "cpu"})
