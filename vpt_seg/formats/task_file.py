"""Portable task files: a task's tuned tensors as safetensors, no pickle.

A training checkpoint is a pickle of the tuned weights plus MMEngine's bookkeeping
(optimizer state, message hub, ~100 KiB) and needs its config beside it. A *task file*
(``tools/export_task.py CONFIG CKPT OUT.safetensors``) holds only the tuned tensors
(``model.state_dict()``: prompts, tuned biases, heads, the backbone's ``signature``) and,
in the safetensors header (strings only):

============================  ===========================================================
``format``                    ``'vpt-seg-task'``; ``format_version`` ``'2'``
``config_json``               the config the task was trained with, as data: JSON of
                              ``cfg.to_dict()``, tuples tagged (:mod:`.config_data`), read
                              into the header schema (:mod:`.task_schema`)
``signature``                 the ViT's architecture (JSON list, see ``signature_fields``)
``pretrained``                file name of the frozen backbone's weights
``pretrained_path``           that file's path as the config named it
``dataset_meta``              class names and palette (JSON), when the run stored them
``backbone_prefix``           where the backbone's keys start (``'backbone.'``)
``frozen_sha256``             sha256 of the frozen weights as loaded (absent for ``Full``)
``frozen_modules``            other modules with frozen weights from a file (a CoOp text
                              tower): JSON ``{prefix: {pretrained, pretrained_path,
                              frozen_sha256}}``, each read as the backbone's keys are
============================  ===========================================================

A task file is data, and reading one never executes anything, whatever its header
holds: the config is JSON read into a schema of typed, bounded fields before anything
is built, and the sizes it declares are checked against the file's tensors first
(:func:`~vpt_seg.formats.task_schema.read_header_config`, ``check_header_shapes``);
``pretrained`` must be a bare file name and is looked for next to the task file only;
``pretrained_path`` must be a local path (a URL is never fetched); ``dataset_meta``
must parse and name as many classes as the head has; every error names the file and
the header key. Version-1 files (config stored as Python text, which is never run)
load when their config is named, and ``tools/export_task.py CONFIG OLD NEW`` rewrites
them as version 2.

This module is the file format: the header, its checks, and where the header says the
frozen weights are (:func:`pretrained_candidates`: next to the task file first, then
``pretrained_path``). Loading a task, and which candidate's weights are taken, is
:mod:`vpt_seg.formats.frozen_weights`' (the rules) and :mod:`vpt_seg.formats.loading`'s:
:func:`vpt_seg.formats.export.export_task` writes these files and
:func:`vpt_seg.formats.loading.load_task_model` reads them. ``tools/test.py``,
``tools/serve.py``, ``load_from``, MMSeg's ``init_model`` and ``MMSegInferencer`` read
task files directly: importing vpt_seg registers :func:`load_from_safetensors` with
MMEngine's ``CheckpointLoader`` for paths ending in ``.safetensors`` (:mod:`vpt_seg.patches`).
"""
import json
import logging
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from .config_data import config_as_text, config_to_json
from .task_schema import HeaderSchemaError, check_header_shapes, read_header_config, tensor_shapes

__all__ = ['TASK_FORMAT', 'FORMAT_VERSION', 'write_task_file', 'read_task_file',
           'read_task_metadata', 'read_task_config', 'pretrained_candidates',
           'check_class_count', 'check_task_tensors',
           'load_from_safetensors']

TASK_FORMAT = 'vpt-seg-task'
FORMAT_VERSION = '2'
#: Versions this vpt-seg reads; version 1 stored the config as Python text, which is
#: never run: its files load with their config named.
READ_VERSIONS = ('1', '2')


def _backbone_prefix(state_dict) -> str:
    sigs = [k[:-len('signature')] for k in state_dict if k.endswith('signature')]
    return min(sigs, key=len) if sigs else 'backbone.'


