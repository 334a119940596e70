"""Image-level tags from ADE20k-layout segmentation data, for multi-label pretraining.

An image's tags are the classes its annotation shows: class ``k`` is tagged when it
covers more than ``min_fraction`` of the image's labelled pixels. The pixel labels are
exactly those MMSeg's ``LoadAnnotations`` gives a segmentor on the same dataset
(``reduce_zero_label``: 0 -> 255, ``k`` -> ``k - 1``; then the dataset's ``label_map``
for a class subset), so a tag classifier and a segmentor see the same classes. With the
tags, a ViT can be trained like a supervised ImageNet classifier (one sigmoid per class,
:class:`~vpt_seg.models.LinearClsHead` with ``multi_label=True``) from a segmentation
dataset.
"""
from typing import Dict, List, Optional

import numpy as np
from mmengine import fileio
from mmengine.logging import print_log
from mmseg.datasets import ADE20KDataset
from mmseg.registry import DATASETS

from .checks import check_image_data, decode

__all__ = ['ADE20KTagsDataset', 'label_lut']

#: The label ``reduce_zero_label`` and ``label_map`` write for ignored pixels. MMSeg's
#: ``LoadAnnotations`` hard-codes it, whatever the dataset's ``ignore_index``.
_IGNORE = 255


def label_lut(reduce_zero_label: bool, label_map: Optional[Dict[int, int]]) -> np.ndarray:
    """The uint8 pixel-label mapping of MMSeg's ``LoadAnnotations`` as a lookup table.

    ``LoadAnnotations`` first reduces the zero label (0 -> 255, ``k`` -> ``k - 1``, 255
    stays 255), then replaces every ``old`` of ``label_map`` by ``new`` at once (read
    from a copy, so chains like 1 -> 0, 0 -> 255 do not compose).

    Returns:
        ``(256,)`` uint8 array ``lut`` with ``mapped = lut[annotation]``.
    """
    lut = np.arange(256, dtype=np.uint8)
    if reduce_zero_label:
        lut = (lut.astype(np.int64) - 1).astype(np.uint8)               # 0 -> 255, k -> k - 1
        lut[lut == 254] = _IGNORE                                       # 255 stays ignored
    if label_map is not None:
        table = np.arange(256, dtype=np.uint8)
        for old, new in label_map.items():
            table[old] = new
        lut = table[lut]
    return lut


@DATASETS.register_module()
class ADE20KTagsDataset(ADE20KDataset):
    """ADE20k (or data in its layout) with a multi-hot ``gt_label`` per image.

    Args:
        min_fraction: Tag a class when it covers *more* than this fraction of the
            image's labelled (non-ignored) pixels; 0 tags every class present. In
            ``[0, 1)``.
        **kwargs: Everything of ``mmseg.datasets.ADE20KDataset`` (``data_root``,
            ``data_prefix=dict(img_path=..., seg_map_path=...)``, ``metainfo=dict(
            classes=subset)``, ``pipeline``, ``ignore_index``, ...).

    Each data item is MMSeg's (``img_path``, ``seg_map_path``, ...) plus ``gt_label``:
    ``(K,)`` uint8 multi-hot over ``metainfo['classes']``. The annotations are read once,
    when the data list is loaded (a few minutes for the 20k ADE20k training images);
    pipelines then need no ``LoadAnnotations``, e.g. ``LoadImageFromFile``,
    ``RandomFlip``, ``PackClsInputs``.

    Raises:
        FileNotFoundError: An annotation file is missing (named in the message).
        ValueError: An annotation cannot be decoded, or has labels outside
            ``0..K-1`` other than the ignore labels (after the mapping above).
    """

    def __init__(self, min_fraction: float = 0.0, **kwargs):
        if not 0.0 <= min_fraction < 1.0:
            raise ValueError(f'min_fraction must be in [0, 1), got {min_fraction}')
        self.min_fraction = float(min_fraction)
        super().__init__(**kwargs)

    def load_data_list(self) -> List[dict]:
        data_list = super().load_data_list()
        num_classes = len(self.metainfo['classes'])
        lut = label_lut(self.reduce_zero_label, self.label_map)
        for item in data_list:
            item['gt_label'] = self._tags(item.get('seg_map_path'), lut, num_classes)
        mean_tags = np.mean([item['gt_label'].sum() for item in data_list]) if data_list else 0
        print_log(f'{type(self).__name__}: {len(data_list)} images, {mean_tags:.2f} tags per '
                  f'image on average ({num_classes} classes, min_fraction={self.min_fraction})',
                  logger='current')
        return data_list

    def _tags(self, path: Optional[str], lut: np.ndarray, num_classes: int) -> np.ndarray:
        """``(K,)`` uint8 multi-hot tags of one annotation file."""
        if not path:
            raise ValueError(f'{type(self).__name__} needs annotations: set '
                             "data_prefix=dict(img_path=..., seg_map_path=...)")
        try:
            data = fileio.get(path, backend_args=self.backend_args)
        except FileNotFoundError as e:
            raise FileNotFoundError(f'annotation file {path!r} does not exist') from e
        check_image_data(data, path, 'annotation file')  # truncated, unknown, or too large
        try:
            seg = decode(data, 'unchanged', 'pillow')
        except Exception as e:  # PIL raises OSError/ValueError/SyntaxError on bad files
            raise ValueError(f'cannot read annotation file {path!r}: {e}') from e
        if seg is None:
            raise ValueError(f'cannot read annotation file {path!r}')
        seg = seg.squeeze()
        if seg.dtype != np.uint8 and seg.size and int(seg.max()) > 255:
            raise ValueError(f'annotation file {path!r} is {seg.dtype} with values up to '
                             f'{int(seg.max())}: class ids must fit in 0..255 (8-bit PNG); '
                             'they would wrap and give wrong tags')
        seg = lut[seg.astype(np.uint8)]                                 # as LoadAnnotations
        counts = np.bincount(seg.ravel(), minlength=256)                # (256,)
        ignored = {_IGNORE, self.ignore_index}
        bad = [v for v in np.flatnonzero(counts) if v >= num_classes and v not in ignored]
        if bad:
            raise ValueError(f'annotation file {path!r} has labels {bad} (after '
                             f'reduce_zero_label/label_map) outside 0..{num_classes - 1} '
                             f'and not ignored ({sorted(ignored)})')
        counts = counts[:num_classes].copy()
        if self.ignore_index < num_classes:
            counts[self.ignore_index] = 0
        labelled = counts.sum()
        return (counts > self.min_fraction * labelled).astype(np.uint8)  # (K,)
