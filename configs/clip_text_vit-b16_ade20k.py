# The fixed-text baseline on a frozen CLIP ViT-B/16, ADE20k 512x512: TextSegHead with
# MMSeg's 14 ViLD templates ("a photo of a {}." ...) ensembled, nothing learned on the
# text side; only the decoder trains.
_base_ = ['./clip_coop_vit-b16_ade20k.py']
model = dict(decode_head=dict(text_encoder=dict(n_ctx=0, templates='vild')))
