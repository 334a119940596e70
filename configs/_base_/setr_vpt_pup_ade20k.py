# SETR-PUP on a frozen, prompted ViT-L/16, ADE20k 512x512: the shared base of the paper's
# Table 3 rows (Jia et al., VPT, ECCV 2022). Everything not set here is MMSeg's own
# `setr_vit-l_pup_8xb2-160k_ade20k-512x512` (heads, data, 160k-iteration schedule, TTA).
#
# The heads are MMSeg's SETRUPHead as LeanSETRUPHead: the same function, parameters and
# checkpoints, classifying before the last up-sampling (vpt_seg/models/setr_head.py).
# The auxiliary heads are MMSeg's, written out because a config cannot change one key
# inside an inherited list.
_base_ = ['mmseg::setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py', './vpt_backbone.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)


def _aux_head(in_index):  # MMSeg's SETR-PUP auxiliary head, ADE20k
    return dict(type='LeanSETRUPHead', in_channels=1024, channels=256, in_index=in_index,
                num_classes=150, dropout_ratio=0, norm_cfg=norm_cfg, act_cfg=dict(type='ReLU'),
                num_convs=2, kernel_size=3, align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4))


# BoundedEncoderDecoder: MMSeg's EncoderDecoder whose label maps of large images are
# resized and argmaxed in bands of rows, in bounded memory (vpt_seg/models/segmentor.py).
model = dict(type='BoundedEncoderDecoder', backbone={{_base_.vpt_backbone}},
             decode_head=dict(type='LeanSETRUPHead'),
             auxiliary_head=[_aux_head(0), _aux_head(1), _aux_head(2)])
tta_model = dict(type='BoundedSegTTAModel')
optim_wrapper = {{_base_.vpt_optim_wrapper}}
default_hooks = {{_base_.vpt_default_hooks}}
train_dataloader = dict(dataset=dict(pipeline={{_base_.vpt_train_pipeline}}))
val_dataloader = dict(dataset=dict(pipeline={{_base_.vpt_test_pipeline}}))
test_dataloader = val_dataloader
tta_pipeline = {{_base_.vpt_tta_pipeline}}
