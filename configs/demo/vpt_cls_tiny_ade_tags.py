# Image tags on generated ADE20k-layout data with a tiny ViT trained from scratch (CPU,
# a minute or two); configs/vpt_cls_ade20k_tags.py shrunk:
#   python tools/make_ade20k_demo.py --out data/ade_tags_demo --task target \
#       --num-train 64 --num-val 16
#   python tools/train.py configs/demo/vpt_cls_tiny_ade_tags.py
#   python tools/test.py configs/demo/vpt_cls_tiny_ade_tags.py \
#       work_dirs/vpt_cls_tiny_ade_tags/iter_200.pth
_base_ = ['../vpt_cls_ade20k_tags.py']
data_root = 'data/ade_tags_demo/ADEChallengeData2016'
# the target task's classes, ADE ids 20..27 (vpt_seg.datasets.TASK_CLASSES)
classes = ('chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea')
embed_dims = 32
model = dict(
    backbone=dict(img_size=(64, 64), patch_size=8, embed_dims=embed_dims, num_layers=4,
                  num_heads=4),
    head=dict(in_channels=embed_dims, num_classes=len(classes)))

train_pipeline = [
    dict(type='CheckedLoadImageFromFile', check_orientation=False),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackClsInputs'),
]
test_pipeline = [dict(type='CheckedLoadImageFromFile', check_orientation=False),
                 dict(type='PackClsInputs')]
train_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.01))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=200,
                        eta_min=1e-5)]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=200, val_interval=100)
default_hooks = dict(logger=dict(interval=20),
                     checkpoint=dict(by_epoch=False, interval=100, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
