# The prompted ViT-L/16 and its optimizer policy, shared by every SETR head's config.
# Configs merge these into MMSeg's own SETR configs:
#   model = dict(backbone={{_base_.vpt_backbone}}); optim_wrapper = {{_base_.vpt_optim_wrapper}}
custom_imports = dict(imports=['vpt_seg'], allow_failed_imports=False)

# ImageNet-21k ViT-L/16 (the paper's backbone) in MMSeg format; docs/pretrained.md covers
# timm (.safetensors/.pth) and JAX (.npz) files.
pretrained = 'pretrain/vit_large_p16.pth'

vpt_backbone = dict(
    type='PromptedVisionTransformer',
    # timm/JAX ViTs have a patch-embedding bias; MMSeg's ViT default drops it.
    patch_bias=True,
    num_prompts=10,
    deep=True,
    prompt_dropout=0.1,
    freeze=True,
    tune_bias=False,
    init_cfg=dict(type='Pretrained', checkpoint=pretrained))

# Only tuned parameters reach the optimizer. Prompts, LoRA and adapter weights start from
# scratch like the heads, so they share the heads' 10x learning rate. Prompts get no weight
# decay; LoRA and adapters are decayed as weights (their papers' policy), which with
# MMSeg's SETR weight decay of 0 is none either.
vpt_optim_wrapper = dict(
    constructor='TunedOptimWrapperConstructor',
    paramwise_cfg=dict(
        custom_keys={'head': dict(lr_mult=10.)}, prompt_lr_mult=10., prompt_decay_mult=0.,
        tuner_lr_mult=10., tuner_decay_mult=1.))

# Checkpoints written atomically (a run killed while saving keeps its last checkpoint),
# refused when non-finite or when they lack the tuned weights; training stops at the first
# NaN/inf loss or gradient (vpt_seg/engine/hooks.py). Merged into MMSeg's default_hooks:
#   default_hooks = {{_base_.vpt_default_hooks}}
vpt_default_hooks = dict(
    checkpoint=dict(type='SafeCheckpointHook'),
    non_finite=dict(type='NonFiniteCheckHook'))

# MMSeg's ADE20k 512x512 pipelines (mmseg::_base_/datasets/ade20k.py) with loaders that
# refuse bad files by name (vpt_seg/datasets/checks.py): annotations of another size than
# their image, class ids outside the 150 classes, 16-bit values, truncated images.
vpt_train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='CheckedLoadAnnotations', reduce_zero_label=True, num_classes=150),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
vpt_test_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='CheckedLoadAnnotations', reduce_zero_label=True, num_classes=150),
    dict(type='PackSegInputs')
]
# MMSeg's ADE20k test-time augmentation (multi-scale 0.5-1.75 + flip, `--tta`) with the same
# checked loaders: MMSeg's own would accept a label of 200 and fail on an RGB annotation
# with a bare IndexError.
vpt_tta_pipeline = [
    dict(type='CheckedLoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale_factor=r, keep_ratio=True)
         for r in [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='CheckedLoadAnnotations', reduce_zero_label=True, num_classes=150)],
        [dict(type='PackSegInputs')]])
]
