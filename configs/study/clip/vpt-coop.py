# VPT-deep + CoOp on the study's tiny CLIP: 10 prompts at the input of every layer of the
# image tower (Table 3's VPT-deep) and the CoOp row's 4 learned context vectors.
_base_ = ['./coop.py']
model = dict(backbone=dict(num_prompts=10, deep=True))
# AdamW lr (prompts, context and decoder alike): the best of 5e-3 / 2e-2 / 5e-2 / 1e-1 /
# 2e-1 / 4e-1 (mIoU 69.41 / 74.95 / 75.97 / 76.32 / 77.76 / 76.23) on the study's target
# data (seed 0, 600 iterations; issue 28's search).
optim_wrapper = dict(optimizer=dict(lr=2e-1))
