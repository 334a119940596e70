# "LoRA" on the frozen DINOv2 ViT-L/14 with registers: the settings of
# configs/setr_lora_ade20k.py (rank 8, alpha 8, q and v of every block; LoRA paper, V-PETL
# Bench) on timm's packed qkv, no prompts. Tuned: 13.14M (heads) + 0.79M (LoRA) = 13.93M.
_base_ = ['./setr_vpt_dinov2_ade20k.py']
model = dict(backbone=dict(num_prompts=0, lora=dict(rank=8, alpha=8, targets=('q', 'v'))))
