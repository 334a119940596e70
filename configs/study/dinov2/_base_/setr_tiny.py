# The study's target rows on the DINOv2-with-registers family: ../../_base_/setr_tiny.py
# (SETR-PUP, the target task, the schedule) with the backbone of backbone.py.
_base_ = ['../../_base_/setr_tiny.py', './backbone.py']
model = dict(backbone={{_base_.dinov2_backbone}})
