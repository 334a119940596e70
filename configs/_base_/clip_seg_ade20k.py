# What the CLIP segmentation rows share: a frozen CLIP ViT-B/16 (OpenAI's weights, as
# open_clip publishes them: one file, both towers), ADE20k 512x512, DenseCLIP's recipe
# (docs/coop.md#segmentation). The model here is the CoOp row's: a TextSegHead whose
# classes are the text embeddings of "[V]_1 ... [V]_16 [CLASS]." (16 learned context
# vectors, shared by the 150 classes), on CLIP's per-pixel embeddings (the last layer's
# patch tokens through the final norm and the frozen visual projection: project_out).
# Two auxiliary text heads on layers 4 and 8 share the decode head's text features (one
# pass of the 150 prompts through the text tower per step).
#
# The CLIP file:
#   huggingface-cli download timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors \
#       open_clip_config.json --local-dir pretrain/clip_vit_b16
# 512 crops: the 14x14 position grid is resampled to 32x32 once, at load.
#
# Recipe (DenseCLIP's, raoyongming/DenseCLIP configs/denseclip_fpn_vit-b_640x640_80k.py):
# AdamW lr 1e-4, weight decay 1e-4, 1500 iterations of linear warm-up, poly (power 0.9)
# to 1e-6 at 80k iterations, batch 32 (8 GPUs x 4). The only published recipe for learned
# text context in segmentation with MMSeg; Adam's per-tensor step suits the context
# vectors, the decoder and the prompts alike, where Table 3's SGD at 0.01 (0.1 for the
# heads) is far above CoOp's 0.002 for the context.
_base_ = ['mmseg::_base_/datasets/ade20k.py', 'mmseg::_base_/default_runtime.py',
          'mmseg::_base_/schedules/schedule_80k.py', './vpt_backbone.py']
clip = 'pretrain/clip_vit_b16/open_clip_model.safetensors'
crop_size = (512, 512)
embed_dims = 512   # CLIP's joint space (text_projection, visual.proj)
width = 768        # the image tower's tokens
norm_cfg = dict(type='SyncBN', requires_grad=True)


def _aux_head(in_index):  # on an intermediate layer: not in the joint space, no residual
    return dict(type='TextSegHead', in_channels=width, channels=256, in_index=in_index,
                text_encoder='shared', residual=False, num_convs=2, up_scale=2,
                norm_cfg=norm_cfg, align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4))


model = dict(
    type='BoundedEncoderDecoder',
    # OpenAI CLIP's normalisation, 0-255 RGB
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[122.770938, 116.746013, 104.093736],
                           std=[68.500533, 66.632158, 70.323163], bgr_to_rgb=True, pad_val=0,
                           seg_pad_val=255, size=crop_size),
    backbone=dict(type='PromptedTimmViT', model_name='vit_base_patch16_clip_quickgelu_224',
                  checkpoint=clip, img_size=crop_size, out_indices=(3, 7, 11),
                  final_norm=True, keep_projection=True, project_out=True,
                  num_prompts=0, deep=True, prompt_dropout=0.1, freeze=True, tune_bias=False),
    decode_head=dict(
        type='TextSegHead', in_channels=embed_dims, channels=256, in_index=-1, num_convs=2,
        up_scale=2, residual=True, norm_cfg=norm_cfg, align_corners=False,
        text_encoder=dict(type='CoOpTextEncoder', dataset_name='ade20k', checkpoint=clip,
                          n_ctx=16, ctx_init=None, csc=False, class_position='end'),
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=[_aux_head(0), _aux_head(1)],
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
tta_model = dict(type='BoundedSegTTAModel')

# The linear rows' heads (configs/clip_linear_vit-b16_ade20k.py): MMSeg's SETR-PUP head
# (LeanSETRUPHead) with the text head's decoder widths, a learned 1x1 classifier instead
# of the text embeddings.
linear_decode_head = dict(
    _delete_=True, type='LeanSETRUPHead', in_channels=embed_dims, channels=256, in_index=-1,
    num_classes=150, num_convs=2, up_scale=2, kernel_size=3, dropout_ratio=0,
    norm_cfg=norm_cfg, align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
linear_auxiliary_head = [
    dict(type='LeanSETRUPHead', in_channels=width, channels=256, in_index=i, num_classes=150,
         num_convs=2, up_scale=2, kernel_size=3, dropout_ratio=0, norm_cfg=norm_cfg,
         align_corners=False,
         loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4))
    for i in (0, 1)]

train_dataloader = dict(batch_size=4, dataset=dict(pipeline={{_base_.vpt_train_pipeline}}))
val_dataloader = dict(dataset=dict(pipeline={{_base_.vpt_test_pipeline}}))
test_dataloader = val_dataloader
tta_pipeline = {{_base_.vpt_tta_pipeline}}

# Only tuned tensors reach the optimizer (the context, the heads, prompts where there are
# any); prompts get no weight decay, the context is decayed as a weight (DenseCLIP).
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    constructor='TunedOptimWrapperConstructor', paramwise_cfg=dict(prompt_decay_mult=0.))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=0.9, eta_min=1e-6, by_epoch=False, begin=1500, end=80000)]
default_hooks = {{_base_.vpt_default_hooks}}
