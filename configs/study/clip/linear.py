# The linear row on the study's tiny CLIP: the same frozen image tower and per-pixel CLIP
# embeddings as the text rows, setr_tiny.py's SETR-PUP head with the text head's decoder
# widths and a learned 1x1 classifier in place of the class names' text embeddings.
_base_ = ['./_base_/tiny_clip_seg.py']
model = dict(decode_head={{_base_.linear_decode_head}})
# AdamW lr: the best of 5e-3 / 2e-2 / 5e-2 / 1e-1 (mIoU 71.63 / 75.48 / 77.56 / 75.83) on
# the study's target data (seed 0, 600 iterations; issue 28's search); Table 3's head
# row's rate too (configs/study/head.py).
optim_wrapper = dict(optimizer=dict(lr=5e-2))
