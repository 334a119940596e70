# Table 3, "VPT-shallow": prompts inserted once, before the first layer. The paper does
# not state this row's length; we use 100 tokens (0.10M tuned beyond the heads' 13.14M), the
# length it uses for VPT+Bias, since shallow prompts need more tokens than deep ones.
_base_ = ['./_base_/setr_vpt_pup_ade20k.py']
model = dict(backbone=dict(num_prompts=100, deep=False))
