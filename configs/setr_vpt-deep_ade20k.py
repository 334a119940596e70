# Table 3, "VPT-deep": 10 prompts at every layer's input. 10 is the length the VPT
# authors give for this row (KMnP/vpt issue #13). Tuned: 13.14M (SETR-PUP heads)
# + 24 x 10 x 1024 = 0.25M (prompts) = 13.39M; the paper's Table 3 says 13.43M (-0.3%).
# `python tools/count_params.py configs/setr_vpt-deep_ade20k.py` prints the breakdown.
_base_ = ['./_base_/setr_vpt_pup_ade20k.py']
model = dict(backbone=dict(num_prompts=10, deep=True))
