"""The transfer stage on generated data with the real MMDetection / MMSegmentation loops (CPU, tiny schedules)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mmdet.registry import DATASETS as DET_DATASETS
from mmdet.registry import MODELS as DET_MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS as SEG_DATASETS
from mmseg.registry import MODELS as SEG_MODELS

from pinas.io.stage_dirs import TransferDir
from pinas.openmmlab.runner import main, run_transfer
from pinas.space import ArchError

CONFIGS = Path(__file__).resolve().parents[1] / "transfer_configs"
DEMO_ARCH = "13-31-20-12"
PAPER = {
    "mask-rcnn_pinas-trans_fpn_syncbn_1x_coco.py": ("mmdet", 80),
    "deeplabv3_pinas-trans_os8_ade20k.py": ("mmseg", 150),
    "deeplabv3_pinas-trans_os8_cityscapes.py": ("mmseg", 19),
}
DEMO = {"coco": "demo_mask-rcnn_coco.py", "ade20k": "demo_deeplabv3_ade20k.py",
        "cityscapes": "demo_deeplabv3_cityscapes.py"}


METRICS_FILE = TransferDir.METRICS


@pytest.fixture(scope="module")
def data(demo_data) -> dict[str, Path]:
    return {name: demo_data(name) for name in ("coco", "ade20k", "cityscapes")}


def _run(name: str, data: dict[str, Path], work_dir: Path, **kwargs) -> dict:
    return run_transfer(CONFIGS / DEMO[name], work_dir, arch=DEMO_ARCH, space="demo", backbone_checkpoint=None,
                        data_root=data[name], **kwargs)


def _untrained(name: str, data: dict[str, Path], work_dir: Path) -> dict[str, float]:
    """The metrics of the same network at its initialisation (one iteration at lr 0), on the same val data."""
    return _run(name, data, work_dir, length=1, cfg_options={"optim_wrapper.optimizer.lr": 0.0})["metrics"]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_builds(name):
    scope, num_classes = PAPER[name]
    cfg = Config.fromfile(str(CONFIGS / name))
    backbone = cfg.model.backbone
    assert backbone.type == "PiNASResNeSt" and backbone.arch == "pinas-trans" and backbone.space == "resnest50"
    assert backbone.norm_cfg.type == "SyncBN" and backbone.init_cfg.type == "Pretrained"
    init_default_scope(scope)
    model = (DET_MODELS if scope == "mmdet" else SEG_MODELS).build(cfg.model)
    datasets = DET_DATASETS if scope == "mmdet" else SEG_DATASETS
    for split in ("train", "val", "test"):
        assert datasets.get(cfg[f"{split}_dataloader"].dataset.type) is not None
    if scope == "mmdet":
        assert cfg.model.neck.in_channels == [256, 512, 1024, 2048]
        assert model.roi_head.bbox_head.num_classes == model.roi_head.mask_head.num_classes == num_classes
        assert {cfg.model.neck.norm_cfg.type, cfg.model.roi_head.bbox_head.norm_cfg.type,
                cfg.model.roi_head.mask_head.norm_cfg.type} == {"SyncBN"}
        assert cfg.model.roi_head.bbox_head.type == "Shared4Conv1FCBBoxHead"
    else:
        assert (backbone.strides, backbone.dilations) == ((1, 2, 1, 1), (1, 1, 2, 4))
        assert model.decode_head.num_classes == model.auxiliary_head.num_classes == num_classes
        assert type(model.decode_head).__name__ == "ASPPHead" and type(model.auxiliary_head).__name__ == "FCNHead"
    if name.endswith("cityscapes.py"):
        assert cfg.crop_size == (768, 768) and cfg.model.data_preprocessor.size == (768, 768)


@pytest.mark.parametrize("name", sorted(DEMO))
def test_demo_config_inherits_its_paper_config_and_builds(name):
    text = (CONFIGS / DEMO[name]).read_text()
    assert "_base_ = './" in text
    cfg = Config.fromfile(str(CONFIGS / DEMO[name]))
    assert cfg.model.backbone.space == "demo" and cfg.model.backbone.norm_cfg.type == "BN"
    assert cfg.train_cfg.type == "IterBasedTrainLoop" and cfg.train_dataloader.num_workers == 0
    assert list(cfg.train_dataloader.dataset.metainfo.classes) == ["circle", "square", "triangle", "cross", "ring"]
    init_default_scope("mmdet" if name == "coco" else "mmseg")
    (DET_MODELS if name == "coco" else SEG_MODELS).build(cfg.model)


def test_bad_inputs_fail_before_training(data, tmp_path):
    work_dir = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="transfer config .*no_such_config.py does not exist"):
        run_transfer(CONFIGS / "no_such_config.py", work_dir, arch=DEMO_ARCH, space="demo",
                     backbone_checkpoint=None, data_root=data["coco"])
    with pytest.raises(FileNotFoundError, match="data root .*missing_root does not exist"):
        _run("coco", {"coco": tmp_path / "missing_root"}, work_dir)
    partial = tmp_path / "partial_ade"
    (partial / "images" / "training").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"train_dataloader.dataset .*seg_map_path .*annotations/training"):
        _run("ade20k", {"ade20k": partial}, work_dir)
    with pytest.raises(ArchError, match="stage 4 has 3 digits"):
        run_transfer(CONFIGS / DEMO["coco"], work_dir, arch="13-31-20-123", space="demo",
                     backbone_checkpoint=None, data_root=data["coco"])
    with pytest.raises(FileNotFoundError, match="backbone checkpoint .*nope.pth does not exist"):
        run_transfer(CONFIGS / DEMO["coco"], work_dir, arch=DEMO_ARCH, space="demo",
                     backbone_checkpoint=tmp_path / "nope.pth", data_root=data["coco"])
    with pytest.raises(SystemExit):  # the CLI needs --arch
        main([str(CONFIGS / DEMO["coco"]), "--work-dir", str(work_dir)])
    assert not work_dir.exists()  # nothing reached the Runner (it creates work_dir first)


@pytest.mark.slow
def test_mask_rcnn_demo_learns_boxes_and_masks(data, tmp_path):
    # 60 of the demo config's 200 iterations: box / mask AP about 0.08 here, well clear of zero, in a third the time
    result = _run("coco", data, tmp_path / "trained", length=60)
    metrics, untrained = result["metrics"], _untrained("coco", data, tmp_path / "untrained")
    for key in ("coco/bbox_mAP", "coco/segm_mAP"):
        assert metrics[key] > untrained[key] + 0.02, (key, metrics, untrained)
    assert json.loads((tmp_path / "trained" / METRICS_FILE).read_text()) == result
    assert result["start_iter"] == 0 and result["end_iter"] > 0
    assert result["wall_time_s"] > 0 and result["peak_rss_mib"] > 0


def test_a_detector_with_no_detection_scores_zero_ap(data, tmp_path):
    """MMDetection's CocoMetric returns no metrics at all when nothing passes the score threshold; the record says
    AP 0 (what it is by definition) instead of looking unevaluated."""
    result = _run("coco", data, tmp_path, length=2, cfg_options={"model.test_cfg.rcnn.score_thr": 1.01})
    assert result["metrics"] == {"coco/bbox_mAP": 0.0, "coco/segm_mAP": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ade20k", "cityscapes"])
def test_deeplabv3_demo_learns_segmentation(name, data, tmp_path):
    metrics = _run(name, data, tmp_path / "trained")["metrics"]
    untrained = _untrained(name, data, tmp_path / "untrained")
    assert metrics["mIoU"] > untrained["mIoU"] + 2 and metrics["aAcc"] > untrained["aAcc"], (metrics, untrained)


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_last_checkpoint(data, tmp_path):
    checkpoints = {"default_hooks.checkpoint.interval": 2}
    first = _run("ade20k", data, tmp_path, length=4, cfg_options=checkpoints)
    assert (first["start_iter"], first["end_iter"]) == (0, 4)
    assert (tmp_path / "last_checkpoint").read_text().strip().endswith("iter_4.pth")
    # a second start on the same work_dir, through the CLI, with a longer budget: continues at iteration 4
    assert main([str(CONFIGS / DEMO["ade20k"]), "--work-dir", str(tmp_path), "--arch", DEMO_ARCH,
                 "--space", "demo", "--data-root", str(data["ade20k"]), "--length", "6",
                 "--cfg-options", "default_hooks.checkpoint.interval=2"]) == 0
    second = json.loads((tmp_path / METRICS_FILE).read_text())
    assert (second["start_iter"], second["end_iter"]) == (4, 6)
    logs = "".join(p.read_text() for p in tmp_path.glob("*/*.log"))
    assert "resumed epoch: 0, iter: 4" in logs
    assert (tmp_path / "last_checkpoint").read_text().strip().endswith("iter_6.pth")
    # another architecture must not resume (non-strictly) from these checkpoints
    with pytest.raises(ValueError, match="holds a run of"):
        run_transfer(CONFIGS / DEMO["ade20k"], tmp_path, arch="00-00-00-00", space="demo",
                     backbone_checkpoint=None, data_root=data["ade20k"])
