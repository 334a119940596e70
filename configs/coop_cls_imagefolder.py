# CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022): a frozen
# CLIP ViT-B/16 (OpenAI's weights) classifies an image by the cosine between its image
# embedding and the text embeddings of "[V]_1 ... [V]_16 [CLASS]."; only the 16 context
# vectors [V] are learned (docs/coop.md). The CoOp recipe: unified context at the end,
# random init, SGD lr 0.002, cosine, batch 32.
# The CLIP file, as open_clip publishes it (one file holds both towers):
#   huggingface-cli download timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors \
#       open_clip_config.json --local-dir pretrain/clip_vit_b16
# Data: one folder per class, data/my_cls/{train,val}/<class_name>/*.jpg. The text tower
# reads the class names: list them in the dataset's order (classes.txt, or the sorted
# folder names), written as words ('_' becomes a space). For your data, inherit this file:
#   _base_ = ['./coop_cls_imagefolder.py']
#   model = dict(head=dict(text_encoder=dict(vocabulary=['cat', 'dog', 'sea lion'])))
#   train_dataloader = dict(dataset=dict(data_root='data/pets'))  # val/test likewise
# (a top-level `classes = ...` in the child does not reach the model: MMEngine
# substitutes base variables inside the base file).
# Variants: configs/vpt-coop_cls_imagefolder.py (VPT-deep prompts on the image tower too);
# model.head.text_encoder: csc=True (class-specific context), class_position='middle' or
# 'front', ctx_init='a photo of a'; n_ctx=0 with templates='a photo of a {}.' is zero-shot
# CLIP (evaluate with tools/test.py and no checkpoint).
_base_ = ['./_base_/cls_imagefolder.py']  # data, loops, hooks, runtime

clip = 'pretrain/clip_vit_b16/open_clip_model.safetensors'
data_root = 'data/my_cls'
classes = ['class one', 'class two']  # set to your class names (see above)
crop_size = 224

model = dict(
    type='VPTClassifier',
    # OpenAI CLIP's normalisation (timm's pretrained_cfg; also what VPTClassifier picks
    # for a CLIP backbone when data_preprocessor is left out), RGB, 0-255 pixels.
    data_preprocessor=dict(type='ImgDataPreprocessor',
                           mean=[122.770938, 116.746013, 104.093736],
                           std=[68.500533, 66.632158, 70.323163], bgr_to_rgb=True),
    backbone=dict(type='PromptedTimmViT', model_name='vit_base_patch16_clip_quickgelu_224',
                  checkpoint=clip, img_size=(crop_size, crop_size)),
    head=dict(type='TextClsHead', text_encoder=dict(
        type='CoOpTextEncoder', vocabulary=classes, checkpoint=clip,
        n_ctx=16, ctx_init=None, csc=False, class_position='end')))

# CLIP's preprocessing: the shorter side resized (bicubic) to the crop, a centre crop;
# training adds a random crop and a flip. scale=(crop, 8 * crop) with keep_ratio sets the
# shorter side to `crop` for aspect ratios up to 1:8.
train_pipeline = [
    dict(type='CheckedLoadImageFromFile', check_orientation=False),
    dict(type='Resize', scale=(crop_size, 8 * crop_size), keep_ratio=True,
         interpolation='bicubic'),
    dict(type='RandomCrop', crop_size=(crop_size, crop_size)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackClsInputs'),
]
test_pipeline = [
    dict(type='CheckedLoadImageFromFile', check_orientation=False),
    dict(type='Resize', scale=(crop_size, 8 * crop_size), keep_ratio=True,
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=crop_size),
    dict(type='PackClsInputs'),
]
train_dataloader = dict(batch_size=32, dataset=dict(data_root=data_root,
                                                    pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

# CoOp's schedule (configs/trainers/CoOp/vit_b16_ep50.yaml): SGD lr 0.002, momentum 0.9,
# weight decay 5e-4, one warm-up epoch at a constant 1e-5, then cosine to 50 epochs.
# Only tuned weights (the context; image prompts in the VPT variant) reach the optimizer.
optim_wrapper = dict(optimizer=dict(lr=0.002, weight_decay=5e-4))
max_epochs = 50
param_scheduler = [
    dict(type='ConstantLR', factor=0.005, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, eta_min=0.,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
