# Table 3, "Head only", on the DINOv2-with-registers family: the backbone frozen.
_base_ = ['./_base_/setr_tiny.py']
model = dict(backbone=dict(num_prompts=0))
optim_wrapper = dict(optimizer=dict(lr=5e-2))
