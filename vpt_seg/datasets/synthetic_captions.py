"""Generated image-caption pairs and a few-shot target task for the CoOp study.

A small world of real English words: colours (:data:`COLOURS`), shapes (:data:`SHAPES`),
textures (:data:`TEXTURES`), counts ("a", "two") and positions ("on the left", "at the
top", ...). :func:`make_caption_pairs` draws *source* images with captions that name what
is drawn (``'a photo of two striped red circles.'``), for contrastive pretraining of a
tiny CLIP; every colour-shape combination of :data:`TARGET_CLASSES` is left out of them,
so a target class name such as ``'orange ring'`` is made of words the text tower has
seen only in other combinations. :func:`make_target_folder` writes target images (one
object of the class, any texture and position, another look: tinted backgrounds and
dimmer light) in the image-folder layout of :class:`~vpt_seg.datasets.ImageFolderDataset`::

    root/classes.txt
    root/<split>/<class_name>/00000.png      # class_name: 'orange_ring'

Every image is drawn from its own seed (task seed, class, split, index), so a split with
fewer shots holds the first images of a larger one, and any class subset draws the same
images as the full set.
"""
import os
import os.path as osp
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from .synthetic_cls import shape_mask

__all__ = ['COLOURS', 'SHAPES', 'TEXTURES', 'TARGET_CLASSES', 'CAPTION_TEMPLATES',
           'render_scene', 'make_caption_pairs', 'make_target_folder', 'folder_name']

#: Colour words and their RGB.
COLOURS = {
    'red': (220, 40, 40), 'green': (40, 170, 60), 'blue': (40, 80, 220),
    'yellow': (235, 215, 40), 'purple': (140, 60, 190), 'orange': (245, 140, 30),
    'pink': (250, 150, 200), 'cyan': (40, 200, 210),
}
#: Shape words and their plurals.
SHAPES = {'circle': 'circles', 'square': 'squares', 'triangle': 'triangles',
          'ring': 'rings', 'cross': 'crosses', 'diamond': 'diamonds'}
TEXTURES = ('plain', 'striped', 'dotted')
#: Target classes (colour, shape): never drawn together in the source captions.
TARGET_CLASSES: Tuple[Tuple[str, str], ...] = (
    ('orange', 'ring'), ('purple', 'triangle'), ('pink', 'square'), ('green', 'cross'),
    ('blue', 'diamond'), ('yellow', 'circle'), ('cyan', 'triangle'), ('red', 'diamond'),
    ('purple', 'circle'), ('orange', 'cross'),
)
#: How source captions wrap a description (``{}``: ``'two striped red circles'``).
CAPTION_TEMPLATES = ('{}', 'a photo of {}', 'there is {}', 'an image of {}',
                     '{} on a grey background')
_POSITIONS = {'left': 'on the left', 'right': 'on the right', 'top': 'at the top',
              'bottom': 'at the bottom'}


def folder_name(colour: str, shape: str) -> str:
    """The class folder and config name of a class (``'orange_ring'``; the text encoder
    reads ``_`` as a space)."""
    return f'{colour}_{shape}'


#: Caption shape words that :func:`~vpt_seg.datasets.synthetic_cls.shape_mask` names
#: otherwise.
_MASK_NAMES = {'circle': 'disc'}
#: The crosses here have slightly wider arms than the classification dataset's.
_CROSS_ARM = 0.32


