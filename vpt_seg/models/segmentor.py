"""Label maps of any size in bounded memory: resize logits and take the argmax in bands.

MMSeg's ``EncoderDecoder.postprocess_result`` resizes each image's ``(C, h, w)`` logits
to the original image size and then takes the argmax: a 5000x5000 photo with 150 ADE20k
classes builds 15 GB of float32 logits for a 25 MB label map. :func:`resized_labels`
computes the same bilinear resize one band of output rows at a time, so memory is
``O(C * band * W + H * W)``; :class:`BoundedEncoderDecoder` (the shipped configs' segmentor)
and :class:`BoundedSegTTAModel` use it above a byte budget and are MMSeg's own below it,
and ``tools/serve.py`` uses it for its label maps.

Text-classifier heads (:class:`~vpt_seg.models.TextSegHead`): the segmentor gives the
backbone what they read (CLIP's visual projection; for a text decode head the last map in
CLIP's joint space, ``project_out``), links auxiliary heads with
``text_encoder='shared'`` to the decode head's text encoder, and runs each step (a
training step's losses, a prediction) inside the decode head's ``text_step``: the K class
prompts go through the text tower once per step, whatever the number of heads.

Policy for ``seg_logits`` in the data samples: while the full-resolution logits of an
image fit in ``logits_budget`` bytes, everything is MMSeg's (``seg_logits`` at the original
size, ``pred_sem_seg`` to the pixel). Above it, ``pred_sem_seg`` is computed in bands and
``seg_logits`` holds the logits at the model's resolution (padding removed, flips undone),
with ``seg_logits_resized=False`` in the sample's metainfo; ``resize(seg_logits,
ori_shape, mode='bilinear')`` gives MMSeg's. Metrics, ``--out`` and ``--show-dir`` read
``pred_sem_seg`` only.
"""
import copy
import math
from contextlib import nullcontext
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder, SegTTAModel
from mmseg.registry import MODELS
from torch import Tensor

from .text_classes import is_text_head, require_projection

__all__ = ['DEFAULT_LOGITS_BUDGET', 'band_rows', 'resize_rows', 'resized_labels',
           'BoundedEncoderDecoder', 'BoundedSegTTAModel']

#: Bytes of full-resolution logits built at once (512 MiB: 150 classes at about
#: 950x950 pixels); larger images are resized and labelled in bands of rows.
DEFAULT_LOGITS_BUDGET = 512 * 2**20


