# Table 3, "VPT-deep", on the DINOv2-with-registers family: 10 prompts at the input of
# every layer, right after [CLS] and the 4 registers.
_base_ = ['./_base_/setr_tiny.py']
model = dict(backbone=dict(num_prompts=10, deep=True))
