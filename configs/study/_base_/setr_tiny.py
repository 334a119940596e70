# The study's shared base: SETR-PUP on a tiny prompted ViT (patch 8, 64x64 crops, 6 layers
# of width 64), on the synthetic ADE20k-layout target task (vpt_seg.datasets.synthetic,
# ADE ids 20..27). It mirrors configs/_base_/setr_vpt_pup_ade20k.py at laptop scale:
# same backbone type, head type, dataset type and tools; one decode head, no auxiliary
# heads. `python tools/study.py` makes the data and the pretrained backbone, then runs
# every row config in this folder through tools/train.py and tools/test.py.
custom_imports = dict(imports=['vpt_seg'], allow_failed_imports=False)
default_scope = 'mmseg'

# Written by `python tools/study.py` (override with --cfg-options, see docs/study.md).
data_root = 'work_dirs/study/data/target/ADEChallengeData2016'
pretrained = 'work_dirs/study/pretrain/vit-tiny_source.pth'
# The target task's classes: ADE ids 20..27. MMSeg maps them to 0..7, the rest to 255.
classes = ('chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea')

crop_size = (64, 64)
max_iters = 600
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='PromptedVisionTransformer',
        img_size=crop_size,
        patch_size=8,
        patch_bias=True,
        in_channels=3,
        embed_dims=64,
        num_layers=6,
        num_heads=4,
        mlp_ratio=4,
        out_indices=(5, ),
        drop_rate=0.0,
        drop_path_rate=0.0,
        with_cls_token=True,
        norm_cfg=dict(type='LN', eps=1e-6),
        act_cfg=dict(type='GELU'),
        interpolate_mode='bicubic',
        num_prompts=0,
        deep=True,
        prompt_dropout=0.0,
        freeze=True,
        tune_bias=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(
        type='SETRUPHead',
        in_channels=64,
        channels=32,
        in_index=0,
        num_classes=len(classes),
        dropout_ratio=0,
        norm_cfg=norm_cfg,
        num_convs=3,
        up_scale=2,
        kernel_size=3,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

# Data: MMSeg's ADE20k dataset and pipelines, at 64x64.
dataset_type = 'ADE20KDataset'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=dict(classes=classes),
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=dict(classes=classes),
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# Schedule: AdamW, linear warm-up then poly decay, over tuned parameters only.
# Prompts get no weight decay (as in configs/_base_/vpt_backbone.py).
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='TunedOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=5e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(prompt_lr_mult=1.0, prompt_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# Runtime. The task file is the final checkpoint without optimizer state: only the
# tuned weights (the frozen backbone comes from `pretrained`).
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1, save_optimizer=False, save_param_scheduler=False),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=True)
