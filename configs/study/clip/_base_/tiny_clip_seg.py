# The study's CLIP rows: Table 3's target task (setr_tiny.py: the same data root key, 64x64
# images, 8 classes, pipelines, loaders, 600-iteration AdamW warm-up + poly schedule and
# SETR-PUP decoder widths) on the tiny CLIP that `python tools/study.py` pretrains
# (vpt_seg/experiments/clip_pretrain.py, CLIP_SHAPE: 32 px, patch 8, both towers 64 wide,
# 3 image and 2 text layers, joint space 64), frozen. configs/_base_/clip_seg_ade20k.py at
# the study's scale: the image tower's last layer through its final norm and the visual
# projection (project_out) gives per-pixel embeddings (B, 64, 8, 8); the 4x4 position grid
# of the 32 px CLIP is resampled to 8x8 once, at load. One decode head, no auxiliary heads.
# The model here is the CoOp row's (coop.py); each row file beside this one changes what
# differs and sets its AdamW rate (the search is in each file). The study passes the data
# root, the seed and the CLIP file (model.backbone.checkpoint, and model.decode_head.
# text_encoder.checkpoint where there is a text encoder) through --cfg-options.
#
# The class names are the target task's ADE names, but the tiny CLIP's token table was
# trained only on the ~45 tokens of its captions (colours, shapes, "a photo of", ...):
# "chair", "car", "water", ... are untrained rows of the table (random, N(0, 0.02)). So
# the text side here carries no knowledge of the names, only a fixed random code per
# class that the decoder (and the context, in the CoOp rows) must learn to match: part of
# what these rows show, against the linear head's free classifier.
_base_ = ['../../_base_/setr_tiny.py']

# Written by `python tools/study.py` (override with --cfg-options, see docs/study.md).
clip = 'work_dirs/study/coop/tiny_clip/open_clip_model.safetensors'
embed_dims = 64  # the tiny CLIP's joint space (visual.proj, text_projection)

model = dict(
    # OpenAI CLIP's normalisation, as the tiny CLIP was pretrained with (0-255 RGB)
    data_preprocessor=dict(mean=[122.770938, 116.746013, 104.093736],
                           std=[68.500533, 66.632158, 70.323163]),
    backbone=dict(
        _delete_=True, type='PromptedTimmViT', model_name='vit_base_patch16_clip_quickgelu_224',
        checkpoint=clip, img_size={{_base_.crop_size}}, patch_size=8,
        model_kwargs=dict(embed_dim=64, depth=3, num_heads=4, num_classes=embed_dims),
        out_indices=(2, ), final_norm=True, keep_projection=True, project_out=True,
        num_prompts=0, deep=True, prompt_dropout=0.0, freeze=True, tune_bias=False),
    # SETR-PUP's up-sampling path at setr_tiny.py's width, 2 x [conv 32, x2]: 8x8 -> 32x32,
    # then 1x1 to the joint space and the scaled cosine against the class names' text
    # embeddings; MMSeg resizes the 32x32 logits to the labels' 64x64. Two stages, not
    # setr_tiny.py's three: the Table 3 head classifies before its last up-sampling
    # (LeanSETRUPHead: a linear classifier commutes with it), at 32x32, but the cosine
    # does not commute, so a third stage would build the 64-wide pixel embeddings, their
    # norm and the residual at 64x64: 3x a Table 3 row's step on a CPU core (measured;
    # 306 s of training against ~60 s). The text tower runs once per step on the 8
    # prompts only, up to the longest prompt's end token (8 positions with 4 context
    # vectors, not 77), and not at all with fixed text (text.py: cached).
    decode_head=dict(
        _delete_=True, type='TextSegHead', in_channels=embed_dims, channels=32, in_index=-1,
        num_convs=2, up_scale=2, kernel_size=3, residual=True, dropout_ratio=0,
        norm_cfg={{_base_.norm_cfg}}, align_corners=False,
        text_encoder=dict(type='CoOpTextEncoder', vocabulary={{_base_.classes}},
                          checkpoint=clip, embed_dims=64, num_layers=2, num_heads=4,
                          output_dims=embed_dims, n_ctx=4, ctx_init='a photo of a', csc=False,
                          class_position='end'),
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))

# The linear row's head (linear.py): setr_tiny.py's LeanSETRUPHead with the text head's
# widths and stages on the same projected map; a learned 1x1 classifier instead of the
# text, also at 32x32 (it commutes with the head's last up-sampling). (8: the
# target task's classes; a base variable cannot be counted here, tools/train.py checks it.)
linear_decode_head = dict(
    _delete_=True, type='LeanSETRUPHead', in_channels=embed_dims, channels=32, in_index=-1,
    num_classes=8, num_convs=2, up_scale=2, kernel_size=3,
    dropout_ratio=0, norm_cfg={{_base_.norm_cfg}}, align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
