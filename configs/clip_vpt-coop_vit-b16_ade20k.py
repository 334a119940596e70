# VPT-deep + CoOp on a frozen CLIP ViT-B/16, ADE20k 512x512: 10 prompts in every layer of
# the image tower (Table 3's VPT-deep) and 16 learned context vectors on the text tower.
_base_ = ['./clip_coop_vit-b16_ade20k.py']
model = dict(backbone=dict(num_prompts=10))
