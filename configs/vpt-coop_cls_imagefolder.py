# VPT + CoOp: learned context on the text tower (configs/coop_cls_imagefolder.py) and
# VPT-deep prompts on the image tower, one frozen CLIP (docs/coop.md#with-vpt). Both are
# tuned together by one optimizer; the prompts are not weight-decayed
# (paramwise_cfg.prompt_decay_mult=0, inherited). IVLP (Khattak et al., CVPR 2023) is this
# setup; the prompt length and dropout here are VPT's classification defaults, untuned for
# CLIP. Bias tuning, LoRA and AdaptFormer on the image tower are options of the same
# backbone (model.backbone.tune_bias / lora / adapter).
_base_ = ['./coop_cls_imagefolder.py']
model = dict(backbone=dict(num_prompts=8, deep=True, prompt_dropout=0.1))
