# CoOp for segmentation (configs/clip_coop_vit-b16_ade20k.py) shrunk to the tiny random
# CLIP of vpt_seg/models/tiny_clip.py (image tower 64 wide, 2 layers, patch 8; text tower
# 64 wide, 2 layers; joint space 32) and 32x32 crops of generated ADE20k-layout data, for
#   python tools/demo.py --backbone clip
# which writes data/ade_tiny and pretrain/tiny_clip (open_clip's layout), trains and tests
# on CPU in about a minute. The 150 class names go through the text tower once per step.
# The CLIP is random: the run shows that the pipeline learns, not what CLIP knows.
_base_ = ['../clip_coop_vit-b16_ade20k.py', '../_base_/ade_tiny_data.py']
clip = 'pretrain/tiny_clip/open_clip_model.safetensors'
crop_size = (32, 32)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(checkpoint=clip, img_size=crop_size, patch_size=8, out_indices=(0, 1),
                  model_kwargs=dict(embed_dim=64, depth=2, num_heads=2, num_classes=32)),
    decode_head=dict(in_channels=32, channels=16, norm_cfg=norm_cfg, text_encoder=dict(
        checkpoint=clip, embed_dims=64, num_layers=2, num_heads=2, output_dims=32)),
    auxiliary_head=[dict(type='TextSegHead', in_channels=64, channels=16, in_index=0,
                         text_encoder='shared', residual=False, num_convs=2, norm_cfg=norm_cfg,
                         loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4))],
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(24, 24)))

# The generated data at 32x32 crops (configs/_base_/ade_tiny_data.py).
train_pipeline = {{_base_.tiny_train_pipeline}}
test_pipeline = {{_base_.tiny_test_pipeline}}
train_dataloader = {{_base_.tiny_train_dataloader}}
val_dataloader = {{_base_.tiny_val_dataloader}}
test_dataloader = val_dataloader

# A random CLIP and 200 steps: a larger step than DenseCLIP's 1e-4, no warm-up.
optim_wrapper = dict(optimizer=dict(lr=3e-3, weight_decay=0.0))
param_scheduler = [dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=0, end=200,
                        by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=200, val_interval=200)
default_hooks = dict(logger=dict(interval=20),
                     checkpoint=dict(interval=200, max_keep_ckpts=1))
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
