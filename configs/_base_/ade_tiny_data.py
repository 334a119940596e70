# The generated ADE20k-layout data of tools/demo.py (data/ade_tiny) at 32x32 crops, shared
# by the tiny demo configs (configs/demo/setr_vpt_tiny_ade20k.py, coop_seg_tiny_ade20k.py).
# Named apart so it merges beside any model's bases; a demo takes them with
#   train_dataloader = {{_base_.tiny_train_dataloader}}
# The Checked* loaders refuse bad files by name (vpt_seg/datasets/checks.py). The crop is
# the demos' crop_size.
tiny_train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='CheckedLoadAnnotations', reduce_zero_label=True, num_classes=150),
    dict(type='RandomResize', scale=(128, 32), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(32, 32), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
tiny_test_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='Resize', scale=(128, 48), keep_ratio=True),
    dict(type='CheckedLoadAnnotations', reduce_zero_label=True, num_classes=150),
    dict(type='PackSegInputs')
]
tiny_train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                             dataset=dict(data_root='data/ade_tiny/ADEChallengeData2016',
                                          pipeline=tiny_train_pipeline))
tiny_val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                           dataset=dict(data_root='data/ade_tiny/ADEChallengeData2016',
                                        pipeline=tiny_test_pipeline))
