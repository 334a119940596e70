"""What ``tools/serve.py`` needs beyond :class:`~vpt_seg.serving.multitask.MultiTaskViT`: task
names, each task's input size, batches of one input size, label maps in bounded memory,
the ``--verify`` reference, and output files that cannot collide or leave ``--out-dir``.

* **Task names** match :data:`TASK_NAME` (letters, digits, ``_`` and ``-``): a name is a
  folder under ``--out-dir`` and a key of the task dict, so no separators, no dots.
* **Input size.** Each task's images go in at that task's own input size (``--size`` for
  every task when given, else the task backbone's ``img_size``, the size its position
  embeddings were trained at), whatever other tasks are served with it. A batch holds
  images of one input size; tasks of the same size share a pass. Batches are planned
  from the set of tasks, not their order on the command line, so the order changes
  nothing.
* **Images** are read as training reads them (:func:`load_image`): a truncated file, or one
  whose header declares more pixels than the limit (a decompression bomb), is refused
  by name before it is decoded.
* **Output names** keep the whole file name: ``<task>/<image>.png`` (``a.jpg`` ->
  ``a.jpg.png``) and ``<task>/<image>_overlay.png``. No label map can take an overlay's
  name (it would need an image file ending in ``_overlay``), so two images collide only
  when their names differ in case alone (on a case-insensitive file system), which is
  refused before anything runs.
* **Writing** goes to a fresh temporary file in the target folder, then ``os.replace``:
  an existing symbolic link (file or task folder) is refused by name, and nothing is
  written outside ``--out-dir``.
"""
import math
import os
import os.path as osp
import re
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from ..datasets.checks import read_image
from ..models.segmentor import DEFAULT_LOGITS_BUDGET, resized_labels

__all__ = ['TASK_NAME', 'check_task_name', 'input_size', 'plan_batches', 'load_image',
           'task_input', 'label_map', 'overlay', 'verify_batch', 'worse', 'output_names',
           'OutputDir']

#: A task name: letters, digits, ``_`` and ``-`` (it names a folder under --out-dir).
TASK_NAME = re.compile(r'[A-Za-z0-9_-]+')

Size = Tuple[int, int]


def check_task_name(name: str) -> str:
    """``name`` if it is a valid task name, else a ``ValueError`` that says what is."""
    if not TASK_NAME.fullmatch(name or ''):
        raise ValueError(f'task name {name!r}: use letters, digits, "_" and "-" only '
                         '(it names the output folder <out-dir>/<task>)')
    return name


def input_size(model: torch.nn.Module, size: Optional[Sequence[int]] = None) -> Size:
    """The ``(H, W)`` a task's images go in at: ``size``, else its backbone's ``img_size``."""
    h, w = size if size else model.backbone.img_size
    return int(h), int(w)


def plan_batches(files: Sequence[str], sizes: Dict[str, Size], batch_size: int
                 ) -> List[Tuple[Size, List[Tuple[str, str]]]]:
    """Batches of ``(image file, task)`` pairs, each of one input size.

    Args:
        files: Image files, in serving order.
        sizes: Input size of each task.
        batch_size: Pairs per batch (>= 1).

    Returns:
        ``[(size, pairs)]``: sizes in ascending order, tasks of a size by name, so the
        plan (hence every float) does not depend on the order the tasks were given in.
    """
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    groups: Dict[Size, List[str]] = OrderedDict()
    for name in sorted(sizes):
        groups.setdefault(tuple(sizes[name]), []).append(name)
    plan = []
    for size in sorted(groups):
        pairs = [(f, t) for f in files for t in groups[size]]
        plan += [(size, pairs[i:i + batch_size]) for i in range(0, len(pairs), batch_size)]
    return plan


def load_image(path: str, limit: Optional[int] = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 BGR, as MMSeg's ``LoadImageFromFile`` (and ``cv2.imread``: a
    photo with an EXIF Orientation is turned upright).

    Read by the training loaders' :func:`~vpt_seg.datasets.checks.read_image`: a
    truncated or unreadable file, or one whose header declares more pixels than
    ``limit`` (None: :func:`~vpt_seg.datasets.checks.pixel_limit`), is refused before
    decoding with a :class:`~vpt_seg.datasets.checks.DataError` naming it.
    """
    return read_image(path, 'color', 'cv2', limit=limit, check_orientation=False)


def task_input(img: np.ndarray, size: Size, device='cpu') -> torch.Tensor:
    """``(3, H, W)`` uint8: ``img`` resized (bilinear) to a task's input size."""
    resized = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(resized.transpose(2, 0, 1).copy()).to(device)


def label_map(model: torch.nn.Module, logits: torch.Tensor, size: Size,
              budget: int = DEFAULT_LOGITS_BUDGET) -> np.ndarray:
    """``(H, W)`` labels of a segmentor's ``(K, h, w)`` logits at the image's size, as its
    ``postprocess_result`` (bilinear, its ``align_corners``, argmax; the threshold for one
    class), in bands of rows: memory ``O(K * band * W + H * W)``."""
    head = model.decode_head
    labels = resized_labels(logits.float(), size, head.align_corners,
                            getattr(model, 'logits_budget', budget),
                            getattr(head, 'threshold', 0.3))
    return labels[0].cpu().numpy()