def write_task_file(out: str, model, cfg, pretrained: str, pretrained_path: str,
                    frozen_sha256: Optional[str] = None,
                    frozen_modules: Optional[Dict[str, Dict[str, str]]] = None
                    ) -> Dict[str, str]:
    """Write ``model``'s ``state_dict()`` and the header (see the module docstring) to
    ``out``; :func:`vpt_seg.formats.export.export_task` loads the task and calls this.

    Args:
        out: The task file (``.safetensors``).
        model: The loaded task model.
        cfg: Its config (stored as data, ``config_json``).
        pretrained: The file (or hub folder) its frozen weights were loaded from.
        pretrained_path: That file's path as the config names it.
        frozen_sha256: sha256 of the frozen weights (None: nothing is frozen).
        frozen_modules: ``{prefix: {'pretrained': file, 'pretrained_path': path,
            'frozen_sha256': hex}}`` of other modules whose frozen weights come from a file
            (a CoOp text tower); ``pretrained`` is stored as a bare file name.

    Returns:
        The metadata written.
    """
    from safetensors.torch import save_file
    state = model.state_dict()
    tensors = OrderedDict((k, v.detach().cpu().contiguous()) for k, v in state.items())
    prefix = _backbone_prefix(tensors)
    signature = tensors.get(prefix + 'signature')
    meta = {
        'format': TASK_FORMAT,
        'format_version': FORMAT_VERSION,
        'config_json': config_to_json(cfg),
        'backbone_prefix': prefix,
        'signature': json.dumps(signature.tolist() if signature is not None else None),
        'signature_fields': json.dumps(list(getattr(model.backbone, 'signature_fields', ()))),
        'pretrained': osp.basename(pretrained.rstrip('/\\')),
        'pretrained_path': str(pretrained_path or ''),
    }
    if frozen_sha256:
        meta['frozen_sha256'] = frozen_sha256
    if frozen_modules:
        meta['frozen_modules'] = json.dumps({
            prefix: dict(pretrained=osp.basename(str(v.get('pretrained') or '').rstrip('/\\')),
                         pretrained_path=str(v.get('pretrained_path') or ''),
                         **({'frozen_sha256': v['frozen_sha256']} if v.get('frozen_sha256')
                            else {}))
            for prefix, v in frozen_modules.items()})
    try:  # what a reader will make of it: refused now rather than when it is shared
        if 'model' in cfg:
            read_header_config(meta['config_json'])
    except HeaderSchemaError as err:
        raise ValueError(f'task file {out}: the config does not fit the task-file header '
                         f'schema (docs/task_files.md lists it): {err}') from None
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


def _note(message: str):
    print_log(message, logger='current', level=logging.WARNING)


def _header_error(path: str, key: str, what: str) -> ValueError:
    return ValueError(f"task file {path}: header key {key!r}: {what}")


def _check_version(path: str, meta: Dict[str, str]) -> str:
    version = meta.get('format_version')
    if version not in READ_VERSIONS:
        raise _header_error(path, 'format_version', f'{version!r}; this vpt-seg reads '
                            f'versions {", ".join(READ_VERSIONS)}')
    return version


def _is_bare_name(name: str) -> bool:
    return (bool(name) and name not in ('.', '..') and osp.basename(name) == name
            and '/' not in name and '\\' not in name and not osp.isabs(name)
            and '://' not in name and '\0' not in name)


def pretrained_candidates(path: str, meta: Dict[str, str]) -> List[str]:
    """Where a task file's header says its frozen weights are: ``pretrained`` next to the
    task file (a bare file name only), then ``pretrained_path`` (a local path only).
    A value that breaks the rule is skipped with a note naming the file and key."""
    candidates = []
    name = meta.get('pretrained')
    if name:
        if _is_bare_name(name):
            candidates.append(osp.join(osp.dirname(osp.abspath(path)), name))
        else:
            _note(f"task file {path}: header key 'pretrained' ({name!r}) is not a bare file "
                  'name (no folders, no "..", not absolute): skipped; the pretrained file is '
                  'looked for next to the task file only')
    local = meta.get('pretrained_path')
    if local:
        if '://' in local:
            _note(f"task file {path}: header key 'pretrained_path' ({local!r}) is a URL, "
                  'which is never fetched: skipped; download it yourself and put it next to '
                  'the task file, or name it (init_cfg.checkpoint / pretrained=...)')
        else:
            candidates.append(local)
    return candidates


def _dataset_meta(path: str, meta: Dict[str, str]) -> Optional[dict]:
    text = meta.get('dataset_meta')
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as err:
        raise _header_error(path, 'dataset_meta', f'not valid JSON ({err})') from None
    classes = value.get('classes') if isinstance(value, dict) else None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise _header_error(path, 'dataset_meta', 'expected {"classes": [names...], '
                            '"palette": [[r, g, b], ...]}')
    palette = value.get('palette')
    if palette is not None and (
            not isinstance(palette, list) or len(palette) != len(classes) or not all(
                isinstance(c, list) and len(c) == 3 and all(
                    isinstance(v, int) and 0 <= v <= 255 for v in c) for c in palette)):
        raise _header_error(path, 'dataset_meta', f'the palette must be {len(classes)} '
                            '[r, g, b] colours (0-255), one per class')
    return value


