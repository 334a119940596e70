# The main config (configs/setr_vpt_ade20k.py: SETR-PUP + VPT-deep) shrunk to a tiny ViT
# and 32x32 crops, for tools/demo.py and the end-to-end tests on CPU. tools/demo.py
# generates data/ade_tiny and pretrain/tiny_vit.pth.
_base_ = ['../setr_vpt_ade20k.py', '../_base_/ade_tiny_data.py']
crop_size = (32, 32)
norm_cfg = dict(type='BN', requires_grad=True)
width = 32


def _aux(in_index):
    return dict(type='LeanSETRUPHead', in_channels=width, channels=16, in_index=in_index,
                num_classes=150, dropout_ratio=0, norm_cfg=norm_cfg, act_cfg=dict(type='ReLU'),
                num_convs=2, kernel_size=3, align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4))


model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, patch_size=8, embed_dims=width, num_layers=4,
                  num_heads=4, out_indices=(0, 1, 2, 3), num_prompts=4,
                  init_cfg=dict(checkpoint='pretrain/tiny_vit.pth')),
    decode_head=dict(in_channels=width, channels=16, norm_cfg=norm_cfg, num_convs=2),
    auxiliary_head=[_aux(0), _aux(1), _aux(2)],
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(24, 24)))

# The generated data at 32x32 crops (configs/_base_/ade_tiny_data.py).
train_pipeline = {{_base_.tiny_train_pipeline}}
test_pipeline = {{_base_.tiny_test_pipeline}}
img_ratios = [0.75, 1.0, 1.25]
tta_pipeline = [
    dict(type='CheckedLoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='CheckedLoadAnnotations', reduce_zero_label=True, num_classes=150)],
        [dict(type='PackSegInputs')]])
]
train_dataloader = {{_base_.tiny_train_dataloader}}
val_dataloader = {{_base_.tiny_val_dataloader}}
test_dataloader = val_dataloader

optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0)
optim_wrapper = dict(optimizer=optimizer)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=40, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40, val_interval=20)
default_hooks = dict(logger=dict(interval=10),
                     checkpoint=dict(interval=20, max_keep_ckpts=2),
                     visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
