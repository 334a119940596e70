"""Portable task files: a task's tuned tensors as safetensors, no pickle.

A training checkpoint is a pickle of the tuned weights plus MMEngine's bookkeeping
(optimizer state, message hub, ~100 KiB) and needs its config beside it. A *task file*
(``tools/export_task.py CONFIG CKPT OUT.safetensors``) holds only the tuned tensors
(``model.state_dict()``: prompts, tuned biases, heads, the backbone's ``signature``) and,
in the safetensors header (strings only):

============================  ===========================================================
``format``                    ``'vpt-seg-task'``; ``format_version`` ``'1'``
``config``                    the whole config the task was trained with (MMEngine text)
``signature``                 the ViT's architecture (JSON list, see ``signature_fields``)
``pretrained``                file name of the frozen backbone's weights
``pretrained_path``           that file's path as the config named it
``dataset_meta``              class names and palette (JSON), when the run stored them
``backbone_prefix``           where the backbone's keys start (``'backbone.'``)
``frozen_sha256``             sha256 of the frozen weights as loaded (absent for ``Full``)
============================  ===========================================================

Loading needs only the backbone's pretrained file, looked for next to the task file
first, then at ``pretrained_path``, then at the backbone's ``init_cfg``; the first whose
weights match ``frozen_sha256`` is used, and another file of the same architecture is
refused.
``tools/test.py``, ``tools/serve.py``, ``load_from``, MMSeg's ``init_model`` and
``MMSegInferencer`` read task files directly: importing vpt_seg
registers :func:`load_from_safetensors` with MMEngine's ``CheckpointLoader`` for paths
ending in ``.safetensors``.
"""
import json
import os.path as osp
from collections import OrderedDict
from typing import Dict, Optional, Tuple, Union

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from .checkpoint import load_torch_file

__all__ = ['TASK_FORMAT', 'export_task', 'read_task_file', 'read_task_metadata',
           'load_from_safetensors', 'load_checkpoint_file']

TASK_FORMAT = 'vpt-seg-task'
FORMAT_VERSION = '1'


def _backbone_prefix(state_dict) -> str:
    sigs = [k[:-len('signature')] for k in state_dict if k.endswith('signature')]
    return min(sigs, key=len) if sigs else 'backbone.'


def export_task(config, checkpoint: str, out: str) -> Dict[str, str]:
    """Write a task checkpoint as a portable task file.

    Args:
        config: The task's config file (or :class:`~mmengine.config.Config`).
        checkpoint: Its training or task checkpoint (``.pth``).
        out: The task file to write (``.safetensors``).

    Returns:
        The metadata written.

    Raises:
        ValueError: ``out`` does not end in ``.safetensors``, or the checkpoint does not
            fit the config (see :func:`vpt_seg.multitask.load_task_model`).
    """
    from mmengine.config import Config
    from safetensors.torch import save_file

    from .multitask import load_task_model
    from .runner import resolve_config
    if not out.endswith('.safetensors'):
        raise ValueError(f'task file {out!r}: the name must end in .safetensors')
    cfg = Config.fromfile(resolve_config(config)) if isinstance(config, str) else config
    model = load_task_model(cfg, checkpoint)
    state = model.state_dict()
    tensors = OrderedDict((k, v.detach().cpu().contiguous()) for k, v in state.items())
    backbone = model.backbone
    pretrained = getattr(backbone, 'pretrained_file', None) or ''
    init_cfg = cfg.model.backbone.get('init_cfg') or {}
    signature = tensors.get(_backbone_prefix(tensors) + 'signature')
    from .models.prompted_vit import SIGNATURE_FIELDS
    meta = {
        'format': TASK_FORMAT,
        'format_version': FORMAT_VERSION,
        'config': cfg.pretty_text,
        'backbone_prefix': _backbone_prefix(tensors),
        'signature': json.dumps(signature.tolist() if signature is not None else None),
        'signature_fields': json.dumps(list(SIGNATURE_FIELDS)),
        'pretrained': osp.basename(pretrained),
        'pretrained_path': str(init_cfg.get('checkpoint') or pretrained),
    }
    if any(not p.requires_grad for p in backbone.parameters()):
        meta['frozen_sha256'] = backbone.frozen_digest()
    dataset_meta = getattr(model, 'dataset_meta', None)
    if dataset_meta:
        meta['dataset_meta'] = json.dumps(
            {k: list(map(list, v)) if k == 'palette' else list(v)
             for k, v in dataset_meta.items() if k in ('classes', 'palette') and v})
    save_file(tensors, out, metadata=meta)
    return meta