def overlay(img: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """The BGR image blended 50/50 with the RGB class colours of ``labels``."""
    colour = palette[labels][..., ::-1]                                  # RGB -> BGR
    return cv2.addWeighted(img, 0.5, np.ascontiguousarray(colour), 0.5, 0)


@torch.no_grad()
def verify_batch(mt, originals: Dict[str, np.ndarray], pairs: Sequence[Tuple[str, str]],
                 outputs: Sequence[torch.Tensor], size: Optional[Sequence[int]] = None,
                 device='cpu') -> Dict[str, float]:
    """Largest difference per task between the served outputs and each task model run
    alone on its images prepared on their own, at the task's own input size.

    A served output of another shape (an image that went in at another size) counts as
    ``inf``; a NaN anywhere makes the task's difference NaN (:func:`worse`).
    """
    worst: Dict[str, float] = {}
    tasks = [t for _, t in pairs]
    for name in OrderedDict.fromkeys(tasks):
        idx = [i for i, t in enumerate(tasks) if t == name]
        own = input_size(mt.tasks[name], size)
        images = [task_input(originals[pairs[i][0]], own, device) for i in idx]
        ref = mt.run_alone(mt.preprocess(images, [name] * len(idx)), [name] * len(idx))
        for i, r in zip(idx, ref):
            out = outputs[i]
            diff = float('inf') if out.shape != r.shape else (out - r).abs().max().item()
            worst[name] = worse(worst.get(name, 0.0), diff)
    return worst


def worse(a: float, b: float) -> float:
    """The larger of two differences, NaN if either is NaN (a NaN output is a failure;
    ``max(0.0, nan)`` would be 0.0)."""
    return a if math.isnan(a) else b if math.isnan(b) else max(a, b)


def output_names(files: Sequence[str]) -> Dict[str, Tuple[str, str]]:
    """``{image file: (label map name, overlay name)}``; refuses names that would collide
    (also case-insensitively), naming both images."""
    names, seen = {}, {}
    for f in files:
        names[f] = (f'{f}.png', f'{f}_overlay.png')
        for out in names[f]:
            other = seen.setdefault(out.casefold(), f)
            if other != f:
                raise ValueError(f'images {other!r} and {f!r} would both write {out!r} '
                                 '(names that differ in case only); rename one')
    return names


class OutputDir:
    """Files under one folder, written atomically, never through a symbolic link.

    Args:
        root: The folder (``--out-dir``); created at the first write.
    """

    def __init__(self, root: str):
        self.root = root
        umask = os.umask(0o22)
        os.umask(umask)
        self.mode = 0o666 & ~umask  # what open() would give; mkstemp makes 0o600

    def _folder(self, sub: Optional[str], create: bool = True) -> str:
        if sub is None:
            if create:
                os.makedirs(self.root, exist_ok=True)
            return self.root
        check_task_name(sub)
        path = osp.join(self.root, sub)
        if osp.islink(path):
            raise ValueError(f'{path} is a symbolic link (to {os.readlink(path)}); serve.py '
                             'writes only inside --out-dir: remove the link or choose '
                             'another --out-dir')
        if osp.lexists(path) and not osp.isdir(path):
            raise ValueError(f'{path} exists and is not a folder; remove it or choose '
                             'another --out-dir')
        if create:
            os.makedirs(path, exist_ok=True)
        return path

    def check(self, sub: Optional[str], names: Sequence[str]):
        """Refuse, before any work, a link or a folder where one of ``names`` goes
        (``sub``: a task's folder, None: ``root``). Creates nothing."""
        folder = self._folder(sub, create=False)
        if not osp.isdir(folder):
            return
        for name in names:
            path = osp.join(folder, name)
            if osp.islink(path):
                raise ValueError(f'{path} is a symbolic link (to {os.readlink(path)}); '
                                 'serve.py does not write through links: remove it or '
                                 'choose another --out-dir')
            if osp.isdir(path):
                raise ValueError(f'{path} is a folder where serve.py writes a file; '
                                 'remove it or choose another --out-dir')

    def write(self, sub: Optional[str], name: str, data: bytes) -> str:
        """Write ``data`` to ``root/sub/name``: a temporary file beside it, then
        ``os.replace``, which replaces a path and never follows a link at it."""
        if osp.basename(name) != name or name in ('', '.', '..'):
            raise ValueError(f'{name!r} is not a plain file name')
        folder = self._folder(sub)
        self.check(sub, [name])  # and os.replace below never follows a link made since
        fd, tmp = tempfile.mkstemp(dir=folder, prefix='.', suffix='.part')
        try:
            with os.fdopen(fd, 'wb') as f:
                f.write(data)
            os.chmod(tmp, self.mode)
            os.replace(tmp, osp.join(folder, name))
        except BaseException:
            if osp.lexists(tmp):
                os.unlink(tmp)
            raise
        return osp.join(folder, name)

    def write_png(self, sub: Optional[str], name: str, image: np.ndarray) -> str:
        ok, data = cv2.imencode('.png', image)
        if not ok:
            raise ValueError(f'cannot encode {name} as PNG')
        return self.write(sub, name, data.tobytes())
