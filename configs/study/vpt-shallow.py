# Table 3, "VPT-shallow": the head plus prompts inserted once, before the first layer.
_base_ = ['./_base_/setr_tiny.py']
model = dict(backbone=dict(num_prompts=10, deep=False))
