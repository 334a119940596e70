# ../../pretrain_source.py with the backbone of backbone.py (dinov2/pretrain_source.py
# sets what pretraining changes).
_base_ = ['../../pretrain_source.py', './backbone.py']
model = dict(backbone={{_base_.dinov2_backbone}})
