# LoRA (Hu et al., ICLR 2022): the head plus rank-4 updates (alpha 4, so B A is added
# unscaled, as configs/setr_lora_ade20k.py does at rank 8) of every block's query and
# value projections. 6 layers x 2 sites x (64x4 + 4x64) = 6.1K, the order of VPT-deep's
# 3.8K prompts and VPT+Bias's 8.1K; rank 4 is a quarter of a head's width (16).
_base_ = ['./_base_/setr_tiny.py']
model = dict(backbone=dict(num_prompts=0, lora=dict(rank=4, alpha=4, targets=('q', 'v'))))
# The base's 2e-2 is this row's best of the study's search (5e-3, 2e-2, 5e-2 on the target
# validation set, docs/study.md): 80.31 mIoU against 66.55 at 5e-2 and 73.04 at 5e-3.
