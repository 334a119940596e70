# VPT-deep + CoOp (both towers prompted, the IVLP setup; configs/vpt-coop_cls_imagefolder.py
# at the study's scale): deep image prompts and a unified text context of 4.
_base_ = ['./_base_/tiny_clip.py']
model = dict(backbone=dict(num_prompts=4, deep=True),
             head=dict(text_encoder=dict(n_ctx=4, ctx_init='a photo of a', csc=False,
                                         class_position='end')))
