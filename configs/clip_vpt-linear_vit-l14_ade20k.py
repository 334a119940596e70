# VPT-deep + the linear head on a frozen CLIP ViT-L/14, ADE20k 512x512: 10 prompts in
# every layer of the image tower, MMSeg's SETR-PUP head with a learned classifier.
_base_ = ['./clip_linear_vit-l14_ade20k.py']
model = dict(backbone=dict(num_prompts=10))
