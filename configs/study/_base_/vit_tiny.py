# The study's tiny ViT (patch 8, 64x64 inputs, 6 layers of width 64, 4 heads: 0.32M
# parameters) and its runtime, shared by the source pretraining (pretrain_source.py, a
# multi-label classifier) and the target rows (setr_tiny.py, SETR-PUP). A laptop-scale
# stand-in for the paper's ViT-L/16; `python tools/study.py` runs it all (docs/study.md).
custom_imports = dict(imports=['vpt_seg'], allow_failed_imports=False)
default_scope = 'mmseg'

# Written by `python tools/study.py` (override with --cfg-options, see docs/study.md).
pretrained = 'work_dirs/study/pretrain/vit-tiny_source.pth'
crop_size = (64, 64)

model = dict(
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
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))

# Runtime (vpt_seg/engine/hooks.py: atomic checkpoints, a stop at the first NaN/inf).
# Checkpoints are saved without optimizer state; for the target rows the final
# checkpoint is the task file: only the tuned weights (the frozen backbone comes from
# `pretrained`).
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, max_keep_ckpts=1,
                    save_optimizer=False, save_param_scheduler=False),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    non_finite=dict(type='NonFiniteCheckHook'))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=True)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