def _texture(texture: str, size: int) -> np.ndarray:
    """Where a textured object shows its colour (elsewhere it is darker)."""
    yy, xx = np.mgrid[0:size, 0:size]
    if texture == 'striped':
        return (xx // 2) % 2 == 0
    if texture == 'dotted':
        return ((xx % 4) < 2) & ((yy % 4) < 2)
    return np.ones((size, size), bool)


def _centre(position: str, r: float, size: int, rng: np.random.Generator):
    lo, hi, mid = r, size - r, size / 2
    ranges = {'left': ((lo, hi), (lo, mid - 2)), 'right': ((lo, hi), (mid + 2, hi)),
              'top': ((lo, mid - 2), (lo, hi)), 'bottom': ((mid + 2, hi), (lo, hi)),
              'any': ((lo, hi), (lo, hi))}[position]
    return rng.uniform(*ranges[0]), rng.uniform(*ranges[1])


def render_scene(colour: str, shape: str, texture: str, rng: np.random.Generator,
                 count: int = 1, position: str = 'any', look: str = 'source',
                 size: int = 32) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 RGB image: ``count`` objects of one colour, shape and
    texture on a noisy background. ``look='source'``: grey backgrounds; ``'target'``:
    tinted backgrounds, dimmer light and stronger colour jitter (the target domain)."""
    if look == 'source':
        bg = np.full(3, rng.uniform(70, 180), np.float32)
        light, jitter = 1.0, 20.0
    else:
        bg = rng.uniform(50, 170, 3).astype(np.float32)
        light, jitter = rng.uniform(0.6, 0.9), 35.0
    img = bg + rng.normal(0, 12, (size, size, 1)) + rng.normal(0, 6, (size, size, 3))
    r = rng.uniform(0.25, 0.36) * size if count == 1 else rng.uniform(0.15, 0.2) * size
    colour_rgb = np.asarray(COLOURS[colour], np.float32) + rng.uniform(-jitter, jitter, 3)
    pattern = _texture(texture, size)
    centres = []
    for _ in range(count):
        for _ in range(20):  # objects apart
            cy, cx = _centre(position, r, size, rng)
            if all((cy - y) ** 2 + (cx - x) ** 2 > (2.1 * r) ** 2 for y, x in centres):
                break
        centres.append((cy, cx))
        mask = shape_mask(_MASK_NAMES.get(shape, shape), cy, cx, r, (size, size),
                          cross_arm=_CROSS_ARM)
        img[mask & pattern] = colour_rgb
        img[mask & ~pattern] = colour_rgb * 0.45
    img = img * light + rng.normal(0, 4, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _source_combos() -> List[Tuple[str, str]]:
    held_out = set(TARGET_CLASSES)
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held_out]


def _caption(colour, shape, texture, count, position, rng) -> str:
    words = []
    tex = '' if texture == 'plain' and rng.random() < 0.6 else texture
    if count == 1:
        first = tex or colour
        words.append('an' if first[0] in 'aeiou' else 'a')
    else:
        words.append('two')
    if tex:
        words.append(tex)
    words += [colour, shape if count == 1 else SHAPES[shape]]
    if position != 'any':
        words.append(_POSITIONS[position])
    text = rng.choice(CAPTION_TEMPLATES).format(' '.join(words))
    return text + ('.' if rng.random() < 0.5 else '')


def make_caption_pairs(num: int, seed: int = 0, size: int = 32
                       ) -> Tuple[np.ndarray, List[str]]:
    """``num`` source images ``(num, size, size, 3)`` uint8 RGB and their captions.

    Each pair: a colour-shape combination not among :data:`TARGET_CLASSES`, a texture,
    one object (at a named position or anywhere) or two, and a caption naming them in
    one of :data:`CAPTION_TEMPLATES`."""
    rng = np.random.default_rng([seed, 1])
    combos = _source_combos()
    images = np.empty((num, size, size, 3), np.uint8)
    captions = []
    for i in range(num):
        colour, shape = combos[rng.integers(len(combos))]
        texture = TEXTURES[rng.integers(len(TEXTURES))]
        count = 2 if rng.random() < 0.25 else 1
        position = 'any' if count == 2 or rng.random() < 0.4 else \
            list(_POSITIONS)[rng.integers(len(_POSITIONS))]
        images[i] = render_scene(colour, shape, texture, rng, count, position, 'source', size)
        captions.append(_caption(colour, shape, texture, count, position, rng))
    return images, captions


_SPLIT_IDS = {'train': 0, 'val': 1}


def make_target_folder(root: str, classes: Sequence[int], splits: Sequence[Tuple[str, str, int]],
                       seed: int = 0, size: int = 32) -> str:
    """Write target images of ``classes`` (indices into :data:`TARGET_CLASSES`) and
    ``root/classes.txt``; returns ``root``.

    Args:
        splits: ``(folder, kind, count)``: ``count`` images per class into
            ``root/<folder>/<class>/``, the first ``count`` of split ``kind``
            (``'train'`` or ``'val'``), so ``train_4shot`` holds the first 4 of
            ``train_16shot``.
    """
    os.makedirs(root, exist_ok=True)
    names = [folder_name(*TARGET_CLASSES[c]) for c in classes]
    with open(osp.join(root, 'classes.txt'), 'w') as f:
        f.write('\n'.join(names) + '\n')
    for folder, kind, count in splits:
        for c, name in zip(classes, names):
            out = osp.join(root, folder, name)
            os.makedirs(out, exist_ok=True)
            colour, shape = TARGET_CLASSES[c]
            for i in range(count):
                rng = np.random.default_rng([seed, 2, c, _SPLIT_IDS[kind], i])
                texture = TEXTURES[rng.integers(len(TEXTURES))]
                rgb = render_scene(colour, shape, texture, rng, 1, 'any', 'target', size)
                cv2.imwrite(osp.join(out, f'{i:05d}.png'), rgb[..., ::-1])
    return root
