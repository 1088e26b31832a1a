# Demo variant of the Pi-NAS DeepLabV3 Cityscapes config: the same OS8 DeepLabV3 + aux head on the generated
# Cityscapes-format shapes (pinas.demo_data.generate_cityscapes, labelTrainIds with 255 = ignore), sized for a
# CPU: demo space, 128 px, narrow heads, plain BN, a few dozen iterations, validation at the end.
# The dataset is MMSegmentation's generic BaseSegDataset with Cityscapes' suffixes: the stock CityscapesDataset
# only accepts class names out of its 19 (BaseSegDataset.get_label_map), not the shape classes.
# Placeholders that `pinas.transfer.run_transfer` overrides: model.backbone.arch / .space / .init_cfg,
# train/val/test_dataloader.dataset.data_root, train_cfg.max_iters.
# ruff: noqa: C408  (OpenMMLab configs are written with dict(...))
_base_ = './deeplabv3_pinas-trans_os8_cityscapes.py'

classes = ('circle', 'square', 'triangle', 'cross', 'ring')  # pinas.demo_data.SHAPE_CLASSES
data_root = 'data/demo/cityscapes/'
max_iters = 40
crop_size = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(space='demo', arch='13-31-20-12', norm_cfg=norm_cfg, init_cfg=None),
    decode_head=dict(in_channels=512, channels=64, num_classes=len(classes), norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=64, num_classes=len(classes), norm_cfg=norm_cfg),
    test_cfg=dict(_delete_=True, mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=dict(classes=classes),
               img_suffix='_leftImg8bit.png', seg_map_suffix='_gtFine_labelTrainIds.png')
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                      dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=20, max_keep_ckpts=2))
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=4)  # the demo lr is set for batch 4 on one process
