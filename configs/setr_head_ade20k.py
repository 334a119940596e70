# Table 3, "Head only": frozen ViT-L, only the SETR-PUP heads train: 13.14M tuned;
# the paper says 13.18M (-0.3%).
_base_ = ['./_base_/setr_vpt_pup_ade20k.py']
model = dict(backbone=dict(num_prompts=0))
