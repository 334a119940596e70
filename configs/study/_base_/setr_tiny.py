# The study's target rows: SETR-PUP on the tiny prompted ViT of vit_tiny.py, on the
# synthetic ADE20k-layout target task (vpt_seg.datasets.synthetic, ADE ids 20..27). It
# mirrors configs/_base_/setr_vpt_pup_ade20k.py at laptop scale: same backbone type, head
# type, dataset type and tools; one decode head, no auxiliary heads. Each row config in
# configs/study sets its backbone options and its learning rate.
_base_ = ['./vit_tiny.py']

# Written by `python tools/study.py` (override with --cfg-options, see docs/study.md).
data_root = 'work_dirs/study/data/target/ADEChallengeData2016'
# The target task's classes: ADE ids 20..27. MMSeg maps them to 0..7, the rest to 255.
classes = ('chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea')

crop_size = (64, 64)  # as in vit_tiny.py
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
    type='BoundedEncoderDecoder',  # MMSeg's EncoderDecoder, large images in bounded memory
    data_preprocessor=data_preprocessor,
    decode_head=dict(
        type='LeanSETRUPHead',
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

# Data: MMSeg's ADE20k dataset and transforms, at 64x64; the Checked* loaders refuse bad
# files by name (vpt_seg/datasets/checks.py).
dataset_type = 'ADE20KDataset'
# The generated images already vary object size and position; at 600 iterations a
# resize-and-crop augmentation only slows every row down, so training flips alone.
train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='CheckedLoadAnnotations', reduce_zero_label=True, num_classes=len(classes)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='CheckedLoadAnnotations', reduce_zero_label=True, num_classes=len(classes)),
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
# Prompts get no weight decay (as in configs/_base_/vpt_backbone.py). The learning rate is
# each row's best on this task (`python tools/study.py --lrs ...`, docs/study.md): 2e-2
# for the prompt and bias rows; head.py and full.py set their own.
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='TunedOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=2e-2, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(prompt_lr_mult=1.0, prompt_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)

# Runtime (the rest in vit_tiny.py): the final checkpoint is the task file.
default_hooks = dict(
    checkpoint=dict(interval=max_iters),
    visualization=dict(type='SegVisualizationHook'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
