# CoOp end to end on a tiny random CLIP and generated data (CPU, offline, about a minute):
#   python tools/make_clip_demo.py --clip-out pretrain/tiny_clip --data-out data/cls_demo
#   python tools/train.py configs/demo/coop_cls_tiny.py
#   python tools/test.py configs/demo/coop_cls_tiny.py work_dirs/coop_cls_tiny/iter_300.pth
#   python tools/export_task.py configs/demo/coop_cls_tiny.py \
#       work_dirs/coop_cls_tiny/iter_300.pth work_dirs/coop_cls_tiny/coop.task
# configs/coop_cls_imagefolder.py shrunk: the same model with the tiny CLIP's shapes
# (vpt_seg/models/tiny_clip.py). Zero-shot with a template instead of a learned context:
#   --cfg-options model.head.text_encoder.n_ctx=0 \
#       "model.head.text_encoder.templates=a photo of a {}."
# VPT + CoOp: --cfg-options model.backbone.num_prompts=4
_base_ = ['../coop_cls_imagefolder.py']
clip = 'pretrain/tiny_clip/open_clip_model.safetensors'
data_root = 'data/cls_demo'
# vpt_seg.datasets.synthetic_cls.CLS_CLASSES, in classes.txt's order
classes = ['red disc', 'green square', 'blue triangle', 'yellow ring', 'magenta cross',
           'cyan stripes']
crop_size = 32
# (MMEngine substitutes base variables inside the base file: name them again here)
model = dict(
    backbone=dict(checkpoint=clip, img_size=(crop_size, crop_size), patch_size=8,
                  model_kwargs=dict(embed_dim=64, depth=2, num_heads=2, num_classes=32)),
    head=dict(text_encoder=dict(vocabulary=classes, checkpoint=clip, embed_dims=64,
                                num_layers=2, num_heads=2, output_dims=32,
                                context_length=77, total_vocab_size=49408)))

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

# A random CLIP needs a larger step than CoOp's 0.002 to move in 300 iterations.
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=3e-3, weight_decay=0.0))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=300,
                        eta_min=1e-5)]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=300, val_interval=150)
default_hooks = dict(logger=dict(interval=50),
                     checkpoint=dict(by_epoch=False, interval=150, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
