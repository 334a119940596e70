# What the image-classification configs share (configs/vpt_cls_imagefolder.py,
# configs/coop_cls_imagefolder.py): one folder per class, data/my_cls/{train,val}/<class>/,
# top-1/top-5 accuracy, epoch-based loops, checkpoints of the best top-1, the runtime.
# A child sets the model, the pipelines (in the dataloaders too: MMEngine substitutes
# base variables inside the base file), the optimizer and the schedule.
custom_imports = dict(imports=['vpt_seg'], allow_failed_imports=False)
default_scope = 'mmseg'

data_root = 'data/my_cls'
train_dataloader = dict(
    batch_size=64, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='ImageFolderDataset', data_root=data_root,
                 data_prefix=dict(img_path='train')))
val_dataloader = dict(
    batch_size=64, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ImageFolderDataset', data_root=data_root,
                 data_prefix=dict(img_path='val'), test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type='TopKAccuracy', topk=(1, 5))
test_evaluator = val_evaluator

# Only tuned weights reach the optimizer (TunedOptimWrapperConstructor); no prompt decay.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', momentum=0.9),
    constructor='TunedOptimWrapperConstructor',
    paramwise_cfg=dict(prompt_decay_mult=0.))
train_cfg = dict(type='EpochBasedTrainLoop', val_interval=5)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=True, interval=5, max_keep_ckpts=2,
                    save_best='accuracy/top1', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    non_finite=dict(type='NonFiniteCheckHook'))  # vpt_seg/engine/hooks.py
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_processor = dict(by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
