# Makes the study's "pretrained" model, as the paper's ViT-L was made: supervised image-level
# recognition, then frozen. The tiny ViT of _base_/vit_tiny.py is trained from scratch on
# the synthetic *source* images (ADE ids 1..8) to name the classes each image contains
# (multi-label tags from its annotation, ADE20KTagsDataset), with a linear head on the
# final normed [CLS] embedding (VPTClassifier), every weight tuned. tools/study.py then
# saves its backbone as `pretrained` (an MMSeg-format ViT state dict) for the target rows.
_base_ = ['./_base_/vit_tiny.py']
data_root = 'work_dirs/study/data/source/ADEChallengeData2016'
classes = ('wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed ')
max_iters = 1500

model = dict(
    type='VPTClassifier',
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(freeze=False, init_cfg=None, output_cls_token=True, final_norm=True),
    head=dict(type='LinearClsHead', in_channels=64, num_classes=len(classes),
              multi_label=True))

train_pipeline = [
    dict(type='CheckedLoadImageFromFile', check_orientation=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackClsInputs'),
]
test_pipeline = [dict(type='CheckedLoadImageFromFile', check_orientation=False),
                 dict(type='PackClsInputs')]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='ADE20KTagsDataset',
        data_root=data_root,
        metainfo=dict(classes=classes),
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='ADE20KTagsDataset',
        data_root=data_root,
        metainfo=dict(classes=classes),
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline,
        test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type='MeanAveragePrecision')
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='TunedOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
