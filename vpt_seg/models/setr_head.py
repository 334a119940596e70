"""MMSeg's SETR up-sampling head, classifying before its last up-sampling."""
from typing import Optional

import torch
from mmseg.models.decode_heads import SETRUPHead
from mmseg.registry import MODELS
from torch.utils.checkpoint import checkpoint

from .vit_ops import fast_path_default


@MODELS.register_module()
class LeanSETRUPHead(SETRUPHead):
    """:class:`~mmseg.models.decode_heads.SETRUPHead` (PUP and naive) that computes the
    same function, with the same parameters and checkpoints, in less memory.

    * The 1x1 classifier runs before the last bilinear up-sampling. The two commute (both
      are linear, and bilinear weights sum to one, so the bias passes through): the head
      never builds the ``channels``-wide map at full resolution, and classifies 1/4
      (PUP decode head) or 1/16 (auxiliary heads) of the pixels.
    * In :meth:`loss`, the last up-sampling and the losses (full resolution, as in MMSeg)
      are recomputed in the backward pass instead of kept: what stays alive per head is
      the low-resolution logits, not a ``(B, num_classes, H, W)`` fp32 log-softmax. For
      SETR-PUP on ADE20k at batch 8 that is about 5 GiB less for the four heads.

    Args:
        fast_path: The above (None: on unless ``VPT_SEG_FAST_PATH=0``). Off, or with
            ``dropout_ratio > 0`` (dropout before the classifier does not commute), the
            head is exactly ``SETRUPHead``.
        **kwargs: ``SETRUPHead``'s arguments.
    """

    def __init__(self, fast_path: Optional[bool] = None, **kwargs):
        super().__init__(**kwargs)
        self.fast_path = fast_path_default() if fast_path is None else fast_path

    @property
    def lean(self) -> bool:
        return self.fast_path and self.dropout is None and len(self.up_convs) > 0

    def low_res_logits(self, inputs) -> torch.Tensor:
        """Everything but the last up-sampling: ``(N, num_classes, H / s, W / s)``."""
        x = self._transform_inputs(inputs)
        n, c, h, w = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))                     # (N, HW, C)
        x = x.transpose(1, 2).reshape(n, c, h, w)                       # (N, C, H, W)
        for up_conv in self.up_convs[:-1]:
            x = up_conv(x)
        conv = self.up_convs[-1][0]
        return self.conv_seg(conv(x))

    def forward(self, inputs) -> torch.Tensor:
        if not self.lean:
            return super().forward(inputs)
        upsample = self.up_convs[-1][1]
        return upsample(self.low_res_logits(inputs))                    # (N, K, H, W)

    def loss(self, inputs, batch_data_samples, train_cfg) -> dict:
        if not self.lean:
            return super().loss(inputs, batch_data_samples, train_cfg)
        upsample = self.up_convs[-1][1]

        def full_resolution_losses(low_res):
            return self.loss_by_feat(upsample(low_res), batch_data_samples)

        return checkpoint(full_resolution_losses, self.low_res_logits(inputs),
                          use_reentrant=False)
