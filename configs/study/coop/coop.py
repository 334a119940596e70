# CoOp: a unified context of 16 learned vectors before the class name (the paper's default).
_base_ = ['./_base_/tiny_clip.py']
model = dict(head=dict(text_encoder=dict(n_ctx=16, csc=False, class_position='end')))
