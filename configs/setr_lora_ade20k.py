# "LoRA" beside Table 3 (Hu et al., ICLR 2022): the frozen ViT-L/16 with rank-8 updates
# W + (alpha / r) B A of every block's query and value projections, no prompts. Rank 8 on
# q and v is the LoRA paper's GLUE setting (its Sec. 7.1 finds W_q and W_v the best pair
# of targets for a fixed budget), peft's default, and the targets of V-PETL Bench's ViT
# (synbol/Parameter-Efficient-Transfer-Learning-Benchmark,
# ImageClassification/models/vision_transformer_lora.py: q and v, B A added unscaled);
# alpha = rank keeps that unit scale. Tuned: 13.14M (heads) + 24 x 2 x (1024 x 8 + 8 x 1024)
# = 0.79M (LoRA) = 13.93M. Optimizer: as the prompts, 10x the base lr; the base weight
# decay of this recipe is 0 (MMSeg's SETR config), so LoRA is not decayed either
# (configs/_base_/vpt_backbone.py).
_base_ = ['./_base_/setr_vpt_pup_ade20k.py']
model = dict(backbone=dict(num_prompts=0, lora=dict(rank=8, alpha=8, targets=('q', 'v'))))
