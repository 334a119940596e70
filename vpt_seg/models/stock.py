"""The stock counterpart of :class:`~vpt_seg.models.timm_vit.PromptedTimmViT`, for the
benchmark: the same timm model run by timm itself, nothing of ours in its forward."""
from typing import Optional

import timm
import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from .timm_vit import final_norm_attr

__all__ = ['StockTimmViT', 'TIMM_STOCK_KEYS']

#: PromptedTimmViT options StockTimmViT takes as they are.
TIMM_STOCK_KEYS = ('model_name', 'model_kwargs', 'img_size', 'patch_size', 'dynamic_img_size',
                   'out_indices', 'final_norm')


@MODELS.register_module()
class StockTimmViT(BaseModule):
    """The stock counterpart of ``PromptedTimmViT``: the same timm model (same
    ``model_name``, ``model_kwargs``, ``img_size``, ``patch_size``), random weights, run
    by timm's own ``forward_intermediates(..., output_fmt='NCHW')``; no prompts, nothing
    of ours in the forward. Heads and norms unused for segmentation are dropped as ours
    drops them; ``final_norm=True`` normalizes the last map (timm's ``norm=`` would
    normalize every intermediate).

    Shapes:
        ``(B, 3, H, W)`` in; a tuple of ``(B, C, H / p, W / p)`` maps, one per
        ``out_indices``.
    """

    def __init__(self, model_name: str, model_kwargs: Optional[dict] = None, img_size=None,
                 patch_size: Optional[int] = None, dynamic_img_size: bool = True,
                 out_indices=-1, final_norm: bool = False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        kwargs = dict(model_kwargs or {})
        if img_size is not None:
            kwargs['img_size'] = tuple(img_size) if isinstance(img_size, (list, tuple)) \
                else img_size
        if patch_size is not None:
            kwargs['patch_size'] = patch_size
        self.vit = timm.create_model(model_name, pretrained=False, num_classes=0,
                                     dynamic_img_size=dynamic_img_size, **kwargs)
        depth = len(self.vit.blocks)
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        self.out_indices = [i % depth for i in indices]
        attr = final_norm_attr(self.vit)
        self.last_norm = getattr(self.vit, attr) if final_norm and attr else None
        for name in ('norm', 'fc_norm', 'head'):
            if hasattr(self.vit, name):
                setattr(self.vit, name, torch.nn.Identity())
        if getattr(self.vit, 'attn_pool', None) is not None:
            self.vit.attn_pool = None

    def forward(self, inputs: torch.Tensor):
        maps = self.vit.forward_intermediates(inputs, indices=self.out_indices,
                                              output_fmt='NCHW', intermediates_only=True)
        if self.last_norm is not None and self.out_indices[-1] == len(self.vit.blocks) - 1:
            last = self.last_norm(maps[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            maps = list(maps[:-1]) + [last.contiguous()]
        return tuple(maps)
