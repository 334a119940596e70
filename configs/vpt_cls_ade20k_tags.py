# Multi-label image tags from ADE20k: pretrain a ViT like a supervised ImageNet classifier,
# with a segmentation dataset as the only labels. An image's tags are the classes its
# annotation shows (ADE20KTagsDataset; min_fraction=0.01 would drop classes under 1% of
# the labelled pixels); one sigmoid per class (LinearClsHead, multi_label=True, binary
# cross-entropy); mAP and macro F1 (MeanAveragePrecision).
# Default: a ViT-B/16 trained from scratch, every weight tuned, no prompts. The saved
# checkpoint's `backbone.*` weights are a pretrained ViT that the segmentation configs load
# directly: model.backbone.init_cfg.checkpoint=work_dirs/vpt_cls_ade20k_tags/epoch_100.pth
# Variants: start from other weights with model.backbone.init_cfg=dict(type='Pretrained',
# checkpoint=...); VPT on tags (a frozen pretrained ViT) with that init_cfg plus
# model.backbone.freeze=True and model.backbone.num_prompts=10. The schedule is a plain
# DeiT-style starting point, not tuned on ADE20k.
_base_ = ['./vpt_cls_imagefolder.py']
data_root = 'data/ade/ADEChallengeData2016'
crop_size = 224
embed_dims = 768

model = dict(
    backbone=dict(num_prompts=0, prompt_dropout=0.0, freeze=False, init_cfg=None),
    head=dict(num_classes=150, multi_label=True))

# Whole images, resized: a crop could cut a tagged class out of the image.
train_pipeline = [
    dict(type='CheckedLoadImageFromFile', check_orientation=False),
    dict(type='Resize', scale=(crop_size, crop_size), keep_ratio=False),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackClsInputs'),
]
test_pipeline = [
    dict(type='CheckedLoadImageFromFile', check_orientation=False),
    dict(type='Resize', scale=(crop_size, crop_size), keep_ratio=False),
    dict(type='PackClsInputs'),
]
train_dataloader = dict(
    dataset=dict(type='ADE20KTagsDataset', data_root=data_root, min_fraction=0.0,
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(type='ADE20KTagsDataset', data_root=data_root, min_fraction=0.0,
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='MeanAveragePrecision')
test_evaluator = val_evaluator

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=5e-4, betas=(0.9, 0.999),
                   weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={'pos_embed': dict(decay_mult=0.0),
                                    'cls_token': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=1.0))
default_hooks = dict(checkpoint=dict(save_best='multi-label/mAP', rule='greater'))
