# CoOp: a unified context of 4 learned vectors before the class name (CoOp's 16 would put the
# class name past the positions the tiny CLIP's captions reach; 4 is "a photo of a"'s length).
_base_ = ['./_base_/tiny_clip.py']
model = dict(head=dict(text_encoder=dict(n_ctx=4, ctx_init='a photo of a', csc=False,
                                         class_position='end')))