def head_num_classes(model_cfg) -> Optional[Tuple[str, int]]:
    """``(key, num_classes)`` of a segmentor's ``decode_head`` or a classifier's
    ``head`` config; None when it has neither."""
    for key in ('decode_head', 'head'):
        head = model_cfg.get(key) if model_cfg is not None else None
        if isinstance(head, dict) and isinstance(head.get('num_classes'), int):
            return f'model.{key}.num_classes', head['num_classes']
    return None


def check_class_count(path: str, dataset_meta: Optional[dict], model_cfg) -> None:
    """Raise if a task file's ``dataset_meta`` names another number of classes than
    its head has."""
    found = head_num_classes(model_cfg)
    if not dataset_meta or found is None:
        return
    key, num = found
    if len(dataset_meta['classes']) != num:
        raise _header_error(path, 'dataset_meta', f'{len(dataset_meta["classes"])} classes, '
                            f'but the head has {num} ({key}); the file is inconsistent')


def read_task_config(path: str, meta: Optional[Dict[str, str]] = None) -> Config:
    """The config stored in a task file, read as data into the header schema
    (:mod:`vpt_seg.formats.task_schema`): ``model`` (every argument typed),
    ``test_dataloader.dataset.pipeline`` and ``default_scope``; the training settings
    stored beside them are dropped unread. Nothing is executed, imported or fetched.

    The stored pretrained file (``init_cfg.checkpoint``, timm's ``checkpoint``) is
    header data like ``pretrained_path``: a URL there is dropped with a note (the frozen
    weights come from the pretrained file next to the task file).

    Raises:
        ValueError: a version-1 file (its config is Python text, which is never run):
            name the config, or re-export it; no config in the file; a config the schema
            does not admit (naming the header key and what the schema takes there).
    """
    meta = read_task_metadata(path) if meta is None else meta
    if meta.get('format') != TASK_FORMAT:
        raise ValueError(f'{path}: not a vpt-seg task file (no config stored); give its '
                         'config')
    version = _check_version(path, meta)
    if version == '1':
        raise ValueError(
            f'task file {path} is format version 1: its stored config is Python text, '
            'which vpt-seg no longer runs (a task file is data). Name the config it was '
            'trained with (tools/test.py CONFIG, NAME=CONFIG.py:FILE for serve.py, '
            'load_task_model(CONFIG, FILE)), or re-export it once as version 2: '
            f'python tools/export_task.py CONFIG {path} NEW.safetensors')
    if not meta.get('config_json'):
        raise _header_error(path, 'config_json', 'missing')
    notes: List[str] = []
    try:
        data = read_header_config(meta['config_json'], notes)
    except HeaderSchemaError as err:
        raise _header_error(path, 'config_json', f'{err}. A task file may only describe the '
                            'model in the header schema (docs/task_files.md); to load it '
                            'with another config, name that config') from None
    for note in notes:
        _note(f"task file {path}: header key 'config_json': {note}")
    _check_declared_shapes(path, meta, data['model'])
    cfg = Config(data)
    check_class_count(path, _dataset_meta(path, meta), cfg.get('model'))
    return cfg


def _check_declared_shapes(path: str, meta: Dict[str, str], model: dict):
    """The sizes the header's model declares against the file's tensor shapes and
    ``signature`` (:func:`~vpt_seg.formats.task_schema.check_header_shapes`), from the
    safetensors header and the signature tensor only, before anything is built."""
    from safetensors import safe_open
    prefix = meta.get('backbone_prefix', 'backbone.')
    if not isinstance(prefix, str) or not re.fullmatch(r'(\w+\.)+', prefix):
        raise _header_error(path, 'backbone_prefix', f'{prefix!r} is not a module prefix '
                            "such as 'backbone.'")
    try:
        fields = json.loads(meta.get('signature_fields') or '[]')
    except (ValueError, RecursionError):
        fields = []
    fields = fields if isinstance(fields, list) and all(
        isinstance(f, str) for f in fields) else []
    try:
        shapes = tensor_shapes(path)
        signature = None
        if prefix + 'signature' in shapes and len(shapes[prefix + 'signature']) == 1:
            with safe_open(path, framework='pt') as f:
                signature = f.get_tensor(prefix + 'signature').tolist()
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f'cannot read {path!r} as safetensors: {err}') from err
    try:
        check_header_shapes(model, shapes, signature, fields, prefix)
    except HeaderSchemaError as err:
        raise _header_error(path, 'config_json', str(err)) from None


