"""MMSeg's SETR up-sampling head, classifying before its last up-sampling."""
from typing import Optional

import torch
from mmseg.models.decode_heads import SETRUPHead
from mmseg.registry import MODELS

from .vit_ops import fast_path_default


@MODELS.register_module()
class LeanSETRUPHead(SETRUPHead):
    """:class:`~mmseg.models.decode_heads.SETRUPHead` (PUP and naive) with the 1x1
    classifier moved before the last bilinear up-sampling.

    The two commute (both are linear, and bilinear weights sum to one, so the bias passes
    through unchanged): the head computes the same function with the same parameters and
    checkpoints, but never builds the ``channels``-wide map at full resolution. For
    SETR-PUP on ADE20k (256 channels, 150 classes, 512x512) that is one 256 x 512 x 512
    activation less per head and image kept for the backward pass, and the classifier runs
    on 1/4 (decode head) or 1/16 (auxiliary heads) of the pixels.

    Args:
        fast_path: Classify first (None: on unless ``VPT_SEG_FAST_PATH=0``). Off, or with
            ``dropout_ratio > 0`` (dropout before the classifier does not commute), it is
            exactly ``SETRUPHead``.
        **kwargs: ``SETRUPHead``'s arguments.
    """

    def __init__(self, fast_path: Optional[bool] = None, **kwargs):
        super().__init__(**kwargs)
        self.fast_path = fast_path_default() if fast_path is None else fast_path

    def forward(self, inputs) -> torch.Tensor:
        if not self.fast_path or self.dropout is not None or not self.up_convs:
            return super().forward(inputs)
        x = self._transform_inputs(inputs)
        n, c, h, w = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))                     # (N, HW, C)
        x = x.transpose(1, 2).reshape(n, c, h, w)                       # (N, C, H, W)
        for up_conv in self.up_convs[:-1]:
            x = up_conv(x)
        conv, upsample = self.up_convs[-1]
        return upsample(self.conv_seg(conv(x)))                         # (N, K, sH, sW)
