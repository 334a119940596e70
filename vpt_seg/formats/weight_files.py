"""Reading weight files safely: ``.safetensors`` and ``.npz`` without code, torch files
with safe loading (``weights_only``), TorchScript archives refused, and the reason a
file cannot be read said in words (:class:`UnreadableCheckpointError`); within
:func:`reading_once`, each file is read once.
"""
import contextlib
import os
import os.path as osp
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

__all__ = ['UnreadableCheckpointError', 'CLIP_FILE_HINT', 'read_checkpoint', 'reading_once',
           'load_torch_file', 'is_torchscript']

class UnreadableCheckpointError(ValueError):
    """A file that is not a readable checkpoint (truncated, garbage, unsafe objects)."""


def _load_error_reason(err: BaseException, path: Optional[str] = None) -> str:
    """torch's reason for refusing a file, without its advice to turn off safe loading."""
    text = str(err)
    if path is not None:
        import zipfile
        with open(path, 'rb') as f:
            head = f.read(4)
        if not head:
            return 'it is empty'
        if head == b'PK\x03\x04' and not zipfile.is_zipfile(path):
            return 'its zip archive is incomplete (the file is truncated)'
    unsafe = re.search(r'Unsupported global: GLOBAL ([\w.]+)', text)
    if unsafe:
        return (f'it stores the Python object {unsafe.group(1)}, which safe loading refuses '
                '(a checkpoint of weights never needs it)')
    if 'zip archive' in text or 'central directory' in text:
        return 'its zip archive is incomplete (the file is truncated)'
    if isinstance(err, EOFError) or 'Ran out of input' in text:
        return 'it ends early (empty or truncated)'
    if any(s in text for s in ('invalid load key', 'could not find MARK', 'Unsupported operand')):
        return 'it is not a torch file'
    for line in text.strip().split('\n'):
        if line.strip() and 'weights_only' not in line and 'trust' not in line:
            return line.strip()
    return type(err).__name__


_RESUME_HINT = ('If a run was killed while saving it, use an earlier checkpoint '
                '(tools/train.py --resume skips unreadable ones).')

#: How to get a CLIP file we read instead of OpenAI's TorchScript archive.
CLIP_FILE_HINT = (
    "OpenAI's CLIP .pt files are TorchScript archives (code, not weights), which are never "
    'run. Use the same weights as open_clip publishes them, e.g. for ViT-B/16: '
    'huggingface-cli download timm/vit_base_patch16_clip_224.openai --local-dir '
    'pretrain/clip_vit_b16, and name pretrain/clip_vit_b16/open_clip_model.safetensors '
    '(docs/coop.md)')


def is_torchscript(path: str) -> bool:
    """A zip whose records include ``constants.pkl`` or a ``code/`` folder: a TorchScript
    archive (the test ``torch.serialization`` makes before it would hand the file to
    ``torch.jit.load``), found from the zip's directory without reading any record."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as archive:
            return any((n.split('/')[-1] == 'constants.pkl' and n.count('/') <= 1)
                       or re.search(r'(^|/)code/', n) for n in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def load_torch_file(path: str, map_location: Any = 'cpu', what: str = 'checkpoint',
                    hint: str = _RESUME_HINT, name: Optional[str] = None) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    The one reader of torch checkpoints: ``tools/test.py``, ``load_from``, ``--resume``
    (through MMEngine's loaders, local and remote, see :mod:`vpt_seg.engine.checkpoint_io`),
    ``tools/serve.py`` and the pretrained-weights reader all call it. ``name``: where
    the file came from (a URL), for the messages.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnreadableCheckpointError: the file is truncated, not a torch file, holds
            Python objects that safe loading refuses, or is a TorchScript archive
            (OpenAI's CLIP ``.pt``: refused before torch sees it); the message names the
            file and never suggests turning safe loading off.
    """
    path = osp.expanduser(str(path))
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} not found: {path!r}')
    if is_torchscript(path):
        where = repr(path) if name is None else f'{name!r} (downloaded to {path!r})'
        raise UnreadableCheckpointError(
            f'{where} is a TorchScript archive, not a {what}: it holds code as well as '
            f'weights and is refused unread. {CLIP_FILE_HINT}')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip, pickle and EOF errors, each with its own type
        where = repr(path) if name is None else f'{name!r} (downloaded to {path!r})'
        raise UnreadableCheckpointError(
            f'{where} is not a readable {what}: {_load_error_reason(err, path)}. {hint}'
        ) from None


_read_once: Optional[Dict[Tuple[str, int, int], Mapping[str, Any]]] = None


@contextlib.contextmanager
def reading_once():
    """Within the block, :func:`read_checkpoint` reads each file once and then returns
    what it read (a new mapping of the same tensors, which every loader copies into its
    model and never changes). For serving: one pretrained file, read for the shared
    backbone and again for each task's frozen weights. A file changed on disk is read
    again; the tensors are freed when the block ends.
    """
    global _read_once
    outer, _read_once = _read_once, {} if _read_once is None else _read_once
    try:
        yield
    finally:
        _read_once = outer


def read_checkpoint(path: str) -> Mapping[str, Any]:
    """Read a weights file as published: a mapping of names to tensors or arrays.

    ``.safetensors`` with safetensors, ``.npz`` with numpy (JAX), anything else with
    :func:`load_torch_file` (``.pth``, ``.bin``, ``.pt``, MMSeg/MMEngine files). Inside
    :func:`reading_once`, a file is read once.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: The file cannot be read as weights.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'pretrained ViT weights not found: {path!r}')
    if _read_once is None:
        return _read_weights(path)
    stat = os.stat(path)
    key = (osp.realpath(path), stat.st_mtime_ns, stat.st_size)
    if key not in _read_once:
        _read_once[key] = _read_weights(path)
    return dict(_read_once[key])


def _read_weights(path: str) -> Mapping[str, Any]:
    if not path.endswith(('.safetensors', '.npz')):
        return load_torch_file(path, what='torch file', hint=(
            'not a ViT checkpoint: give weights as .safetensors, .npz (JAX), or a torch '
            'file (.pth/.bin/.pt).'))
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as err:  # each reader raises its own types for a foreign file
        reason = str(err).strip().split('\n')[0]
        raise ValueError(f'not a ViT checkpoint: cannot read {path!r} as weights '
                         '(.safetensors, .npz, or a torch file: .pth/.bin/.pt): '
                         f'{type(err).__name__}: {reason}') from err
