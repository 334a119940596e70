# VPT-deep (10 prompts) under MMSeg's SETR-Naive head (and its 3 auxiliary heads).
_base_ = ['mmseg::setr/setr_vit-l_naive_8xb2-160k_ade20k-512x512.py', './_base_/vpt_backbone.py']
# BoundedEncoderDecoder: MMSeg's EncoderDecoder, label maps of large images in bounded
# memory (vpt_seg/models/segmentor.py)
model = dict(type='BoundedEncoderDecoder', backbone={{_base_.vpt_backbone}})
tta_model = dict(type='BoundedSegTTAModel')
optim_wrapper = {{_base_.vpt_optim_wrapper}}
default_hooks = {{_base_.vpt_default_hooks}}
train_dataloader = dict(dataset=dict(pipeline={{_base_.vpt_train_pipeline}}))
val_dataloader = dict(dataset=dict(pipeline={{_base_.vpt_test_pipeline}}))
test_dataloader = val_dataloader
tta_pipeline = {{_base_.vpt_tta_pipeline}}
