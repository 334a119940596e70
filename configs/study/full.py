# Table 3, "Full": every weight tuned, starting from the pretrained backbone. The task
# file then holds the whole model.
_base_ = ['./_base_/setr_tiny.py']
model = dict(backbone=dict(num_prompts=0, freeze=False))
optim_wrapper = dict(optimizer=dict(lr=5e-3))
