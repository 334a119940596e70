# CoOp for segmentation on a frozen CLIP ViT-B/16, ADE20k 512x512: TextSegHead with 16
# learned context vectors shared by the 150 class names (docs/coop.md#segmentation).
#   python tools/train.py configs/clip_coop_vit-b16_ade20k.py
_base_ = ['./_base_/clip_seg_ade20k.py']
