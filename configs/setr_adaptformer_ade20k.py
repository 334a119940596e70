# "AdaptFormer" beside Table 3 (Chen et al., NeurIPS 2022): the frozen ViT-L/16 with a
# bottleneck adapter parallel to every block's MLP, s * up(ReLU(down(LN(x)))), no prompts.
# Width 64 and scale s = 0.1 are the paper's defaults (github.com/ShoufaChen/AdaptFormer:
# ffn_num=64, ffn_adapter_scalar=0.1, ffn_option='parallel'; the adapter's up-projection
# starts at zero). Tuned: 13.14M (heads)
# + 24 x (1024 x 64 + 64 + 64 x 1024 + 1024) = 3.17M (adapters) = 16.32M. Optimizer: as
# the prompts, 10x the base lr; the base weight decay of this recipe is 0 (MMSeg's SETR
# config), so adapters are not decayed either (configs/_base_/vpt_backbone.py).
_base_ = ['./_base_/setr_vpt_pup_ade20k.py']
model = dict(backbone=dict(num_prompts=0, adapter=dict(width=64, scale=0.1)))