def read_task_metadata(path: str) -> Dict[str, str]:
    """The header of a ``.safetensors`` file (``{}`` if it has none).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a safetensors file.
    """
    from safetensors import safe_open
    if not osp.isfile(path):
        raise FileNotFoundError(f'task file not found: {path!r}')
    try:
        with safe_open(path, framework='pt') as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f'cannot read {path!r} as safetensors: {err}') from err


def read_task_file(path: str) -> Tuple['OrderedDict[str, torch.Tensor]', Dict[str, str]]:
    """Tensors and header of a task file, ready for ``load_state_dict``.

    The state dict's ``_metadata`` tells the backbone where to find its frozen weights
    (next to the task file, then as the config named it); a plain safetensors file of
    weights reads as its tensors.
    """
    from safetensors.torch import load_file
    meta = read_task_metadata(path)
    state = OrderedDict(load_file(path, device='cpu'))
    state._metadata = OrderedDict()
    if meta.get('format') == TASK_FORMAT:
        if meta.get('format_version') != FORMAT_VERSION:
            raise ValueError(f'{path}: task file format version {meta.get("format_version")}, '
                             f'this vpt-seg reads version {FORMAT_VERSION}')
        candidates = []
        if meta.get('pretrained'):
            candidates.append(osp.join(osp.dirname(osp.abspath(path)), meta['pretrained']))
        if meta.get('pretrained_path'):
            candidates.append(meta['pretrained_path'])
        prefix = meta.get('backbone_prefix', 'backbone.')
        state._metadata[prefix[:-1]] = {'pretrained': candidates}
        if meta.get('frozen_sha256'):
            state._metadata[prefix[:-1]]['frozen_sha256'] = meta['frozen_sha256']
    return state, meta


def _checkpoint_of(state, meta) -> dict:
    """The task file as MMEngine's loaders return a checkpoint."""
    info = {}
    if meta.get('dataset_meta'):
        info['dataset_meta'] = json.loads(meta['dataset_meta'])
    if meta.get('config'):
        info['cfg'] = meta['config']
    return {'state_dict': state, 'meta': info}


@CheckpointLoader.register_scheme(prefixes=r'(?=.*\.safetensors$)(?!\w+://)')
def load_from_safetensors(filename: str, map_location=None) -> dict:
    """MMEngine checkpoint loader for local ``.safetensors`` files (task files and plain
    weights): ``{'state_dict': ..., 'meta': {'dataset_meta', 'cfg'}}``."""
    state, meta = read_task_file(filename)
    if map_location not in (None, 'cpu'):
        device = map_location if not callable(map_location) else None
        if device is not None:
            for k in state:
                state[k] = state[k].to(device)
    return _checkpoint_of(state, meta)


def load_checkpoint_file(path: str) -> Tuple[dict, Union[dict, 'OrderedDict']]:
    """``(checkpoint, state_dict)`` of a task file (``.safetensors``) or a torch
    checkpoint (``.pth``, read with ``weights_only=True``); ``module.`` prefixes dropped,
    the state dict's ``_metadata`` kept."""
    if path.endswith('.safetensors'):
        ckpt = load_from_safetensors(path)
    else:
        ckpt = load_torch_file(path, what='task checkpoint')
    state = ckpt.get('state_dict', ckpt)
    metadata = getattr(state, '_metadata', None)
    state = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in state.items())
    if metadata is not None:
        state._metadata = metadata
    return ckpt, state


def task_config_text(path: str) -> Optional[str]:
    """The config stored in a task file, if any."""
    return read_task_metadata(path).get('config') if path.endswith('.safetensors') else None
