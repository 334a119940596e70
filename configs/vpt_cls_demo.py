# A tiny end-to-end classification run on generated data (CPU, about a minute):
#   python tools/make_cls_demo.py --out data/cls_demo --backbone-out pretrain/tiny_vit_cls.pth
#   python tools/train.py configs/vpt_cls_demo.py
#   python tools/test.py configs/vpt_cls_demo.py work_dirs/vpt_cls_demo/iter_300.pth
# The "pretrained" backbone is a random tiny ViT: frozen random features plus prompts
# and a linear head are enough for the demo's colour/shape classes.
_base_ = ['./vpt_cls_imagefolder.py']
pretrained = 'pretrain/tiny_vit_cls.pth'
data_root = 'data/cls_demo'
crop_size = 32
embed_dims = 32
model = dict(
    backbone=dict(img_size=(crop_size, crop_size), patch_size=8, embed_dims=embed_dims,
                  num_layers=4, num_heads=4, num_prompts=4, prompt_dropout=0.0,
                  init_cfg=dict(checkpoint=pretrained)),
    head=dict(in_channels=embed_dims, num_classes=6))

train_pipeline = [
    dict(type='CheckedLoadImageFromFile', check_orientation=False),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackClsInputs'),
]
test_pipeline = [dict(type='CheckedLoadImageFromFile', check_orientation=False),
                 dict(type='PackClsInputs')]
train_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, classes='classes.txt', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, classes='classes.txt', pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=3e-3, weight_decay=0.0))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=300,
                        eta_min=1e-5)]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=300, val_interval=150)
default_hooks = dict(logger=dict(interval=50),
                     checkpoint=dict(by_epoch=False, interval=150, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
