# SETR-PUP on a frozen, prompted ViT-L/16, ADE20k 512x512: the shared base of the paper's
# Table 3 rows (Jia et al., VPT, ECCV 2022). Everything not set here is MMSeg's own
# `setr_vit-l_pup_8xb2-160k_ade20k-512x512` (heads, data, 160k-iteration schedule, TTA).
_base_ = ['mmseg::setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py', './vpt_backbone.py']
model = dict(backbone={{_base_.vpt_backbone}})
optim_wrapper = {{_base_.vpt_optim_wrapper}}
