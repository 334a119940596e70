# Table 3, "Full": every weight tuned (MMSeg's SETR-PUP recipe with the patch bias kept).
# Checkpoints then hold the whole model.
_base_ = ['./_base_/setr_vpt_pup_ade20k.py']
model = dict(backbone=dict(num_prompts=0, freeze=False))
optim_wrapper = dict(paramwise_cfg=dict(prompt_lr_mult=1.))
