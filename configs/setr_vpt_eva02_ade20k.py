# SETR-PUP + VPT-deep on a frozen EVA02-L/14 (timm's Eva: RoPE, SwiGLU), ADE20k 512x512:
# the same heads, data and schedule as configs/setr_vpt_ade20k.py, another backbone.
#   python tools/train.py configs/setr_vpt_eva02_ade20k.py
#
# Weights: the MIM-pretrained EVA02-L (Merged-38M), as Rein uses it frozen, from the hub:
#   huggingface-cli download timm/eva02_large_patch14_224.mim_m38m \
#       --local-dir pretrain/eva02_large_patch14_224.mim_m38m
# (https://huggingface.co/timm/eva02_large_patch14_224.mim_m38m); any eva02_large_patch14_*
# file of timm's loads the same way, e.g. --cfg-options
#   model.backbone.model_name=eva02_large_patch14_448.mim_m38m_ft_in22k_in1k
#   model.backbone.checkpoint=/path/to/model.safetensors
#
# patch_size=16: the patch embedding and the position grid are resampled once at load
# (512 is not a multiple of 14); RoPE is built for the 32x32 grid. timm keeps EVA02's last
# LayerNorm in fc_norm (after the pool); final_norm=True would apply it token-wise.
_base_ = ['./_base_/setr_timm_vit-l_pup_ade20k.py']
model = dict(
    # EVA02 was trained on CLIP-normalized images.
    data_preprocessor=dict(mean=[122.771, 116.746, 104.094], std=[68.501, 66.632, 70.323]),
    backbone=dict(
        model_name='eva02_large_patch14_224.mim_m38m',
        checkpoint='pretrain/eva02_large_patch14_224.mim_m38m/model.safetensors'))
