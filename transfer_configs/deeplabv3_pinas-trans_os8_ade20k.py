# Pi-NAS-trans DeepLabV3, output stride 8, auxiliary FCN head, ADE20K 512x512 (method doc section 5.2;
# paper: pixAcc 81.27, mIoU 45.47). Stock MMSegmentation DeepLabV3 R-50-D8 ADE20K config, backbone swapped,
# ASPP at 256 channels as in PyTorch-Encoding, its training recipe (lr 0.004 per 16 images, head lr x10,
# weight decay 1e-4, poly). 160k iterations at batch 16 (2 per GPU on 8 GPUs) is about 127 epochs
# (PyTorch-Encoding trained 180); with another number of GPUs the transfer stage scales the lr (auto_scale_lr).
# Placeholders that `pinas.transfer.run_transfer` overrides: model.backbone.arch / .space / .init_cfg.checkpoint
# and the dataloaders' dataset.data_root.
# ruff: noqa: C408  (OpenMMLab configs are written with dict(...))
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['pinas.openmmlab'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    pretrained=None,
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
    decode_head=dict(in_channels=2048, channels=256, num_classes=150, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=1024, num_classes=150, norm_cfg=norm_cfg),
    # evaluation with a sliding 512 crop at stride 2/3 of it; multi-scale + flip is the stock `tta_pipeline`
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))

optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.004, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'decode_head': dict(lr_mult=10.0), 'auxiliary_head': dict(lr_mult=10.0)}))

train_dataloader = dict(batch_size=2)  # x 8 GPUs = the recipe's 16 images
auto_scale_lr = dict(enable=False, base_batch_size=16)  # lr 0.004 is per 16 images
