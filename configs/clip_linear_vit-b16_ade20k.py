# The linear baseline on a frozen CLIP ViT-B/16, ADE20k 512x512: MMSeg's SETR-PUP head on
# the same per-pixel CLIP embeddings, with the text head's decoder widths and a learned
# 1x1 classifier in place of the class names' text embeddings.
_base_ = ['./_base_/clip_seg_ade20k.py']
model = dict(decode_head={{_base_.linear_decode_head}},
             auxiliary_head={{_base_.linear_auxiliary_head}})
