"""``TextClsHead``: classify a CLIP image embedding against class-name text embeddings.

CoOp's (and zero-shot CLIP's) classifier:

    p(y = i | x) = softmax_i( exp(logit_scale) * cos(f(x), g(t_i)) )

``f(x)`` is the image tower's final [CLS] through its final norm and CLIP's visual
projection (:class:`~vpt_seg.models.VPTClassifier` applies the backbone's
``visual_projection`` before the head, because this head declares ``needs_projection``);
``exp(logit_scale) * normalize(g(t_i))`` comes from the text encoder
(:class:`~vpt_seg.models.text_encoder.CoOpTextEncoder`). The head has no weights of its own:
the classes are whatever the text encoder embeds, so a unified context classifies a new
class list (:meth:`set_classes`). The class list and the cosine are
:class:`~vpt_seg.models.text_classes.TextClassesMixin`'s, shared with
:class:`~vpt_seg.models.TextSegHead`.
"""
from typing import Dict

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from .text_classes import TextClassesMixin, normalize_embeddings

__all__ = ['TextClsHead']


@MODELS.register_module()
class TextClsHead(TextClassesMixin, BaseModule):
    """``(B, E) -> (B, K)``: ``exp(logit_scale) * cos(f(x), t_i)`` over the text encoder's
    K class embeddings; softmax cross-entropy.

    Args:
        text_encoder: Config of the text encoder (``CoOpTextEncoder``, or any registered
            module whose ``forward()`` returns ``(K, E)`` scaled, normalised class
            embeddings and that has ``output_dims``/``num_classes``).
        loss_weight: Multiplier of the loss.
        label_smoothing: Label smoothing of the cross-entropy (in [0, 1)).
        init_cfg: MMEngine's.

    Attributes:
        needs_projection: True: the classifier feeds CLIP image embeddings ``f(x)``
            (``in_channels`` wide), not the backbone's [CLS] width.
    """

    multi_label = False

    def __init__(self, text_encoder: dict, loss_weight: float = 1.0,
                 label_smoothing: float = 0.0, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(text_encoder, dict) or 'type' not in text_encoder:
            raise ValueError("TextClsHead needs text_encoder=dict(type='CoOpTextEncoder', ...), "
                             f'got {text_encoder!r:.200}')
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}')
        self.text_encoder = MODELS.build(text_encoder)
        self.init_text_classes()
        self.loss_weight = loss_weight
        self.label_smoothing = label_smoothing

    @property
    def in_channels(self) -> int:
        """Width E of the joint image-text embedding (the text encoder's output)."""
        return self.embed_dims

    @property
    def num_classes(self) -> int:
        return self._num_classes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        text = self.class_embeddings()                                   # (K, E), scaled
        if x.shape[-1] != text.shape[-1]:
            raise ValueError(f'TextClsHead: image embeddings are {x.shape[-1]} wide, the text '
                             f'embeddings {text.shape[-1]}; they must share CLIP\'s joint space')
        return normalize_embeddings(x, dim=-1) @ text.to(x.dtype).t()    # (B, K)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{'loss_cls': scalar}``: cross-entropy of ``(B, K)`` logits, ``(B,)`` labels."""
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return dict(loss_cls=self.loss_weight * loss)
