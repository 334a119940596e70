# The study's second family: a tiny DINOv2-style ViT with 4 registers, built by timm itself
# (timm's vit_small_patch14_reg4_dinov2 class: [CLS] + 4 registers, LayerScale, position
# embedding on the patches only), shrunk to the first family's size: width 64, 6 layers,
# 4 heads, patch 8 on 64x64 crops (an 8x8 grid, as vit_tiny.py). Random init, then
# pretrained by tools/study.py exactly as the first family (dinov2/pretrain_source.py).
# Written by `python tools/study.py`: the pretrained backbone in timm's own layout.
dinov2_pretrained = 'work_dirs/study/pretrain/dinov2/model.safetensors'
dinov2_backbone = dict(
    _delete_=True,
    type='PromptedTimmViT',
    model_name='vit_small_patch14_reg4_dinov2',
    model_kwargs=dict(embed_dim=64, depth=6, num_heads=4),
    checkpoint=dinov2_pretrained,
    img_size=(64, 64),  # crop_size of the bases
    patch_size=8,
    out_indices=(5, ),
    num_prompts=0,
    deep=True,
    prompt_dropout=0.0,
    freeze=True,
    tune_bias=False)
