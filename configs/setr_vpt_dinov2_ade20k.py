# SETR-PUP + VPT-deep on a frozen DINOv2 ViT-L/14 with 4 registers (timm), ADE20k 512x512:
# the same heads, data and schedule as configs/setr_vpt_ade20k.py, another backbone.
#   python tools/train.py configs/setr_vpt_dinov2_ade20k.py
#
# Weights: timm's file as published, a file or the hub folder as downloaded, e.g.
#   huggingface-cli download timm/vit_large_patch14_reg4_dinov2.lvd142m \
#       --local-dir pretrain/vit_large_patch14_reg4_dinov2.lvd142m
# (https://huggingface.co/timm/vit_large_patch14_reg4_dinov2.lvd142m); elsewhere:
#   --cfg-options model.backbone.checkpoint=/path/to/model.safetensors
#
# 512 is not a multiple of 14: patch_size=16 resamples the patch embedding (timm's
# resample_patch_embed) and the 37x37 position grid to 32x32 once, at load, so 512 crops
# give the 32x32 token grid of the ViT-L/16 configs (README, "Any timm ViT").
_base_ = ['./_base_/setr_timm_vit-l_pup_ade20k.py']
model = dict(
    backbone=dict(
        model_name='vit_large_patch14_reg4_dinov2.lvd142m',
        checkpoint='pretrain/vit_large_patch14_reg4_dinov2.lvd142m/model.safetensors'))
