"""Synthetic segmentation data in the ADE20k layout, for tests and the transfer study.

No dataset can be downloaded where this project must run, so :func:`make_ade20k` draws
one: textured "stuff" backgrounds with a few "thing" shapes (discs, rectangles,
triangles, stripes) on top, written exactly as MMSeg's ``ADE20KDataset`` expects::

    ADEChallengeData2016/
        images/{training,validation}/ADE_{train,val}_00000001.jpg
        annotations/{training,validation}/ADE_{train,val}_00000001.png   # uint8, 0..150

Label 0 is "other", as in the real data (``reduce_zero_label=True`` maps 0 -> 255, i.e.
ignored, and k -> k - 1); a small clutter blob of label 0 appears in some images.

Two tasks share the drawing code (shapes, edges, textures, noise) but not their classes:

* ``'source'`` uses ADE ids 1..8 (:data:`TASK_CLASSES`), each with its own colour and
  texture; the shape of an object is random, so the class is read from appearance.
* ``'target'`` uses ADE ids 20..27 and another appearance mapping: colours come in
  pairs told apart only by texture (stripe orientation, checks, dots, ...), so a model
  must look at structure it was never asked to separate on the source task.

A model pretrained on the source task is therefore useful (same low-level statistics)
but not sufficient (the target needs other features): a small-scale transfer task in the
spirit of the VPT paper's ADE20k experiments.
"""
import os
import os.path as osp
from typing import Dict, List, Tuple

import cv2
import numpy as np

__all__ = ['TASK_CLASSES', 'TASKS', 'make_ade20k', 'render_sample']

#: ADE20k class ids (1-based, as stored in the annotation PNGs) used by each task. The
#: first two are "stuff" (backgrounds), the rest "things" (shapes).
TASK_CLASSES: Dict[str, Tuple[int, ...]] = {
    'source': tuple(range(1, 9)),
    'target': tuple(range(20, 28)),
}
TASKS = tuple(TASK_CLASSES)
NUM_STUFF = 2

# Per task, per class: (RGB base colour, texture kind, texture parameter).
# Textures: 'flat', 'stripes' (angle in degrees), 'checker' (period), 'dots' (period),
# 'blotch' (cell size of smooth noise).
_APPEARANCE: Dict[str, List[Tuple[Tuple[int, int, int], str, float]]] = {
    'source': [
        ((150, 150, 160), 'blotch', 16),   # stuff
        ((90, 130, 70), 'blotch', 8),      # stuff
        ((220, 60, 50), 'flat', 0),
        ((50, 90, 220), 'stripes', 45),
        ((230, 200, 40), 'checker', 8),
        ((60, 200, 200), 'dots', 8),
        ((200, 80, 200), 'stripes', 0),
        ((240, 140, 40), 'blotch', 4),
    ],
    'target': [
        ((110, 90, 70), 'stripes', 90),    # stuff
        ((110, 90, 70), 'blotch', 8),      # stuff, same colour: texture decides
        ((90, 170, 120), 'stripes', 0),
        ((90, 170, 120), 'stripes', 90),
        ((170, 120, 170), 'checker', 6),
        ((170, 120, 170), 'dots', 6),
        ((200, 170, 110), 'stripes', 45),
        ((200, 170, 110), 'flat', 0),
    ],
}
_SHAPES = ('disc', 'rectangle', 'triangle', 'stripe')
_SPLITS = (('training', 'train'), ('validation', 'val'))


def _texture(kind: str, param: float, xx: np.ndarray, yy: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """A ``(H, W)`` pattern in [-1, 1] with a random phase."""
    h, w = xx.shape
    if kind == 'flat':
        return np.zeros((h, w), np.float32)
    if kind == 'stripes':
        theta = np.deg2rad(param + rng.uniform(-8, 8))
        period = rng.uniform(5, 7)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        return np.sign(np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi)))
    if kind == 'checker':
        ox, oy = rng.uniform(0, param, size=2)
        return np.sign(np.sin(np.pi * (xx + ox) / (param / 2))
                       * np.sin(np.pi * (yy + oy) / (param / 2)))
    if kind == 'dots':
        ox, oy = rng.uniform(0, param, size=2)
        dx = np.mod(xx + ox, param) - param / 2
        dy = np.mod(yy + oy, param) - param / 2
        return np.where(dx ** 2 + dy ** 2 < (param / 4) ** 2, 1.0, -0.4)
    if kind == 'blotch':
        cells = (max(2, int(np.ceil(h / param)) + 1), max(2, int(np.ceil(w / param)) + 1))
        small = rng.uniform(-1, 1, size=cells).astype(np.float32)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(-1, 1)
    raise ValueError(f'unknown texture {kind!r}')


def _paint(appearance, xx, yy, rng) -> np.ndarray:
    """``(H, W, 3)`` float image of one class's appearance with instance jitter."""
    colour, kind, param = appearance
    base = np.asarray(colour, np.float32) * rng.uniform(0.85, 1.15)
    pattern = _texture(kind, param, xx, yy, rng)[..., None]
    return base + 45.0 * pattern


