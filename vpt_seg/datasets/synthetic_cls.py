"""A small, learnable image-classification dataset in the image-folder layout.

:func:`make_cls_folder` draws one object per image on a noisy grey background; each class
is a colour *and* a shape (disc, square, triangle, ring, cross, stripes), with random
position, size, colour jitter and background, so the label is visible but never a fixed
pattern. It writes::

    root/classes.txt
    root/train/<class_name>/00000.png
    root/val/<class_name>/00000.png

for :class:`~vpt_seg.datasets.ImageFolderDataset` and ``configs/vpt_cls_demo.py``.
"""
import os
import os.path as osp
from typing import Sequence, Tuple

import cv2
import numpy as np

__all__ = ['CLS_CLASSES', 'make_cls_folder', 'render_cls_sample', 'shape_mask']

#: (class name, RGB colour, shape)
CLS_CLASSES: Tuple[Tuple[str, Tuple[int, int, int], str], ...] = (
    ('red_disc', (220, 50, 50), 'disc'),
    ('green_square', (50, 180, 60), 'square'),
    ('blue_triangle', (50, 80, 220), 'triangle'),
    ('yellow_ring', (230, 210, 40), 'ring'),
    ('magenta_cross', (200, 60, 200), 'cross'),
    ('cyan_stripes', (60, 200, 210), 'stripes'),
)


def shape_mask(shape: str, cy: float, cx: float, r: float, size: Tuple[int, int],
               cross_arm: float = 0.3) -> np.ndarray:
    """Where one shape covers an image: a ``(H, W)`` bool mask.

    The one drawing of the synthetic shapes (this dataset and
    :mod:`~vpt_seg.datasets.synthetic_captions` both call it).

    Args:
        shape: ``'disc'``, ``'square'``, ``'triangle'`` (apex up), ``'ring'``,
            ``'cross'``, ``'stripes'`` or ``'diamond'``.
        cy: Centre row, in pixels.
        cx: Centre column, in pixels.
        r: Half the shape's extent, in pixels.
        size: Image size ``(H, W)``.
        cross_arm: Half the width of a cross's arm, as a fraction of ``r``.
    """
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    if shape == 'disc':
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == 'square':
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if shape == 'triangle':  # apex up
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == 'ring':
        d2 = dx ** 2 + dy ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    if shape == 'cross':
        arm = cross_arm * r
        box = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        return box & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    if shape == 'stripes':
        box = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        return box & ((xx // max(2, int(r / 3))) % 2 == 0)
    if shape == 'diamond':
        return np.abs(dx) + np.abs(dy) <= r * 1.1
    raise ValueError(f'unknown shape {shape!r}; expected one of disc, square, triangle, '
                     'ring, cross, stripes, diamond')


def _random_shape_mask(shape: str, size: Tuple[int, int],
                       rng: np.random.Generator) -> np.ndarray:
    """:func:`shape_mask` at a random size and position that keep it inside the image."""
    h, w = size
    r = rng.uniform(0.22, 0.36) * min(h, w)
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    return shape_mask(shape, cy, cx, r, size)


def render_cls_sample(label: int, rng: np.random.Generator,
                      size: Tuple[int, int] = (32, 32)) -> np.ndarray:
    """One ``(H, W, 3)`` uint8 RGB image of class ``label`` (an index into
    :data:`CLS_CLASSES`)."""
    _, colour, shape = CLS_CLASSES[label]
    h, w = size
    grey = rng.uniform(60, 190)
    img = grey + rng.normal(0, 12, (h, w, 1)) + rng.normal(0, 6, (h, w, 3))
    mask = _random_shape_mask(shape, size, rng)
    jitter = rng.uniform(-25, 25, 3)
    img[mask] = np.asarray(colour, np.float32) + jitter + rng.normal(0, 8, (mask.sum(), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_cls_folder(root: str, *, num_train: int = 40, num_val: int = 10,
                    size: Tuple[int, int] = (32, 32), seed: int = 0,
                    classes: Sequence[int] = None) -> str:
    """Write the demo dataset (PNG images) and return ``root``.

    Args:
        root: Folder to write ``classes.txt``, ``train/`` and ``val/`` into.
        num_train: Training images per class.
        num_val: Validation images per class.
        size: Image size ``(H, W)``.
        seed: Random seed; the same seed writes the same files.
        classes: Indices into :data:`CLS_CLASSES` to use (default: all six).
    """
    rng = np.random.default_rng(seed)
    classes = list(range(len(CLS_CLASSES))) if classes is None else list(classes)
    os.makedirs(root, exist_ok=True)
    with open(osp.join(root, 'classes.txt'), 'w') as f:
        f.write('\n'.join(CLS_CLASSES[c][0] for c in classes) + '\n')
    for split, count in (('train', num_train), ('val', num_val)):
        for c in classes:
            folder = osp.join(root, split, CLS_CLASSES[c][0])
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                rgb = render_cls_sample(c, rng, size)
                cv2.imwrite(osp.join(folder, f'{i:05d}.png'), rgb[..., ::-1])
    return root