#: Task-file tensors that hold integers: the architecture's ``signature`` and batch
#: norm's step count. Every other tensor is a weight and must be floating point.
INTEGER_TENSORS = ('signature', 'num_batches_tracked')


def check_task_tensors(path: str, state) -> None:
    """Raise ``ValueError`` naming the first tensor of a task file that is not what a
    task's tensors are: an integer or boolean weight (which loading would cast
    silently), a floating ``signature``, or NaN or infinite values (which would serve
    all-zero label maps). Such a file is damaged or was not written by
    ``tools/export_task.py``."""
    fix = ('the file is damaged or was not written by tools/export_task.py; export the '
           'task again from its training checkpoint')
    for key, t in state.items():
        integer = key.rsplit('.', 1)[-1] in INTEGER_TENSORS
        if integer != (not t.is_floating_point()) or t.dtype == torch.bool:
            want = 'integers' if integer else 'floating point (a weight)'
            raise ValueError(f'task file {path}: tensor {key!r} is {t.dtype}, it should be '
                             f'{want}; {fix}')
        if not integer and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f'task file {path}: tensor {key!r} holds {bad} NaN or infinite '
                             f'values (of {t.numel()}); {fix}')


def read_task_file(path: str) -> Tuple['OrderedDict[str, torch.Tensor]', Dict[str, str]]:
    """Tensors and header of a task file, ready for ``load_state_dict``.

    The state dict's ``_metadata`` tells the backbone where to find its frozen weights
    (:func:`pretrained_candidates`) and their sha256; a plain safetensors file of
    weights reads as its tensors. Reading never executes anything: the header is JSON
    strings, checked field by field.

    Raises:
        ValueError: a header field that is not what it should be, naming the file and
            the key; a tensor that is not a finite floating-point weight (or an integer
            ``signature``), naming it (:func:`check_task_tensors`).
    """
    from safetensors.torch import load_file
    meta = read_task_metadata(path)
    state = OrderedDict(load_file(path, device='cpu'))
    state._metadata = OrderedDict()
    if meta.get('format') == TASK_FORMAT:
        version = _check_version(path, meta)
        if version == '1':
            _note(f'task file {path} is format version 1: its stored config (Python text) '
                  'is not read; the config you name is used. Re-export it once: python '
                  f'tools/export_task.py CONFIG {path} NEW.safetensors')
        prefix = meta.get('backbone_prefix', 'backbone.')
        if not isinstance(prefix, str) or not re.fullmatch(r'(\w+\.)+', prefix):
            raise _header_error(path, 'backbone_prefix', f'{prefix!r} is not a module prefix '
                                "such as 'backbone.'")
        digest = meta.get('frozen_sha256')
        if digest and not re.fullmatch(r'[0-9a-f]{64}', digest):
            raise _header_error(path, 'frozen_sha256', f'{digest!r:.80} is not a sha256 '
                                'hex digest')
        _dataset_meta(path, meta)  # parses, or names the key
        check_task_tensors(path, state)
        state._metadata[prefix[:-1]] = {'pretrained': pretrained_candidates(path, meta)}
        backbone = _stored_backbone(meta)
        kind = _backbone_type(backbone)
        if kind:
            state._metadata[prefix[:-1]]['backbone_type'] = kind
        tuners = _tuner_options(backbone)
        if tuners is not None:
            state._metadata[prefix[:-1]]['tuners'] = tuners
        if digest:
            state._metadata[prefix[:-1]]['frozen_sha256'] = digest
        state._metadata.update(_frozen_modules(path, meta))
    return state, meta


