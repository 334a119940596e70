# Makes the study's "pretrained" model: SETR-PUP with a tiny ViT trained from scratch on
# the synthetic source task (ADE ids 1..8), every weight tuned. tools/study.py saves its
# backbone as `pretrained` (an MMSeg-format ViT state dict) for the target-task rows.
_base_ = ['./_base_/setr_tiny.py']
data_root = 'work_dirs/study/data/source/ADEChallengeData2016'
classes = ('wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed ')
max_iters = 1500
model = dict(backbone=dict(freeze=False, init_cfg=None), decode_head=dict(num_classes=8))
train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=dict(classes=classes)))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=dict(classes=classes)))
test_dataloader = val_dataloader
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
