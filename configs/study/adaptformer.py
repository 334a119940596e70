# AdaptFormer (Chen et al., NeurIPS 2022): the head plus a bottleneck adapter beside every
# block's MLP, the paper's scale 0.1, width 8 (1/8 of the tiny width 64; the paper's 64 is
# 1/12 of ViT-B's 768): 6 x (64x8 + 8 + 8x64 + 64) = 6.6K, the order of VPT-deep's 3.8K
# prompts and VPT+Bias's 8.1K.
_base_ = ['./_base_/setr_tiny.py']
model = dict(backbone=dict(num_prompts=0, adapter=dict(width=8, scale=0.1)))
