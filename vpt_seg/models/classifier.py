"""Image classification with visual prompts: the paper's setup on our prompted backbone.

VPT (Jia et al., ECCV 2022) classifies an image from the final-layer [CLS] embedding of
a frozen, prompted ViT:  ``y = Head(LN(x_N))``, where ``x_N`` is the [CLS] output of the
last layer and ``LN`` the ViT's final norm. :class:`VPTClassifier` builds exactly that
from the same :class:`~vpt_seg.models.PromptedVisionTransformer` the segmentors use, so a
classification task, like a segmentation task, is stored as prompts (+ biases when
tuned) + head, and every option of the backbone (deep/shallow, length, dropout, bias
tuning) applies unchanged.
"""
from typing import Dict, List, Optional, Union

import torch
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from mmseg.registry import MODELS

from .text_classes import is_text_head, require_projection

__all__ = ['VPTClassifier', 'default_data_preprocessor']

#: ImageNet's mean and std in MMSeg's convention (0-255 pixels, RGB).
IMAGENET_NORMALIZATION = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])


def default_data_preprocessor(backbone: dict) -> dict:
    """The data preprocessor a classifier gets when its config names none: images
    normalised as the backbone's pretraining did. A CLIP image tower
    (``PromptedTimmViT`` with a ``*_clip_*`` name) takes the mean/std of timm's
    pretrained_cfg for it (OpenAI's CLIP: mean 0.48145466, 0.4578275, 0.40821073, std
    0.26862954, 0.26130258, 0.27577711, times 255); every other backbone ImageNet's,
    as before. BGR -> RGB (images are read as BGR)."""
    from .timm_vit import PromptedTimmViT, pretrained_normalization
    norm = None
    if backbone.get('type') in ('PromptedTimmViT', PromptedTimmViT) and \
            isinstance(backbone.get('model_name'), str):
        norm = pretrained_normalization(backbone['model_name'])
    return dict(type='ImgDataPreprocessor', **(norm or IMAGENET_NORMALIZATION),
                bgr_to_rgb=True)


