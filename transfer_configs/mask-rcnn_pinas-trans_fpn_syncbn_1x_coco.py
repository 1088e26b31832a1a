# Pi-NAS-trans Mask R-CNN + FPN, 1x schedule, COCO 2017 (method doc section 5.1; paper: AP^bb 44.07, AP^mk 39.50).
# The stock MMDetection Mask R-CNN R-50 FPN 1x config with the backbone swapped for the searched architecture and
# SyncBN in the backbone, FPN, box head (4 conv + 1 fc) and mask head (4 conv), as the released detectron2 config.
# Placeholders that `pinas.transfer.run_transfer` overrides: model.backbone.arch / .space / .init_cfg.checkpoint,
# the dataloaders' dataset.data_root and val/test_evaluator.ann_file.
# ruff: noqa: C408  (OpenMMLab configs are written with dict(...))
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['pinas.openmmlab'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type='PiNASResNeSt',
        space='resnest50',
        arch='pinas-trans',  # 3333-1133-330011-021
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,  # detectron2 FREEZE_AT: 0, every stage trains
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pinas-trans_imagenet.pth')),
    neck=dict(in_channels=[256, 512, 1024, 2048], norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))

# detectron2 multi-scale training: shortest side drawn from {640, 672, ..., 800}; test at 800 (stock)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomChoiceResize', scales=[(1333, s) for s in range(640, 801, 32)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
# 1x = 12 epochs at batch 16 (8 GPUs x 2), lr 0.02, steps at epochs 8 and 11 (about the paper's 60k / 80k of 90k)
