# VPT-deep + CoOp on the study's tiny CLIP: 10 prompts at the input of every layer of the
# image tower (Table 3's VPT-deep) and the CoOp row's 4 learned context vectors.
_base_ = ['./coop.py']
model = dict(backbone=dict(num_prompts=10, deep=True))
