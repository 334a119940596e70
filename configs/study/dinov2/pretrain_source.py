# The DINOv2-with-registers family's "pretrained" model, made as the first family's
# (../pretrain_source.py: multi-label tags of the source images, a linear head on the
# final normed [CLS], every weight tuned from scratch). tools/study.py saves its timm
# model as dinov2/model.safetensors (timm's state dict) for the target rows' checkpoint=.
_base_ = ['./_base_/pretrain.py']
model = dict(backbone=dict(checkpoint=None, freeze=False, output_cls_token=True,
                           final_norm=True))
