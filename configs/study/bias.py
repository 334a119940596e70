# Table 3, "Bias": the head plus every bias term of the frozen ViT (BitFit).
_base_ = ['./_base_/setr_tiny.py']
model = dict(backbone=dict(num_prompts=0, tune_bias=True))
