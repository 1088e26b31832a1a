"""The paper profile end to end: ResNeSt-50 space at 224 px, the paper's transfer configs (SyncBN, Mask R-CNN 1x
epoch-based, DeepLabV3 OS8), every stage through the ONNX export, on tiny generated folders in the real formats.

Only step counts, batch sizes, image scales and devices (processes, loader workers, CPU) are overridden, through the
pipeline config: the paper configs themselves are not edited. One thread per process, CPU: a few minutes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from flows.cli import main as cli_main
from pinas.config import load_config
from pinas.io.artifacts import verify_manifest
from pinas.io.stage_dirs import RetrainDir

SPEC = {"cls_train_per_class": 2, "cls_val_per_class": 1, "det_train_images": 4, "det_val_images": 2}
LOADERS = {"train_dataloader.num_workers": 0, "train_dataloader.persistent_workers": False,
           "val_dataloader.num_workers": 0, "val_dataloader.persistent_workers": False}


def _segmentation(batch: int) -> dict:
    """DeepLabV3 OS8 at 64 px crops: train resize + crop, test resize and sliding window, the preprocessor size."""
    return {**LOADERS, "train_dataloader.batch_size": batch,
            "train_dataloader.dataset.pipeline.2.scale": [128, 64],
            "train_dataloader.dataset.pipeline.3.crop_size": [64, 64],
            "val_dataloader.dataset.pipeline.1.scale": [128, 64],
            "model.data_preprocessor.size": [64, 64],
            "model.test_cfg.crop_size": [64, 64], "model.test_cfg.stride": [42, 42]}


def paper_overrides(data: dict[str, Path]) -> dict:
    return {
        "data": {"source": "folders", **{k: str(v) for k, v in data.items()}, "search_holdout": {"images": 0.2}},
        "devices": 1,
        "supernet": {"epochs": 0.5, "batch_size": 2, "num_workers": 0, "device": "cpu", "log_every": 1,
                     "shuffle_bn_splits": 1},
        "linear_probe": {"epochs": 0.5, "batch_size": 2, "num_workers": 0, "device": "cpu", "log_every": 1,
                         "val_archs": 1, "val_recal_batches": 1},
        "search": {"population": 2, "generations": 1, "parents": 1, "mutations": 0, "crossovers": 0, "top_k": 2,
                   "evaluator": {"batch_size": 2, "recal_batches": 1, "heldout_images": 2, "device": "cpu"}},
        "retrain": {"epochs": 1, "batch_size": 2, "num_workers": 0, "device": "cpu"},
        "transfer": {"tasks": {
            "coco": {"length": 1, "cfg_options": {  # 1 of the 12 epochs (epoch-based), short sides 80 px
                **LOADERS, "train_dataloader.batch_size": 2,
                "train_dataloader.dataset.pipeline.2.scales": [[128, 80]],
                "val_dataloader.dataset.pipeline.1.scale": [128, 80]}},
            "ade20k": {"length": 2, "cfg_options": _segmentation(2)},
            "cityscapes": {"length": 2, "cfg_options": _segmentation(2)}}},
        "export": {"parity_images": 2, "latency_batches": [1], "warmup": 1, "repeats": 2},
    }


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_paper_profile_through_every_stage(demo_data, tmp_path, monkeypatch, capsys):
    data = {}
    for kind in ("imagenet", "coco", "ade20k", "cityscapes"):  # users' folders: no generator manifest
        data[kind] = tmp_path / "data" / kind
        shutil.copytree(demo_data(kind, **SPEC), data[kind])
        (data[kind] / "manifest.json").unlink()
    config = tmp_path / "paper.yaml"
    config.write_text(yaml.safe_dump({"profile": "paper", **paper_overrides(data)}))
    monkeypatch.setattr("flows.pipeline.EXPORTS_DIR", tmp_path / "exports")
    assert cli_main(["run", "--config", str(config), "--run-dir", str(tmp_path / "runs")]) == 0
    summary = json.loads((tmp_path / "runs" / "last_run.json").read_text())
    assert summary["profile"] == "paper" and not summary["failed"]
    stages = summary["stages"]
    assert sorted(stages) == sorted(["supernet", "linear-probe", "search", "retrain", "transfer-coco",
                                     "transfer-ade20k", "transfer-cityscapes", "export"])
    for record in stages.values():
        verify_manifest(record["dir"])
    searched = stages["search"]["metrics"]["best_arch"]
    assert len(searched.replace("-", "")) == 16  # the ResNeSt-50 space
    model = RetrainDir(stages["retrain"]["dir"]).model_config()
    assert (model["space"], model["arch"], model["input_size"]) == ("resnest50", searched, 224)
    coco = json.loads((Path(stages["transfer-coco"]["dir"]) / "metrics.json").read_text())
    assert coco["end_iter"] == 2 and coco["classes"] == ["circle", "square", "triangle", "cross", "ring"]
    assert "coco/bbox_mAP" in coco["metrics"] and "coco/segm_mAP" in coco["metrics"]
    for name, classes in (("ade20k", 150), ("cityscapes", 19)):  # the stock datasets' own classes
        result = json.loads((Path(stages[f"transfer-{name}"]["dir"]) / "metrics.json").read_text())
        assert result["end_iter"] == 2 and len(result["classes"]) == classes and "mIoU" in result["metrics"]
    card = json.loads((Path(stages["export"]["published"]) / "model_card.json").read_text())
    assert card["model"]["space"] == "resnest50" and card["model"]["input_size"] == 224
    assert card["parity"]["model"]["max_abs_diff"] < 1e-3 and set(card["transfer_metrics"]) == {
        "coco", "ade20k", "cityscapes"}
    print(f"paper profile: {summary['total_seconds']:.0f} s; " + ", ".join(
        f"{k} {v:.0f} s" for k, v in summary["seconds"].items()))


@pytest.mark.parametrize("devices", [8, 1])
def test_the_paper_profile_trains_with_the_recipes_global_batches(devices):
    """Every batch_size is global, so the paper profile trains with the recipes' batches and lrs on 8 GPUs and on
    one: supernet 192 at lr 0.03 (24 per GPU x 8), linear probe 256 at lr 30 (32 x 8), retrain 2048 at lr 0.8
    (the ResNeSt recipe); each candidate of the search is recalibrated on batches of 128 in one process."""
    config = load_config(profile="paper", overrides={"devices": devices})
    recipes = {"supernet": (192, 0.03), "linear_probe": (256, 30.0), "retrain": (2048, 0.8)}
    for section, (batch, lr) in recipes.items():
        stage = getattr(config, section)
        assert (stage.nproc, stage.batch_size, stage.lr) == (devices, batch, pytest.approx(lr)), section
        assert stage.process_batch(stage.world_size) * devices == batch, section
    assert (config.search.evaluator.batch_size, config.search.evaluator.recal_batches) == (128, 49)
    assert config.search.evaluator.proxy == "linear_probe"  # the released search's proxy


def test_the_paper_comparison_names_the_architecture_it_compares_with():
    from pinas.paper import compare_rows

    exact = compare_rows("retrain", {"top1": 80.9}, "resnest50", "pinas-cls")
    assert [(r["metric"], r["ours"], r["paper"], r["same_arch"]) for r in exact] == [
        ("top1", 80.9, 81.6, True), ("top5", None, 95.7, True)]
    searched = compare_rows("retrain", {"top1": 80.9}, "resnest50", "111-1111-111111-110")
    assert searched[0]["paper"] == 81.6 and not searched[0]["same_arch"] and "pinas-cls" in searched[0]["paper_arch"]
    # Pi-NAS-cls has no transfer numbers: its COCO run is compared with Pi-NAS-trans, and says so
    coco = compare_rows("coco", {"coco/bbox_mAP": 0.43}, "resnest50", "301-3231-203213-032")
    assert {r["paper_arch"].split()[0] for r in coco} == {"pinas-trans"} and not any(r["same_arch"] for r in coco)
    baseline = compare_rows("ade20k", {"mIoU": 45.0}, "resnest50", "resnest50")
    assert baseline[0]["paper"] == 45.12 and baseline[0]["same_arch"]
