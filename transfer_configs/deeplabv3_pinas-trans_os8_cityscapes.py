# Pi-NAS-trans DeepLabV3, output stride 8, auxiliary FCN head, Cityscapes with 768x768 crops (method doc
# section 5.3; paper: mIoU 80.70). Same model and recipe as the ADE20K config, on the stock MMSegmentation
# Cityscapes DeepLabV3 config (whose 769 crop becomes the paper's 768, align_corners off for the even size).
# Placeholders that `pinas.transfer.run_transfer` overrides: model.backbone.arch / .space / .init_cfg.checkpoint
# and the dataloaders' dataset.data_root.
# ruff: noqa: C408  (OpenMMLab configs are written with dict(...))
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-769x769.py'
custom_imports = dict(imports=['pinas.openmmlab'], allow_failed_imports=False)

crop_size = (768, 768)
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='PiNASResNeSt',
        space='resnest50',
        arch='pinas-trans',  # 3333-1133-330011-021
        out_indices=(0, 1, 2, 3),
        strides=(1, 2, 1, 1),  # output stride 8: stage 3 dilated by 2, stage 4 by 4
        dilations=(1, 1, 2, 4),
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pinas-trans_imagenet.pth')),
    decode_head=dict(in_channels=2048, channels=256, num_classes=19, norm_cfg=norm_cfg, align_corners=False),
    auxiliary_head=dict(in_channels=1024, num_classes=19, norm_cfg=norm_cfg, align_corners=False),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(512, 512)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))  # x 8 GPUs = 16 images
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.004, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'decode_head': dict(lr_mult=10.0), 'auxiliary_head': dict(lr_mult=10.0)}))
auto_scale_lr = dict(enable=False, base_batch_size=16)  # lr 0.004 is per 16 images
