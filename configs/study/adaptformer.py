# AdaptFormer (Chen et al., NeurIPS 2022): the head plus a bottleneck adapter beside every
# block's MLP, the paper's scale 0.1, width 8 (1/8 of the tiny width 64; the paper's 64 is
# 1/12 of ViT-B's 768): 6 x (64x8 + 8 + 8x64 + 64) = 6.6K, the order of VPT-deep's 3.8K
# prompts and VPT+Bias's 8.1K.
_base_ = ['./_base_/setr_tiny.py']
model = dict(backbone=dict(num_prompts=0, adapter=dict(width=8, scale=0.1)))
# The study's search (5e-3, 2e-2, 5e-2 on the target validation set, docs/study.md):
# 83.58 mIoU at 5e-2 against 81.62 at 2e-2 and 69.47 at 5e-3.
optim_wrapper = dict(optimizer=dict(lr=5e-2))
