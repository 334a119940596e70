# Table 3, "Bias": frozen ViT-L with every bias term tuned, no prompts:
# 13.14M (heads) + 0.27M (biases) = 13.41M tuned (tools/count_params.py); the paper says
# 13.46M (-0.4%).
_base_ = ['./_base_/setr_vpt_pup_ade20k.py']
model = dict(backbone=dict(num_prompts=0, tune_bias=True))
