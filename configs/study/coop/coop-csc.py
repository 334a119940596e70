# CoOp with class-specific context (CSC): 4 vectors of its own for every class.
_base_ = ['./_base_/tiny_clip.py']
model = dict(head=dict(text_encoder=dict(n_ctx=4, ctx_init='a photo of a', csc=True,
                                         class_position='end')))
