# VPT-deep + CoOp on a frozen CLIP ViT-L/14, ADE20k 512x512: 10 prompts in every layer of
# the image tower (Table 3's VPT-deep) and 16 learned context vectors on the text tower.
_base_ = ['./clip_coop_vit-l14_ade20k.py']
model = dict(backbone=dict(num_prompts=10))
