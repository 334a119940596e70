# CoOp for segmentation on the study's tiny CLIP (frozen): TextSegHead with 4 learned
# context vectors shared by the 8 class names, "[V]_1 .. [V]_4 [CLASS].", started at "a
# photo of a" (the text row's template, so the row starts where text.py stays). 4, not
# CoOp's 16: the tiny CLIP's text tower was trained on its first 16 positions only
# (clip_pretrain.TRAIN_CONTEXT; its captions are shorter still), so 16 vectors would put the
# class name and the end token on untrained positions; 4 is the template's length.
_base_ = ['./_base_/tiny_clip_seg.py']
