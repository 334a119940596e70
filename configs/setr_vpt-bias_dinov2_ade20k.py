# VPT+Bias on the frozen DINOv2 ViT-L/14 with registers: 100 deep prompts (the VPT authors'
# length for this row, as configs/setr_vpt-bias_ade20k.py) plus every bias of the ViT.
_base_ = ['./setr_vpt_dinov2_ade20k.py']
model = dict(backbone=dict(num_prompts=100, deep=True, tune_bias=True))
