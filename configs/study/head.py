# Table 3, "Head only": the pretrained tiny ViT is frozen; only the SETR-PUP head trains.
_base_ = ['./_base_/setr_tiny.py']
model = dict(backbone=dict(num_prompts=0))
optim_wrapper = dict(optimizer=dict(lr=5e-2))
