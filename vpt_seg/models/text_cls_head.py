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

Folded (``tools/export_task.py --fold``, :meth:`fold_text`), the same head has a fixed
classifier instead of the text encoder: ``classifier``, a plain ``nn.Linear(E, K,
bias=False)`` whose rows are the class embeddings ``exp(logit_scale) * normalize(g(t_i))``
computed once; its forward is the same ``normalize(f(x)) @ W.T``, so the logits are the
task's, and no text tower is left (``text_encoder=None, class_names=[...]``).
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import nn

from ..tuners.coop import check_class_names
from .text_classes import TextClassesMixin, normalize_embeddings

__all__ = ['TextClsHead']


@MODELS.register_module()
class TextClsHead(TextClassesMixin, BaseModule):
    """``(B, E) -> (B, K)``: ``exp(logit_scale) * cos(f(x), t_i)`` over the text encoder's
    K class embeddings; softmax cross-entropy.

    Args:
        text_encoder: Config of the text encoder (``CoOpTextEncoder``, or any registered
            module whose ``forward()`` returns ``(K, E)`` scaled, normalised class
            embeddings and that has ``output_dims``/``num_classes``); None: a folded
            head with a fixed classifier (``class_names`` and ``in_channels`` then).
        loss_weight: Multiplier of the loss.
        label_smoothing: Label smoothing of the cross-entropy (in [0, 1)).
        class_names: A folded head's K class names (only with ``text_encoder=None``).
        in_channels: A folded head's E (only with ``text_encoder=None``).
        init_cfg: MMEngine's.

    Attributes:
        needs_projection: True: the classifier feeds CLIP image embeddings ``f(x)``
            (``in_channels`` wide), not the backbone's [CLS] width.
        classifier: A folded head's ``nn.Linear(E, K, bias=False)`` (None otherwise).
    """

    multi_label = False

    def __init__(self, text_encoder: Optional[dict] = None, loss_weight: float = 1.0,
                 label_smoothing: float = 0.0, class_names: Optional[Sequence[str]] = None,
                 in_channels: Optional[int] = None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}')
        self.loss_weight = loss_weight
        self.label_smoothing = label_smoothing
        self.text_encoder = self.classifier = None
        self.init_text_classes()
        if text_encoder is None:
            self._init_fixed(class_names, in_channels)
            return
        if not isinstance(text_encoder, dict) or 'type' not in text_encoder:
            raise ValueError("TextClsHead needs text_encoder=dict(type='CoOpTextEncoder', ...), "
                             f'got {text_encoder!r:.200}')
        if class_names is not None or in_channels is not None:
            raise ValueError('TextClsHead: class_names and in_channels are a folded head\'s '
                             '(text_encoder=None); with a text encoder its vocabulary names '
                             'the classes')
        self.text_encoder = MODELS.build(text_encoder)

    def _init_fixed(self, class_names, in_channels):
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError('TextClsHead without a text encoder (a folded head) needs '
                             f'in_channels (the embedding width E), got {in_channels!r}; or '
                             "give text_encoder=dict(type='CoOpTextEncoder', ...)")
        self._names = tuple(check_class_names(class_names, 'TextClsHead class_names'))
        self.classifier = nn.Linear(in_channels, len(self._names), bias=False)

    @property
    def in_channels(self) -> int:
        """Width E of the joint image-text embedding (the text encoder's output)."""
        if self.text_encoder is None:
            return self.classifier.in_features
        return self.embed_dims

    @property
    def num_classes(self) -> int:
        return len(self._names) if self.text_encoder is None else self._num_classes()

    @property
    def class_names(self) -> List[str]:
        if self.text_encoder is None:
            return list(self._names)
        return super().class_names

    def set_classes(self, names: Sequence[str]):
        """Classify ``names`` from now on (see ``CoOpTextEncoder.set_classes``).

        Raises:
            ValueError: see there; a folded head (no text tower is left to embed them).
        """
        if self.text_encoder is None:
            raise ValueError(
                f'this head is folded: its classifier holds the embeddings of its '
                f'{self.num_classes} classes, computed once, and no text tower is left to '
                'embed other names. Give the class list to the task before folding (its '
                'task file or checkpoint), or fold again with the new list')
        super().set_classes(names)

    def fixed_class_embeddings(self) -> Optional[torch.Tensor]:
        """A folded head's ``(K, E)`` class embeddings (``classifier.weight``)."""
        return None if self.classifier is None else self.classifier.weight

    @torch.no_grad()
    def fold_text(self) -> dict:
        """Become a folded head in place: the class embeddings computed once into
        ``classifier``, the text encoder dropped. Returns what changes in the head's
        config (for the folded checkpoint's config)."""
        if self.text_encoder is None:
            raise ValueError('this head is already folded (no text encoder)')
        text = self.class_embeddings().detach().clone()                  # (K, E)
        names, width = self.class_names, self.in_channels
        del self.text_encoder
        self.text_encoder = None
        self._init_fixed(names, width)
        self.classifier.to(text.device).weight.copy_(text)
        return dict(text_encoder=None, class_names=list(names), in_channels=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier is not None:  # folded: the same product, a plain linear layer
            return self.classifier(normalize_embeddings(x, dim=-1))     # (B, K)
        text = self.class_embeddings()                                   # (K, E), scaled
        if x.shape[-1] != text.shape[-1]:
            raise ValueError(f'TextClsHead: image embeddings are {x.shape[-1]} wide, the text '
                             f'embeddings {text.shape[-1]}; they must share CLIP\'s joint space')
        return normalize_embeddings(x, dim=-1) @ text.to(x.dtype).t()    # (B, K)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{'loss_cls': scalar}``: cross-entropy of ``(B, K)`` logits, ``(B,)`` labels."""
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return dict(loss_cls=self.loss_weight * loss)