def _shape_mask(shape: str, xx, yy, rng, size) -> np.ndarray:
    h, w = size
    s = min(h, w)
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    if shape == 'disc':
        r = rng.uniform(0.12, 0.25) * s
        return (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
    if shape == 'rectangle':
        theta = rng.uniform(0, np.pi)
        a, b = rng.uniform(0.10, 0.25, size=2) * s
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        return (np.abs(u) < a) & (np.abs(v) < b)
    if shape == 'triangle':
        r = rng.uniform(0.18, 0.32) * s
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3
        angles = angles + rng.uniform(-0.3, 0.3, size=3)
        px, py = cx + r * np.cos(angles), cy + r * np.sin(angles)
        inside = np.ones_like(xx, bool)
        sign = np.sign((px[1] - px[0]) * (py[2] - py[0]) - (py[1] - py[0]) * (px[2] - px[0]))
        for i in range(3):
            j = (i + 1) % 3
            cross = (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i])
            inside &= sign * cross >= 0
        return inside
    if shape == 'stripe':
        theta = rng.uniform(0, np.pi)
        half = rng.uniform(0.06, 0.12) * s
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        return np.abs(u) < half
    raise ValueError(f'unknown shape {shape!r}')


def render_sample(rng: np.random.Generator, size: Tuple[int, int] = (64, 64),
                  task: str = 'source') -> Tuple[np.ndarray, np.ndarray]:
    """Draw one image and its annotation.

    Args:
        rng: Random generator; the sample is a pure function of its state.
        size: ``(H, W)``.
        task: ``'source'`` or ``'target'``.

    Returns:
        ``(image, label)``: ``(H, W, 3)`` uint8 RGB and ``(H, W)`` uint8 ADE ids
        (0 = other).
    """
    if task not in TASK_CLASSES:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    ids, looks = TASK_CLASSES[task], _APPEARANCE[task]
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # Two stuff regions split by a wavy horizon (sometimes just one).
    horizon = rng.uniform(0.25, 0.75) * h + rng.uniform(2, 6) * np.sin(
        2 * np.pi * xx / rng.uniform(0.5, 1.5) / w + rng.uniform(0, 2 * np.pi))
    top = yy < horizon if rng.uniform() < 0.8 else np.ones((h, w), bool)
    order = rng.permutation(NUM_STUFF)
    label = np.where(top, ids[order[0]], ids[order[1]]).astype(np.uint8)
    image = np.where(top[..., None], _paint(looks[order[0]], xx, yy, rng),
                     _paint(looks[order[1]], xx, yy, rng))

    # Things: 2 to 4 shapes of random classes, later ones on top.
    for _ in range(rng.integers(2, 5)):
        k = rng.integers(NUM_STUFF, len(ids))
        mask = _shape_mask(_SHAPES[rng.integers(len(_SHAPES))], xx, yy, rng, size)
        image[mask] = _paint(looks[k], xx, yy, rng)[mask]
        label[mask] = ids[k]

    # "Other" clutter (label 0, ignored by MMSeg) in some images.
    if rng.uniform() < 0.3:
        mask = _shape_mask('disc', xx, yy, rng, (h // 2, w // 2))
        image[mask] = rng.uniform(0, 255, size=3)
        label[mask] = 0

    image += rng.normal(0, 10, size=image.shape)
    return image.clip(0, 255).astype(np.uint8), label


def make_ade20k(root: str, *, num_train: int = 32, num_val: int = 8,
                size: Tuple[int, int] = (64, 64), task: str = 'source', seed: int = 0) -> str:
    """Write a synthetic dataset in the ADE20k layout.

    Args:
        root: Folder to create ``ADEChallengeData2016`` in.
        num_train: Training images.
        num_val: Validation images.
        size: Image size ``(H, W)``.
        task: ``'source'`` (ADE ids 1..8) or ``'target'`` (ADE ids 20..27, another
            appearance for each class); see the module docstring.
        seed: The output is a pure function of ``(task, seed, size, index)``.

    Returns:
        The ``ADEChallengeData2016`` path (a config's ``data_root``).
    """
    if task not in TASK_CLASSES:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    if num_train < 0 or num_val < 0:
        raise ValueError(f'image counts must be >= 0, got {num_train} and {num_val}')
    data_root = osp.join(root, 'ADEChallengeData2016')
    task_key = TASKS.index(task)
    for split_key, ((folder, prefix), count) in enumerate(zip(_SPLITS, (num_train, num_val))):
        img_dir = osp.join(data_root, 'images', folder)
        ann_dir = osp.join(data_root, 'annotations', folder)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(1, count + 1):
            rng = np.random.default_rng([seed, task_key, split_key, i])
            image, label = render_sample(rng, size, task)
            name = f'ADE_{prefix}_{i:08d}'
            cv2.imwrite(osp.join(img_dir, name + '.jpg'), image[..., ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(osp.join(ann_dir, name + '.png'), label)
    return data_root
