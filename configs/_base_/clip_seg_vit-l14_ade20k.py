# The CLIP segmentation rows' base (./clip_seg_ade20k.py) on CLIP ViT-L/14 (OpenAI's
# weights): the image tower 1024 wide, 24 layers; the text tower 768 wide, 12 heads; the
# joint space 768. 512 is not a multiple of 14: patch_size=16 resamples the patch
# embedding (timm's resample_patch_embed) and the 16x16 position grid to 32x32 once, at
# load, as the DINOv2 configs do, so 512 crops give the 32x32 grid of the ViT-B/16 rows.
#   huggingface-cli download timm/vit_large_patch14_clip_224.openai open_clip_model.safetensors \
#       open_clip_config.json --local-dir pretrain/clip_vit_l14
_base_ = ['./clip_seg_ade20k.py']
clip = 'pretrain/clip_vit_l14/open_clip_model.safetensors'
embed_dims = 768
width = 1024
norm_cfg = dict(type='SyncBN', requires_grad=True)


def _aux_head(in_index, **head):
    return dict(in_channels=width, channels=256, in_index=in_index, num_convs=2, up_scale=2,
                norm_cfg=norm_cfg, align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4),
                **head)


model = dict(
    backbone=dict(model_name='vit_large_patch14_clip_quickgelu_224', checkpoint=clip,
                  patch_size=16, out_indices=(7, 15, 23)),
    decode_head=dict(in_channels=embed_dims, text_encoder=dict(
        checkpoint=clip, embed_dims=768, num_layers=12, num_heads=12, output_dims=768)),
    auxiliary_head=[_aux_head(i, type='TextSegHead', text_encoder='shared', residual=False)
                    for i in (0, 1)])

# (merged into the base's, which keeps its _delete_ for the linear rows)
linear_decode_head = dict(in_channels=embed_dims)
linear_auxiliary_head = [
    _aux_head(i, type='LeanSETRUPHead', num_classes=150, kernel_size=3, dropout_ratio=0)
    for i in (0, 1)]
