# VPT+Bias on the frozen EVA02-L/14: 100 deep prompts plus every bias of the ViT (EVA02's
# key projections have none; the build log names what is tuned).
_base_ = ['./setr_vpt_eva02_ade20k.py']
model = dict(backbone=dict(num_prompts=100, deep=True, tune_bias=True))
