"""The backbone through the *stock* MMDetection / MMSegmentation tools, as their users run them.

Each test writes a config of its own that ``_base_``-s on a stock config (RetinaNet, FCN) and changes only
``custom_imports``, the backbone (with the weights of a retrain stage) and what a CPU and the generated data need,
then runs the packages' own ``tools/train.py``, ``tools/test.py`` and ``tools/train.py --resume`` as subprocesses.
torch's ``weights_only`` load stays on: nothing sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mmdet
import mmseg
import pytest
import torch

from pinas.data.demo import SHAPE_CLASSES
from pinas.models.backbone import Classifier, build_subnet
from pinas.space import DEMO

ARCH = "13-31-20-12"
COMMON = """
custom_imports = dict(imports=['pinas.openmmlab'], allow_failed_imports=False)
classes = {classes}
data_root = '{data_root}/'
backbone = dict(_delete_=True, type='PiNASResNeSt', space='demo', arch='{arch}',
                norm_cfg=dict(type='BN', requires_grad=True),
                init_cfg=dict(type='Pretrained', checkpoint='{checkpoint}'))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=4, val_interval=4)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
default_hooks = dict(logger=dict(type='LoggerHook', interval=1),
                     checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2))
log_processor = dict(by_epoch=False)
"""

DETECTION = """_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
{common}
model = dict(backbone=backbone, neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
             bbox_head=dict(num_classes=len(classes), in_channels=64, feat_channels=64),
             test_cfg=dict(score_thr=0.0))  # after 4 iterations every score is near the 0.01 prior
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                  dict(type='Resize', scale=(128, 128), keep_ratio=True), dict(type='RandomFlip', prob=0.5),
                  dict(type='PackDetInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(128, 128), keep_ratio=True),
                 dict(type='LoadAnnotations', with_bbox=True),
                 dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                       'scale_factor'))]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        sampler=dict(type='InfiniteSampler', shuffle=True),
                        dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=train_pipeline))
val_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
"""

SEGMENTATION = """_base_ = 'mmseg::fcn/fcn_r50-d8_4xb4-80k_ade20k-512x512.py'
{common}
crop_size = (128, 128)
backbone.update(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))  # output stride 8, as the stock FCN-D8
model = dict(pretrained=None, data_preprocessor=dict(size=crop_size), backbone=backbone,
             decode_head=dict(in_channels=512, channels=64, num_classes=len(classes)),
             auxiliary_head=dict(in_channels=256, channels=64, num_classes=len(classes)),
             test_cfg=dict(_delete_=True, mode='whole'))
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
                  dict(type='RandomResize', scale=(512, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
                  dict(type='RandomCrop', crop_size=crop_size), dict(type='PackSegInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(512, 128), keep_ratio=True),
                 dict(type='LoadAnnotations', reduce_zero_label=True), dict(type='PackSegInputs')]
# the user's own classes: the generic dataset with ADE20K's layout (the stock ADE20KDataset knows only its 150)
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=dict(classes=classes), img_suffix='.jpg',
               seg_map_suffix='.png', reduce_zero_label=True)
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(**dataset, data_prefix=dict(img_path='images/training',
                                                                 seg_map_path='annotations/training'),
                                     pipeline=train_pipeline))
val_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                      dataset=dict(**dataset, data_prefix=dict(img_path='images/validation',
                                                               seg_map_path='annotations/validation'),
                                   pipeline=test_pipeline))
test_dataloader = val_dataloader
"""

CASES = {"mmdet": (mmdet, DETECTION, "coco", r"coco/bbox_mAP: \d"),
         "mmseg": (mmseg, SEGMENTATION, "ade20k", r"mIoU: \d")}


@pytest.fixture(scope="module")
def retrained(tmp_path_factory) -> Path:
    """A classifier state dict as the retrain stage writes it (``model.pt``)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("retrain") / "model.pt"
    torch.save(Classifier(build_subnet(DEMO, ARCH), len(SHAPE_CLASSES)).state_dict(), path)
    return path


def tool(package, name: str, *args: str, cwd: Path) -> str:
    """Run the package's own ``tools/<name>.py``; returns its output (stdout and stderr)."""
    script = Path(package.__file__).parent / ".mim" / "tools" / f"{name}.py"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    proc = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_stock_train_test_and_resume(name, demo_data, retrained, tmp_path):
    package, template, dataset, metric = CASES[name]
    config = tmp_path / f"my_{name}_config.py"
    config.write_text(template.format(common=COMMON.format(
        classes=tuple(SHAPE_CLASSES), data_root=demo_data(dataset), arch=ARCH, checkpoint=retrained)))
    work = tmp_path / "work"

    trained = tool(package, "train", str(config), "--work-dir", str(work), cwd=tmp_path)
    assert re.search(r"Iter\(val\).*" + metric, trained), trained[-3000:]
    assert re.search(rf"PiNASResNeSt: loaded \d+ tensors of demo {ARCH} from {retrained}", trained)  # the weights
    assert (work / "iter_4.pth").is_file() and (work / "last_checkpoint").read_text().strip().endswith("iter_4.pth")

    tested = tool(package, "test", str(config), str(work / "iter_4.pth"), "--work-dir", str(tmp_path / "test"),
                  cwd=tmp_path)
    assert re.search(r"Iter\(test\).*" + metric, tested), tested[-3000:]

    resumed = tool(package, "train", str(config), "--work-dir", str(work), "--resume", "--cfg-options",
                   "train_cfg.max_iters=6", cwd=tmp_path)
    assert "resumed epoch: 0, iter: 4" in resumed, resumed[-3000:]
    assert re.search(r"Iter\(train\) \[6/6\]", resumed) and (work / "iter_6.pth").is_file()
