# Image classification with VPT (Jia et al., ECCV 2022, the FGVC/VTAB setup): a frozen
# ImageNet-21k ViT-B/16, 10 deep prompts, a linear head on the final normed [CLS]
# embedding, cross-entropy; top-1/top-5 accuracy. Data: one folder per class,
#   data/my_cls/{train,val}/<class_name>/*.jpg
# For your data, inherit this file and set what differs (see configs/vpt_cls_demo.py):
#   _base_ = ['./vpt_cls_imagefolder.py']
#   model = dict(head=dict(num_classes=200))
#   train_dataloader = dict(dataset=dict(data_root='data/birds'))
#   val_dataloader = dict(dataset=dict(data_root='data/birds')); test_dataloader = ...
# (a top-level `data_root = ...` in the child does not reach the datasets: MMEngine
# substitutes base variables inside the base file).
# Variants (same file, other options): model.backbone.deep=False (VPT-shallow),
# model.backbone.num_prompts=50, model.backbone.tune_bias=True (VPT+Bias),
# model.head.type=MLPClsHead (the paper's MLP head).
_base_ = ['./_base_/cls_imagefolder.py']  # data, loops, hooks, runtime

pretrained = 'pretrain/vit_base_p16_224.pth'  # MMSeg-format ViT-B/16 (docs/pretrained.md)
data_root = 'data/my_cls'
num_classes = 100
crop_size = 224
embed_dims = 768

model = dict(
    type='VPTClassifier',
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        type='PromptedVisionTransformer',
        img_size=(crop_size, crop_size), patch_size=16, in_channels=3,
        embed_dims=embed_dims, num_layers=12, num_heads=12, mlp_ratio=4,
        qkv_bias=True, patch_bias=True, norm_cfg=dict(type='LN', eps=1e-6),
        with_cls_token=True, output_cls_token=True, final_norm=True, out_indices=-1,
        interpolate_mode='bicubic',
        num_prompts=10, deep=True, prompt_dropout=0.1, freeze=True, tune_bias=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    head=dict(type='LinearClsHead', in_channels=embed_dims, num_classes=num_classes))

# The checked loader: a truncated file, or one declaring more pixels than the limit
# (max_pixels=, $VPT_SEG_MAX_PIXELS), is refused by name; a photo with an EXIF Orientation
# is decoded upright, as LoadImageFromFile gives it (no annotation to line up with).
train_pipeline = [
    dict(type='CheckedLoadImageFromFile', check_orientation=False),
    dict(type='Resize', scale=(256, 256), keep_ratio=False),
    dict(type='RandomCrop', crop_size=(crop_size, crop_size)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackClsInputs'),
]
test_pipeline = [
    dict(type='CheckedLoadImageFromFile', check_orientation=False),
    dict(type='Resize', scale=(256, 256), keep_ratio=False),
    dict(type='CenterCrop', crop_size=crop_size),
    dict(type='PackClsInputs'),
]
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

# The paper's schedule: 100 epochs, SGD, 10 warm-up epochs then cosine. Only tuned
# weights (prompts, head, biases with tune_bias) reach the optimizer; no prompt decay.
optim_wrapper = dict(optimizer=dict(lr=0.25, weight_decay=1e-4))
max_epochs = 100
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=10, end=max_epochs, eta_min=0.,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
