# VPT-deep on the image tower, the text fixed at the hand-crafted prompt.
_base_ = ['./_base_/tiny_clip.py']
model = dict(backbone=dict(num_prompts=4, deep=True),
             head=dict(text_encoder=dict(n_ctx=0, templates='a photo of a {}.')))
