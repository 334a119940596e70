# Linear probe: a linear classifier on the frozen image tower's final normed [CLS] (the CLIP
# image embedding is a linear map of it); no text, so no projection is kept.
_base_ = ['./_base_/tiny_clip.py']
model = dict(backbone=dict(model_kwargs=dict(_delete_=True, embed_dim=64, depth=3,
                                             num_heads=4)),
             head=dict(_delete_=True, type='LinearClsHead', in_channels=64, num_classes=10))
optim_wrapper = dict(optimizer=dict(lr=1e-2, weight_decay=1e-4))
