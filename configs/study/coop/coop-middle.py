# CoOp with the class name in the middle of the 16 context vectors.
_base_ = ['./_base_/tiny_clip.py']
model = dict(head=dict(text_encoder=dict(n_ctx=16, csc=False, class_position='middle')))
