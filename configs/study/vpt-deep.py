# Table 3, "VPT-deep": the head plus fresh prompts at the input of every layer.
_base_ = ['./_base_/setr_tiny.py']
model = dict(backbone=dict(num_prompts=10, deep=True))