def _frozen_modules(path: str, meta: Dict[str, str]) -> Dict[str, dict]:
    """``frozen_modules`` as state-dict metadata: ``{module: {'pretrained': candidates,
    'frozen_sha256': hex}}``, each field checked as the backbone's."""
    text = meta.get('frozen_modules')
    if not text:
        return {}
    key = 'frozen_modules'
    try:
        value = json.loads(text)
    except ValueError as err:
        raise _header_error(path, key, f'not valid JSON ({err})') from None
    if not isinstance(value, dict):
        raise _header_error(path, key, 'expected {"prefix.": {"pretrained": ..., '
                            '"pretrained_path": ..., "frozen_sha256": ...}}')
    out = {}
    for prefix, entry in value.items():
        if not isinstance(prefix, str) or not re.fullmatch(r'(\w+\.)+', prefix) \
                or not isinstance(entry, dict) \
                or not all(isinstance(v, str) for v in entry.values()):
            raise _header_error(path, key, f'{prefix!r:.80}: expected a module prefix such as '
                                "'head.text_encoder.' and string fields")
        digest = entry.get('frozen_sha256')
        if digest and not re.fullmatch(r'[0-9a-f]{64}', digest):
            raise _header_error(path, key, f'{prefix}: {digest!r:.80} is not a sha256 hex '
                                'digest')
        out[prefix[:-1]] = {'pretrained': pretrained_candidates(path, entry)}
        if digest:
            out[prefix[:-1]]['frozen_sha256'] = digest
    return out


def _stored_backbone(meta: Dict[str, str]) -> Optional[dict]:
    """``model.backbone`` of the stored config (a version-2 file) as its JSON reads, for
    :func:`_backbone_type` and :func:`_tuner_options`; None where it cannot be read (the
    header schema names what is wrong with it when the config is loaded)."""
    try:
        backbone = json.loads(meta.get('config_json') or '{}')['model']['backbone']
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return backbone if isinstance(backbone, dict) else None


def _backbone_type(backbone: Optional[dict]) -> Optional[str]:
    """``type`` of the stored backbone (:func:`_stored_backbone`), for messages only;
    None where there is none fit to show."""
    kind = (backbone or {}).get('type')
    return kind if isinstance(kind, str) and re.fullmatch(r'\w{1,80}', kind) else None


def _untag(obj):
    if isinstance(obj, dict) and set(obj) == {'__tuple__'}:
        return [_untag(v) for v in obj['__tuple__']]
    return obj


def _tuner_options(backbone: Optional[dict]) -> Optional[Dict[str, Optional[dict]]]:
    """The LoRA and adapter options of the stored backbone (:func:`_stored_backbone`:
    ``model.backbone.lora`` and ``.adapter``, validated as the backbone validates them),
    which the loader compares with the backbone's
    (:func:`vpt_seg.formats.frozen_weights.check_tuner_options`); None where it could not
    be read (the config's own checks then name the key), and a tuner whose options do not
    validate is left out."""
    from ..tuners.adapter import check_adapter_options
    from ..tuners.lora import check_lora_options
    if backbone is None:
        return None
    out = {}
    for part, check in (('lora', check_lora_options), ('adapter', check_adapter_options)):
        value = _untag(backbone.get(part))
        if isinstance(value, dict):
            value = {k: _untag(v) for k, v in value.items()}
        try:
            out[part] = None if value is None else {
                k: list(v) if isinstance(v, tuple) else v for k, v in check(value).items()}
        except (ValueError, TypeError):
            continue
    return out


def _checkpoint_of(path: str, state, meta) -> dict:
    """The task file as MMEngine's loaders return a checkpoint: ``meta['cfg']`` is the
    stored config rendered as literal assignments (version 2; a version-1 file's text is
    never handed on), for ``MMSegInferencer(model=None, weights=FILE)``."""
    info = {}
    if meta.get('format') != TASK_FORMAT:
        return {'state_dict': state, 'meta': info}
    if meta.get('dataset_meta'):
        info['dataset_meta'] = _dataset_meta(path, meta)
    if meta.get('format_version') == FORMAT_VERSION:
        info['cfg'] = config_as_text(read_task_config(path, meta))
    return {'state_dict': state, 'meta': info}


def load_from_safetensors(filename: str, map_location=None) -> dict:
    """MMEngine checkpoint loader for local ``.safetensors`` files (task files and plain
    weights): ``{'state_dict': ..., 'meta': {'dataset_meta', 'cfg'}}``."""
    state, meta = read_task_file(filename)
    ckpt = _checkpoint_of(filename, state, meta)
    if map_location not in (None, 'cpu'):
        device = map_location if not callable(map_location) else None
        if device is not None:
            for k in state:
                state[k] = state[k].to(device)
    return ckpt
