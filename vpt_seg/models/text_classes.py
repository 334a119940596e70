"""What the text-classifier heads share: class embeddings in CLIP's joint space and the
scaled cosine that classifies by them.

A text-classifier head (:class:`~vpt_seg.models.TextClsHead` for images,
:class:`~vpt_seg.models.TextSegHead` for pixels) scores an embedding ``x`` in CLIP's joint
space against the K class embeddings ``t_i``:

    logits_i = exp(logit_scale) * cos(x, t_i) = normalize(x) . class_embeddings()_i

``class_embeddings()`` is ``(K, E)`` = ``exp(logit_scale) * normalize(g(t_i))``, the text
encoder's output (:class:`~vpt_seg.models.text_encoder.CoOpTextEncoder`); the head only
normalises ``x`` and takes dot products. :class:`TextClassesMixin` holds the class list
(``class_names``, ``num_classes``, :meth:`~TextClassesMixin.set_classes`) and one text
pass per step (:meth:`~TextClassesMixin.text_step`), written once for both heads.
"""
import inspect
from contextlib import contextmanager
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

__all__ = ['TextClassesMixin', 'normalize_embeddings', 'is_text_head', 'require_projection']


def normalize_embeddings(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The cosine's normalisation: ``x / ||x||`` along ``dim`` (the embedding axis)."""
    return F.normalize(x, dim=dim)


def _registered(cfg):
    kind = cfg.get('type') if isinstance(cfg, dict) else None
    return MODELS.get(kind) if isinstance(kind, str) else kind


def is_text_head(cfg) -> bool:
    """Whether a head config (a dict with ``type``) names a head that compares CLIP
    embeddings with text embeddings (its class declares ``needs_projection``)."""
    return bool(getattr(_registered(cfg), 'needs_projection', False))


def require_projection(backbone: dict, head: dict) -> None:
    """Refuse a backbone kind that cannot keep CLIP's visual projection for ``head``.

    Raises:
        ValueError: the backbone class has no ``keep_projection`` (MMSeg's ViT layout),
            naming the head, the backbone and the fix. A timm model that is no CLIP image
            tower is refused by ``PromptedTimmViT(keep_projection=True)`` itself.
    """
    cls = _registered(backbone)
    if cls is None or 'keep_projection' not in inspect.signature(cls.__init__).parameters:
        raise ValueError(
            f'{head.get("type")} compares CLIP image embeddings with text embeddings: the '
            'image tower\'s tokens through CLIP\'s visual projection, and the backbone '
            f'{backbone.get("type")} has none (MMSeg\'s ViT layout keeps no projection). '
            "Use type='PromptedTimmViT' with a CLIP model, e.g. "
            "model_name='vit_base_patch16_clip_quickgelu_224' and the open_clip file")


class TextClassesMixin:
    """The class list of a text-classifier head and its class embeddings.

    A head sets ``text_encoder`` (a built text encoder, or None) and calls
    :meth:`init_text_classes` in its ``__init__``. Subclasses may override
    :meth:`fixed_class_embeddings` (embeddings that need no text encoder, a folded head)
    and :meth:`text_owner` (the head whose text features this one uses).

    Attributes:
        needs_projection: True: the head takes CLIP image embeddings (the backbone keeps
            CLIP's visual projection).
    """

    needs_projection = True
    text_encoder: Optional[torch.nn.Module]

    def init_text_classes(self):
        self._step_active = False
        self._step_value = None

    # ----------------------------------------------------------- the classes
    def text_owner(self) -> 'TextClassesMixin':
        """The head whose text encoder embeds the classes (this one)."""
        return self

    def fixed_class_embeddings(self) -> Optional[torch.Tensor]:
        """Class embeddings held without a text encoder, ``(K, E)``; None: none."""
        return None

    @property
    def embed_dims(self) -> int:
        """Width E of CLIP's joint embedding space (the class embeddings' width)."""
        owner = self.text_owner()
        if owner is not self:
            return owner.embed_dims
        return int(self.text_encoder.output_dims)

    @property
    def class_names(self) -> List[str]:
        """The K class names."""
        owner = self.text_owner()
        return owner.class_names if owner is not self else self.text_encoder.class_names

    def _num_classes(self) -> int:
        owner = self.text_owner()
        return owner.num_classes if owner is not self else self.text_encoder.num_classes

    def set_classes(self, names: Sequence[str]):
        """Classify ``names`` from now on (see ``CoOpTextEncoder.set_classes``: a unified
        context or templates only)."""
        owner = self.text_owner()
        if owner is not self:
            raise ValueError(f'{type(self).__name__}: this head uses the decode head\'s text '
                             'encoder (text_encoder=\'shared\'); set the classes there')
        self.text_encoder.set_classes(names)

    # ------------------------------------------------------ class embeddings
    def class_embeddings(self) -> torch.Tensor:
        """``(K, E)`` = ``exp(logit_scale) * normalize(g(t_i))``, what the logits are
        dot products with. Inside :meth:`text_step` computed at the first call and
        reused by every head of the step (one text pass, one graph to the context)."""
        owner = self.text_owner()
        if owner is not self:
            return owner.class_embeddings()
        fixed = self.fixed_class_embeddings()
        if fixed is not None:
            return fixed
        if self._step_active and self._step_value is not None:
            return self._step_value
        value = self.text_encoder()                                      # (K, E)
        if self._step_active:
            self._step_value = value
        return value

    @contextmanager
    def text_step(self):
        """One step (a training step's losses, a prediction): the class embeddings are
        computed once inside it, by this head's text encoder, for every head that
        shares it. Nested steps are one step."""
        owner = self.text_owner()
        if owner is not self:
            with owner.text_step():
                yield
            return
        outer = self._step_active
        self._step_active = True
        try:
            yield
        finally:
            if not outer:
                self._step_active, self._step_value = False, None
