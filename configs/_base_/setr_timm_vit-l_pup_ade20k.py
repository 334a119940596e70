# What the timm ViT-L configs share: SETR-PUP + VPT-deep on a frozen timm ViT-L at 512x512,
# the same heads, data and schedule as configs/setr_vpt_ade20k.py. A config names the
# model (model_name) and its weights (checkpoint).
#
# patch_size=16: a patch-14 model's patch embedding and position grid are resampled once,
# at load (512 is not a multiple of 14), so 512 crops give the 32x32 token grid of the
# ViT-L/16 configs; out_indices are those of the SETR ViT-L configs.
_base_ = ['./setr_vpt_pup_ade20k.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='PromptedTimmViT',
        model_name=None,
        checkpoint=None,
        img_size=(512, 512),
        patch_size=16,
        out_indices=(9, 14, 19, 23),
        final_norm=False,
        num_prompts=10,
        deep=True,
        prompt_dropout=0.1,
        freeze=True,
        tune_bias=False))
