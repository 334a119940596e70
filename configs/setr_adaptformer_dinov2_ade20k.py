# "AdaptFormer" on the frozen DINOv2 ViT-L/14 with registers: the settings of
# configs/setr_adaptformer_ade20k.py (width 64, scale 0.1; AdaptFormer's defaults), no
# prompts. The adapter branch is added outside DINOv2's LayerScale of the MLP
# (vpt_seg/tuners/adapter.py). Tuned: 13.14M (heads) + 3.17M (adapters) = 16.32M.
_base_ = ['./setr_vpt_dinov2_ade20k.py']
model = dict(backbone=dict(num_prompts=0, adapter=dict(width=64, scale=0.1)))
