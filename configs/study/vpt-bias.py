# Table 3, "VPT+Bias": deep prompts plus every bias term of the frozen ViT.
_base_ = ['./_base_/setr_tiny.py']
model = dict(backbone=dict(num_prompts=10, deep=True, tune_bias=True))
