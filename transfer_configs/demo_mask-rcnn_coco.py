# Demo variant of the Pi-NAS Mask R-CNN config: the same detector on the generated COCO-format shapes
# (pinas.demo_data.generate_coco), sized for a CPU: demo space, 128 px images, narrow FPN and heads, plain BN,
# 200 iterations at batch 2 (about a minute on a quiet 2-core machine), validation at the end.
# Placeholders that `pinas.transfer.run_transfer` overrides: model.backbone.arch / .space / .init_cfg,
# train/val/test_dataloader.dataset.data_root and val/test_evaluator.ann_file (from the data root),
# train_cfg.max_iters.
# ruff: noqa: C408  (OpenMMLab configs are written with dict(...))
_base_ = './mask-rcnn_pinas-trans_fpn_syncbn_1x_coco.py'

classes = ('circle', 'square', 'triangle', 'cross', 'ring')  # pinas.demo_data.SHAPE_CLASSES
data_root = 'data/demo/coco/'
max_iters = 200
image_scale = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)
width = 64  # FPN / head channels (256 in the paper config)

# Choices measured on the generated data (2 CPU cores, from-scratch backbone, 200 iterations at batch 2): the
# paper trains BN over 16 images (SyncBN); over 2 images the backbone's statistics (and split-attention's BN over
# 2 pooled vectors) are noise, so the backbone keeps fixed statistics (norm_eval, MMDetection's usual setting for
# small per-GPU batches) and the RoI heads, trained on sampled RoIs but run on proposals, go without norm layers.
# Together these took box/mask AP from about 0.005 to about 0.02 in the same time.
model = dict(
    backbone=dict(space='demo', arch='13-31-20-12', norm_cfg=norm_cfg, norm_eval=True, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=width, norm_cfg=norm_cfg),
    # objects are 20-50 px: anchors of 16 and 32 px on the stride-4 level
    rpn_head=dict(in_channels=width, feat_channels=width, anchor_generator=dict(scales=[4, 8])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, conv_out_channels=32, fc_out_channels=128, num_classes=len(classes),
                       norm_cfg=None),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_classes=len(classes), norm_cfg=None)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
                     clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', eta_min=1e-4, by_epoch=False, begin=10, end=max_iters),
]
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(by_epoch=False, interval=50, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=2)  # the demo lr is set for batch 2 on one process
