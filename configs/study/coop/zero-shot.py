# Zero-shot CLIP: CoOp's hand-crafted prompt, nothing learned (evaluated with tools/test.py
# on a checkpoint of the model as built).
_base_ = ['./_base_/tiny_clip.py']
model = dict(head=dict(text_encoder=dict(n_ctx=0, templates='a photo of a {}.')))
