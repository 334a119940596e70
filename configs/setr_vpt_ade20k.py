# The main entry: SETR-PUP + VPT-deep on a frozen ViT-L/16, ADE20k 512x512.
#   python tools/train.py configs/setr_vpt_ade20k.py
#   python tools/test.py configs/setr_vpt_ade20k.py \
#       work_dirs/setr_vpt_ade20k/iter_160000.pth [--tta]
_base_ = ['./setr_vpt-deep_ade20k.py']
