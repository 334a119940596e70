# The demo config (setr_vpt_tiny_ade20k.py) on a tiny DINOv2-style timm ViT with 4 registers
# instead of the MMSeg-layout ViT: timm's own vit_small_patch14_reg4_dinov2 class, shrunk
# (width 32, 4 layers). `python tools/demo.py --backbone dinov2` writes a stand-in pretrained
# hub folder (model.safetensors + config.json) to pretrain/tiny_dinov2_reg4 and runs it.
# patch_size=8 resamples the patch-14 embedding once at load, as patch_size=16 does for
# 512 crops in configs/setr_vpt_dinov2_ade20k.py: 32x32 crops give a 4x4 grid.
_base_ = ['./setr_vpt_tiny_ade20k.py']
crop_size = (32, 32)
model = dict(
    backbone=dict(
        _delete_=True,
        type='PromptedTimmViT',
        model_name='vit_small_patch14_reg4_dinov2',
        model_kwargs=dict(embed_dim=32, depth=4, num_heads=4),
        checkpoint='pretrain/tiny_dinov2_reg4',
        img_size=crop_size,
        patch_size=8,
        out_indices=(0, 1, 2, 3),
        num_prompts=4,
        deep=True,
        prompt_dropout=0.1))