@MODELS.register_module()
class VPTClassifier(BaseModel):
    """A prompted, frozen ViT and a head on its final [CLS] embedding.

    Args:
        backbone: Config of the ViT: ``PromptedVisionTransformer`` or
            ``PromptedTimmViT`` (any timm family with a [CLS] token).
            ``output_cls_token`` and ``final_norm`` default to True (timm's classifier
            reads the normed [CLS]); ``output_cls_token=False`` is an error, and so
            are ``out_indices`` that leave out the last layer (the default ``-1`` is
            the last layer): the classifier reads the final [CLS], never an
            intermediate (un-normed) one.
        head: Config of the head (``LinearClsHead`` or ``MLPClsHead``); its
            ``in_channels`` must equal the backbone width. A head that compares CLIP
            embeddings (``TextClsHead``, CoOp) declares ``needs_projection``: the backbone
            (``PromptedTimmViT`` with a CLIP model) then keeps CLIP's visual projection
            (``keep_projection=True``) and the head gets ``f(x)``, the normed [CLS]
            through it, ``in_channels`` = the projection's width. With ``multi_label=True``
            the data samples carry ``(K,)`` multi-hot ``gt_label`` (image tags,
            :class:`~vpt_seg.datasets.ADE20KTagsDataset`) and predictions are sigmoid
            scores.
        data_preprocessor: Normalisation (and channel order) of the images; default
            :func:`default_data_preprocessor` (the CLIP's own mean/std for CLIP image
            towers, ImageNet's otherwise; BGR -> RGB).
        init_cfg: MMEngine init config.

    The backbone's ``signature`` buffer goes into every checkpoint, so a task file made
    for another ViT (width, depth, heads, patch size) is refused with a clear error even
    when its tuned tensors happen to have fitting shapes (shallow prompts).

    Shapes:
        ``inputs``: ``(B, 3, H, W)``; ``tensor`` mode returns ``(B, K)`` logits.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        if data_preprocessor is None:
            data_preprocessor = default_data_preprocessor(backbone)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        backbone = dict(backbone)
        backbone.setdefault('output_cls_token', True)
        backbone.setdefault('final_norm', True)
        if not backbone['output_cls_token']:
            raise ValueError('VPTClassifier classifies from the [CLS] embedding; the backbone '
                             'needs output_cls_token=True (and with_cls_token=True).')
        self.project = is_text_head(head)
        if self.project:
            require_projection(backbone, head)
            backbone.setdefault('keep_projection', True)
        self.backbone = MODELS.build(backbone)
        # Both prompted backbones record (embed_dims, num_layers, ...) in `signature`.
        width, depth = (int(v) for v in self.backbone.signature[:2])
        last = depth - 1
        if last not in self.backbone.out_indices:
            raise ValueError(
                f'VPTClassifier classifies from the final layer\'s [CLS] embedding, but the '
                f'backbone\'s out_indices={backbone.get("out_indices")!r} leave out the last '
                f'layer ({last}); use out_indices=-1 (the default) or include {last}.')
        self.head = MODELS.build(head)
        if self.project:
            proj = getattr(self.backbone, 'visual_projection', None)
            if proj is None:
                raise ValueError(f'{head["type"]} needs CLIP image embeddings, but the backbone '
                                 'keeps no visual projection (keep_projection=False); leave '
                                 'keep_projection at its default')
            width = proj.out_features
            if self.head.in_channels != width:
                raise ValueError(
                    f'the text tower embeds into {self.head.in_channels} dimensions '
                    f'(text_encoder output_dims), the image tower\'s projection into {width}: '
                    'both towers must come from one CLIP model (set output_dims, and the '
                    'backbone\'s model_name / model_kwargs, to the CLIP file\'s)')
        elif self.head.in_channels != width:
            raise ValueError(f'head.in_channels={self.head.in_channels} but the backbone '
                             f'embeds tokens of width {width}')

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    # ------------------------------------------------------------------ forward
    def extract_feat(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, C)``: the final-layer [CLS] embedding (the backbone
        outputs come in layer order and include the last layer, see ``__init__``); for a
        head that ``needs_projection``, ``(B, E)``: it through CLIP's visual projection."""
        return self.embed_cls(self.backbone(inputs)[-1][1])

    def embed_cls(self, cls: torch.Tensor) -> torch.Tensor:
        """What the head takes from the final normed [CLS] ``(B, C)``: itself, or for a
        head that ``needs_projection`` CLIP's image embedding ``(B, E)`` (serving calls it
        on the shared pass's [CLS])."""
        return self.backbone.visual_projection(cls) if self.project else cls

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor') -> Union[Dict[str, torch.Tensor], list, torch.Tensor]:
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self.head(self.extract_feat(inputs))                  # (B, K)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    @property
    def multi_label(self) -> bool:
        """True when the head scores every class on its own (sigmoid, multi-hot labels)."""
        return getattr(self.head, 'multi_label', False)

    def loss(self, inputs: torch.Tensor,
             data_samples: List[BaseDataElement]) -> Dict[str, torch.Tensor]:
        """``loss_cls`` and the training accuracy ``acc`` (percent): top-1 for one label
        per image, per-label accuracy at sigmoid score 0.5 for multi-hot labels."""
        logits = self.head(self.extract_feat(inputs))                    # (B, K)
        if self.multi_label:
            labels = torch.stack([ds.gt_label.reshape(-1) for ds in data_samples])
            labels = labels.to(device=inputs.device, dtype=torch.float32)   # (B, K)
            losses = self.head.loss(logits, labels)
            with torch.no_grad():
                hits = (logits.float().sigmoid() > 0.5) == (labels > 0.5)
                losses['acc'] = hits.float().mean() * 100
            return losses
        labels = torch.stack([ds.gt_label.reshape(()) for ds in data_samples]).to(inputs.device)
        losses = self.head.loss(logits, labels.long())
        with torch.no_grad():
            losses['acc'] = (logits.argmax(1) == labels).float().mean() * 100
        return losses

    def predict(self, inputs: torch.Tensor,
                data_samples: Optional[List[BaseDataElement]] = None) -> List[BaseDataElement]:
        """Adds ``pred_score`` ``(K,)`` and ``pred_label`` to each sample (see
        :meth:`postprocess`)."""
        logits = self.head(self.extract_feat(inputs))
        return self.postprocess(logits, data_samples)

    def postprocess(self, logits: torch.Tensor,
                    data_samples: Optional[List[BaseDataElement]] = None
                    ) -> List[BaseDataElement]:
        """``(B, K)`` logits -> data samples with ``pred_score`` and ``pred_label``, as
        this model's head scores them. The one scoring rule: :meth:`predict` (so
        ``tools/test.py``) and ``tools/serve.py`` both call it.

        Single-label: ``pred_score`` ``(K,)`` softmax, ``pred_label`` 0-d long argmax.
        Multi-label head: ``pred_score`` ``(K,)`` sigmoid, ``pred_label`` ``(K,)`` long
        multi-hot, 1 where the score is above 0.5.
        """
        if data_samples is None:
            data_samples = [BaseDataElement() for _ in range(logits.shape[0])]
        if self.multi_label:
            scores = logits.float().sigmoid()                           # (B, K)
            for ds, score in zip(data_samples, scores):
                ds.set_data(dict(pred_score=score, pred_label=(score > 0.5).long()))
            return data_samples
        scores = logits.float().softmax(dim=1)                          # (B, K)
        for ds, score in zip(data_samples, scores):
            ds.set_data(dict(pred_score=score, pred_label=score.argmax()))
        return data_samples
