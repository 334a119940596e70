"""Image classification data laid out one folder per class, and its pack transform.

::

    data_root/
        train/<class_name>/*.jpg|png|...
        val/<class_name>/*.jpg|png|...

:class:`ImageFolderDataset` reads a split; :class:`PackClsInputs` turns a transformed
sample into ``dict(inputs=(3, H, W) uint8 tensor, data_samples=BaseDataElement)`` with
``gt_label`` (0-d long tensor, or ``(K,)`` float32 multi-hot) and the image's meta
information. Image loading and augmentation are MMCV's/MMSeg's own transforms
(``LoadImageFromFile``, ``Resize``, ``RandomCrop``, ``CenterCrop``, ``RandomFlip``).
"""
import os
import os.path as osp
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset
from mmengine.structures import BaseDataElement
from mmseg.registry import DATASETS, TRANSFORMS

__all__ = ['ImageFolderDataset', 'PackClsInputs', 'IMG_EXTENSIONS']

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def _read_classes(classes: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(classes, str):  # a text file, one class name a line
        with open(classes) as f:
            return [line.strip() for line in f if line.strip()]
    return list(classes)


@DATASETS.register_module()
class ImageFolderDataset(BaseDataset):
    """One split of an image-folder classification dataset.

    Args:
        data_root: Dataset root.
        data_prefix: ``dict(img_path='train')``: the split folder under ``data_root``.
        classes: Class names in label order (a list, or a text file with one name a
            line). Default: the sorted sub-folder names of the split. Give it explicitly
            (the demo writes ``classes.txt``) when a split may lack some classes, so
            labels agree across splits.
        extensions: File endings counted as images (case-insensitive).
        **kwargs: Everything else of :class:`mmengine.dataset.BaseDataset`
            (``pipeline``, ``test_mode``, ``indices``, ...).

    Each data item: ``dict(img_path=str, gt_label=int)``; ``metainfo['classes']`` holds
    the class names.
    """

    def __init__(self,
                 data_root: str = '',
                 data_prefix: dict = dict(img_path=''),
                 classes: Optional[Union[str, Sequence[str]]] = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS,
                 metainfo: Optional[dict] = None,
                 **kwargs):
        metainfo = dict(metainfo or {})
        if classes is not None:
            if isinstance(classes, str) and not osp.isfile(classes) and data_root:
                classes = osp.join(data_root, classes)  # relative to the dataset root
            metainfo['classes'] = _read_classes(classes)
        self.extensions = tuple(e.lower() for e in extensions)
        super().__init__(data_root=data_root, data_prefix=data_prefix, metainfo=metainfo,
                         **kwargs)

    def load_data_list(self) -> List[dict]:
        folder = self.data_prefix.get('img_path', '') or self.data_root
        if not osp.isdir(folder):
            raise FileNotFoundError(f'image folder {folder!r} does not exist (expected '
                                    '<data_root>/<split>/<class_name>/<images>)')
        found = sorted(d for d in os.listdir(folder) if osp.isdir(osp.join(folder, d)))
        classes = self._metainfo.get('classes')
        if classes is None:
            classes = found
            self._metainfo['classes'] = tuple(classes)
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(f'{folder} has class folders {unknown} that are not among the '
                             f'classes {list(classes)}')
        data_list = []
        for label, name in enumerate(classes):
            class_dir = osp.join(folder, name)
            if not osp.isdir(class_dir):
                continue
            for fname in sorted(os.listdir(class_dir)):
                if fname.lower().endswith(self.extensions):
                    data_list.append(dict(img_path=osp.join(class_dir, fname), gt_label=label))
        if not data_list:
            raise ValueError(f'no images ({", ".join(self.extensions)}) found in the class '
                             f'folders of {folder}')
        return data_list


@TRANSFORMS.register_module()
class PackClsInputs(BaseTransform):
    """Pack an image and its label for :class:`~vpt_seg.models.VPTClassifier`.

    Required keys: ``img`` ``(H, W, C)`` or ``(H, W)``; optional ``gt_label``: a class
    index (single-label) or a ``(K,)`` multi-hot array (multi-label tags, e.g. from
    :class:`~vpt_seg.datasets.ADE20KTagsDataset`).
    Returns ``dict(inputs=(C, H, W) tensor, data_samples=BaseDataElement)``; the data
    sample carries ``gt_label`` (a 0-d long tensor, or a ``(K,)`` float32 tensor for
    multi-hot labels) and the ``meta_keys`` present in the results.
    """

    def __init__(self, meta_keys: Sequence[str] = ('img_path', 'ori_shape', 'img_shape',
                                                   'scale_factor', 'flip', 'flip_direction')):
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim == 2:
            img = img[..., None]
        inputs = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        sample = BaseDataElement(metainfo={k: results[k] for k in self.meta_keys if k in results})
        if 'gt_label' in results:
            label = np.asarray(results['gt_label'])
            if label.ndim == 1:  # multi-hot tags
                sample.gt_label = torch.from_numpy(label.astype(np.float32))     # (K,)
            else:
                sample.gt_label = torch.tensor(int(label), dtype=torch.long)     # ()
        return dict(inputs=inputs, data_samples=sample)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'
