# CoOp with the class name in the middle of the 4 context vectors.
_base_ = ['./_base_/tiny_clip.py']
model = dict(head=dict(text_encoder=dict(n_ctx=4, ctx_init='a photo of a', csc=False,
                                         class_position='middle')))