def band_rows(channels: int, width: int, budget: int, element_size: int = 4) -> int:
    """Output rows per band so that ``(channels, rows, width)`` fits ``budget`` bytes."""
    return max(1, budget // max(1, channels * width * element_size))


def _source_rows(n_in: int, n_out: int, align_corners: bool, device) -> Tuple[Tensor, ...]:
    """Bilinear source rows and weights of every output row, as ``F.interpolate``."""
    y = torch.arange(n_out, device=device, dtype=torch.float32)
    if align_corners:
        src = y * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.)
    else:
        src = ((y + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = (src - i0).clamp(0, 1)
    return i0, i1, 1 - w1, w1


def resize_rows(logits: Tensor, size: Sequence[int], rows: Tuple[int, int],
                align_corners: bool) -> Tensor:
    """Rows ``rows[0]:rows[1]`` of ``F.interpolate(logits[None], size, 'bilinear')[0]``.

    Args:
        logits: ``(C, h, w)``.
        size: Output ``(H, W)``.
        rows: Output rows ``(start, stop)``.
        align_corners: As the decode head's.

    Returns:
        ``(C, stop - start, W)``; equal to the full resize up to float rounding (about
        1e-6), built from the few source rows the band needs.
    """
    (H, W), (r0, r1) = size, rows
    i0, i1, w0, w1 = (t[r0:r1] for t in _source_rows(logits.shape[1], H, align_corners,
                                                       logits.device))
    lo, hi = int(i0.min()), int(i1.max()) + 1
    src = F.interpolate(logits[None, :, lo:hi], size=(hi - lo, W), mode='bilinear',
                        align_corners=align_corners)[0]               # (C, rows in, W)
    w0, w1 = w0.to(src.dtype)[None, :, None], w1.to(src.dtype)[None, :, None]
    band = src[:, i0 - lo].mul_(w0)                                     # (C, rows, W)
    return band.add_(src[:, i1 - lo].mul_(w1))


def resized_labels(logits: Sequence[Tensor], size: Sequence[int], align_corners: bool,
                   budget: int = DEFAULT_LOGITS_BUDGET, threshold: float = 0.3) -> Tensor:
    """The label map of logits resized to ``size``, in bands of rows.

    Args:
        logits: One ``(C, h, w)`` tensor, or several (test-time augmentation: their
            softmax, or sigmoid for ``C == 1``, is averaged at ``size``, as MMSeg's
            ``SegTTAModel``), each at its own resolution.
        size: Output ``(H, W)``.
        align_corners: As the decode head's.
        budget: Bytes of resized logits built at once.
        threshold: ``C == 1``: the decode head's threshold on the sigmoid.

    Returns:
        ``(1, H, W)``: the argmax (long) for ``C > 1``; for ``C == 1`` the thresholded
        sigmoid in the logits' dtype, as MMSeg's ``postprocess_result``.
    """
    if isinstance(logits, Tensor):
        logits = [logits]
    C, (H, W) = logits[0].shape[0], (int(size[0]), int(size[1]))
    out = torch.empty((1, H, W), device=logits[0].device,
                      dtype=torch.long if C > 1 else logits[0].dtype)
    # each band holds the resized logits of every input, and their mean probability
    step = band_rows(C * (len(logits) + 1), W, budget, logits[0].element_size())
    for r0 in range(0, H, step):
        r1 = min(H, r0 + step)
        if r1 - r0 == H:  # one band: MMSeg's own resize
            bands = [F.interpolate(x[None], size=(H, W), mode='bilinear',
                                   align_corners=align_corners)[0] for x in logits]
        else:
            bands = [resize_rows(x, (H, W), (r0, r1), align_corners) for x in logits]
        if len(bands) == 1:
            band = bands[0] if C > 1 else bands[0].sigmoid()
        else:  # TTA: the mean probability, as SegTTAModel
            band = sum(b.softmax(0) if C > 1 else b.sigmoid() for b in bands) / len(bands)
        if C > 1:
            out[0, r0:r1] = band.argmax(0)
        else:
            out[0, r0:r1] = (band[0] > threshold).to(out.dtype)
    return out


def _unpad_unflip(logits: Tensor, meta: dict) -> Tensor:
    """One image's ``(C, H, W)`` logits without padding and flips, as MMSeg's
    ``postprocess_result`` takes them before the resize."""
    H, W = logits.shape[1:]
    left, right, top, bottom = meta.get('img_padding_size', meta.get('padding_size',
                                                                      [0] * 4))
    logits = logits[:, top:H - bottom, left:W - right]
    if meta.get('flip'):
        direction = meta.get('flip_direction')
        if direction not in ('horizontal', 'vertical'):
            raise ValueError(f'flip_direction {direction!r}: expected horizontal or vertical')
        logits = logits.flip(dims=(2, ) if direction == 'horizontal' else (1, ))
    return logits


def _text_backbone(backbone: dict, decode_head: dict, auxiliary_head) -> dict:
    """The backbone's config with what text heads read set by default (see
    :class:`BoundedEncoderDecoder`); refuses a backbone that cannot keep CLIP's visual
    projection."""
    aux = auxiliary_head if isinstance(auxiliary_head, list) else \
        [auxiliary_head] if auxiliary_head is not None else []
    text = [h for h in [decode_head] + aux if is_text_head(h)]
    if not text:
        return backbone
    require_projection(backbone, text[0])
    backbone = copy.copy(backbone)
    backbone.setdefault('keep_projection', True)
    if is_text_head(decode_head):
        backbone.setdefault('final_norm', True)
        backbone.setdefault('project_out', True)
    return backbone


@MODELS.register_module()
class BoundedEncoderDecoder(EncoderDecoder):
    """MMSeg's ``EncoderDecoder`` whose label maps at the original size are computed in
    bounded memory (see the module docstring for ``seg_logits``).

    Text-classifier heads (see the module docstring): with a ``TextSegHead`` the
    backbone's ``keep_projection`` defaults to True, and with a text decode head also
    ``final_norm`` and ``project_out``; a backbone without CLIP's visual projection is
    refused. ``num_classes`` and ``out_channels`` are the decode head's (a text head's
    class list can change).

    Args:
        logits_budget: Bytes of full-resolution logits an image may build at once; below
            it the results are MMSeg's to the pixel, above it the resize and argmax run in
            bands of rows.
        **kwargs: ``EncoderDecoder``'s.
    """

    def __init__(self, logits_budget: int = DEFAULT_LOGITS_BUDGET, **kwargs):
        if 'backbone' in kwargs and 'decode_head' in kwargs:
            kwargs['backbone'] = _text_backbone(kwargs['backbone'], kwargs['decode_head'],
                                                kwargs.get('auxiliary_head'))
        super().__init__(**kwargs)
        if int(logits_budget) <= 0:
            raise ValueError(f'logits_budget must be a positive number of bytes, got '
                             f'{logits_budget!r}')
        self.logits_budget = int(logits_budget)
        if getattr(self.decode_head, 'needs_projection', False):
            self._check_text_backbone()

    # ------------------------------------------------------------ text heads
    def _check_text_backbone(self):
        """A text decode head reads the backbone's last map in CLIP's joint space."""
        head = self.decode_head
        if not getattr(self.backbone, 'project_out', False):
            raise ValueError(
                f'the decode head {type(head).__name__} classifies CLIP\'s per-pixel '
                'embeddings, and the backbone does not output them: leave the backbone\'s '
                'keep_projection, final_norm and project_out at their defaults (True with a '
                'text decode head)')
        width = self.backbone.visual_projection.out_features
        if width != head.embed_dims:
            raise ValueError(
                f'the text tower embeds into {head.embed_dims} dimensions (text_encoder '
                f'output_dims), the image tower\'s projection into {width}: both towers must '
                'come from one CLIP model (set output_dims, and the backbone\'s model_name / '
                'model_kwargs, to the CLIP file\'s)')

    def _init_auxiliary_head(self, auxiliary_head) -> None:
        """MMSeg's, and auxiliary heads with ``text_encoder='shared'`` get the decode
        head's width E and are linked to its text encoder."""
        if auxiliary_head is None:
            return super()._init_auxiliary_head(auxiliary_head)
        many = isinstance(auxiliary_head, list)
        cfgs = [dict(c) for c in (auxiliary_head if many else [auxiliary_head])]
        for cfg in cfgs:
            if cfg.get('text_encoder') == 'shared' and is_text_head(cfg):
                if getattr(self.decode_head, 'text_mode', 'shared') == 'shared':
                    raise ValueError(
                        "an auxiliary TextSegHead(text_encoder='shared') uses the decode "
                        f"head's text encoder, and the decode head "
                        f'({type(self.decode_head).__name__}) has none: make the decode head '
                        'a TextSegHead with a text encoder')
                cfg.setdefault('embed_dims', self.decode_head.embed_dims)
        super()._init_auxiliary_head(cfgs if many else cfgs[0])
        heads = self.auxiliary_head if many else [self.auxiliary_head]
        for head in heads:
            if getattr(head, 'text_mode', None) == 'shared':
                head.link_text(self.decode_head)

    @property
    def num_classes(self) -> int:
        """The decode head's class count (a text head's follows its class list)."""
        return self.decode_head.num_classes

    @num_classes.setter
    def num_classes(self, value):
        if value != self.decode_head.num_classes:  # EncoderDecoder sets it from the head
            raise AttributeError('num_classes is the decode head\'s')

    @property
    def out_channels(self) -> int:
        return self.decode_head.out_channels

    @out_channels.setter
    def out_channels(self, value):
        if value != self.decode_head.out_channels:
            raise AttributeError('out_channels is the decode head\'s')

    def text_step(self):
        """The decode head's ``text_step`` (one text pass for every head), or nothing."""
        step = getattr(self.decode_head, 'text_step', None)
        return step() if step is not None else nullcontext()

    def loss(self, inputs: Tensor, data_samples) -> dict:
        with self.text_step():
            return super().loss(inputs, data_samples)

    def predict(self, inputs: Tensor, data_samples=None):
        with self.text_step():
            return super().predict(inputs, data_samples)

    def _forward(self, inputs: Tensor, data_samples=None) -> Tensor:
        with self.text_step():
            return super()._forward(inputs, data_samples)

    def postprocess_result(self, seg_logits: Tensor, data_samples=None):
        if data_samples is None:  # no resize: MMSeg's
            return super().postprocess_result(seg_logits, data_samples)
        C = seg_logits.shape[1]
        for i, sample in enumerate(data_samples):
            size = sample.metainfo['ori_shape'][:2]
            if C * math.prod(size) * seg_logits.element_size() <= self.logits_budget:
                super().postprocess_result(seg_logits[i:i + 1], [sample])
                continue
            logits = _unpad_unflip(seg_logits[i], sample.metainfo)
            pred = resized_labels(logits, size, self.align_corners, self.logits_budget,
                                  getattr(self.decode_head, 'threshold', 0.3))
            sample.set_metainfo(dict(seg_logits_resized=False))
            sample.set_data(dict(seg_logits=PixelData(data=logits),
                                 pred_sem_seg=PixelData(data=pred)))
        return data_samples


@MODELS.register_module()
class BoundedSegTTAModel(SegTTAModel):
    """MMSeg's ``SegTTAModel`` for :class:`BoundedEncoderDecoder`: where the
    augmented predictions hold model-resolution logits (large images), their mean
    probability and argmax are computed in bands at the original size; otherwise
    MMSeg's merge as it is."""

    def merge_preds(self, data_samples_list: List[list]) -> list:
        predictions = []
        for samples in data_samples_list:
            if all(s.metainfo.get('seg_logits_resized', True) for s in samples):
                predictions += super().merge_preds([samples])
                continue
            module, first, last = self.module, samples[0], samples[-1]
            pred = resized_labels([s.seg_logits.data for s in samples],
                                  first.metainfo['ori_shape'][:2], module.align_corners,
                                  getattr(module, 'logits_budget', DEFAULT_LOGITS_BUDGET),
                                  getattr(module.decode_head, 'threshold', 0.3))
            last.set_data(dict(pred_sem_seg=PixelData(data=pred)))
            if hasattr(first, 'gt_sem_seg'):
                last.set_data(dict(gt_sem_seg=first.gt_sem_seg))
            last.set_metainfo(dict(img_path=first.img_path))
            predictions.append(last)
        return predictions
