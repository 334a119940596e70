# CoOp for segmentation on the study's tiny CLIP (frozen): TextSegHead with 4 learned
# context vectors shared by the 8 class names, "[V]_1 .. [V]_4 [CLASS].", started at "a
# photo of a" (text.py's template: the row starts where the text row stays). Why 4, not
# CoOp's 16: the tiny CLIP's text tower learned only the positions its captions reach (15
# tokens at most, start and end included; clip_pretrain.TRAIN_CONTEXT = 16), and 16
# vectors would put the name, "." and the end token at positions 17 to 19, which are
# random rows; 4 is the template's length (8 positions in all; 8 vectors would still fit).
_base_ = ['./_base_/tiny_clip_seg.py']
# AdamW lr: the best of 5e-3 / 2e-2 / 5e-2 / 1e-1 / 2e-1 (mIoU 65.59 / 68.51 / 71.92 /
# 74.66 / 74.00) on the study's target data (seed 0, 600 iterations; issue 28's search).
optim_wrapper = dict(optimizer=dict(lr=1e-1))
