"""Loading a task: the one place that decides what a task checkpoint or task file holds,
where its frozen weights come from, and whether they match.

A *task checkpoint* (``.pth``) or *task file* (``.safetensors``, :mod:`vpt_seg.formats.task_file`)
holds what was tuned (prompts, tuned biases, heads) and the backbone's ``signature``; the
frozen weights come from the backbone's pretrained file. This module owns every rule of
that contract, for every prompted backbone:

* **What a state dict records** (:func:`record_pretrained`, the backbone's state-dict
  post-hook): frozen weights left out (unless ``save_frozen``), the pretrained file
  (as configured and absolute) and the frozen weights' sha256 in the metadata.
* **Whether a checkpoint fits** (:func:`prepare_state_dict`, the backbone's load
  pre-hook): the ``signature`` names the architecture (:func:`check_signature`), every
  tensor must have this backbone's shape (:meth:`~vpt_seg.models.frozen.FrozenBackboneMixin.
  check_checkpoint_fits`, which a backbone may extend), and a checkpoint with some but
  not all frozen weights is refused, naming them.
* **Where the frozen weights come from** (:func:`frozen_candidates`): the files the
  checkpoint records (the training run's, or a task file's neighbour and
  ``pretrained_path``), then the backbone's configured file; only the configured one
  when the user named it (``prefer_configured``: ``--cfg-options``, ``load_task_model(...,
  pretrained=)``).
* **Whether they match** (:func:`complete_frozen`): a candidate that is missing,
  unreadable, another ViT, or holds other weights than the recorded sha256 is skipped
  with a note and the next one tried.
* **Reading and checking a whole task** (:func:`load_checkpoint_file`,
  :func:`check_task_state_dict`, :func:`load_task_model`, :func:`export_task`).

Backbones only declare (see :class:`~vpt_seg.models.frozen.FrozenBackboneMixin`): what is
frozen (``requires_grad``), ``signature``/``signature_fields``, ``pretrained_option``,
``configured_pretrained()``, ``load_pretrained(path)``. The trigger stays the load
pre-hook because every loader (MMEngine's runner, MMSeg's ``init_model`` and
``MMSegInferencer``, ``load_from``) ends in ``model.load_state_dict``; the hook is a
single call into :func:`prepare_state_dict`.
"""
import copy
import hashlib
import logging
import os.path as osp
from collections import OrderedDict
from typing import Any, Collection, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from torch import nn

from ..tuners.tuning import frozen_state_keys
from .outputs import OutputError, atomic_write, check_output
from .task_file import (
    check_class_count,
    load_from_safetensors,
    pretrained_option_of,
    read_task_config,
    write_task_file,
)
from .weights import describe_state_dict, load_torch_file

__all__ = ['record_pretrained', 'check_signature', 'tuner_options', 'check_tuner_options',
           'check_shapes', 'prepare_state_dict',
           'frozen_candidates', 'complete_frozen', 'frozen_digest', 'load_checkpoint_file',
           'check_task_state_dict', 'check_task_checkpoint', 'configured_in_cfg',
           'load_task_model', 'export_inputs', 'export_task']


def _listing(keys: Sequence[str], limit: int = 12) -> str:
    keys = list(keys)
    return ', '.join(keys[:limit]) + (f' ... ({len(keys)} in all)' if len(keys) > limit else '')


def _short(option: str) -> str:
    """``'model.backbone.init_cfg.checkpoint'`` -> ``'init_cfg.checkpoint'``."""
    return option[len('model.backbone.'):] if option.startswith('model.backbone.') else option


# ----------------------------------------------------------- the frozen weights
def frozen_digest(backbone: nn.Module) -> str:
    """sha256 of a backbone's frozen weights (names and values), as loaded: what a task
    file records, so another pretrained file of the same architecture is refused.
    Cached until a frozen tensor changes (every save asks)."""
    params = dict(backbone.named_parameters())
    names = sorted(frozen_state_keys(backbone))
    key = tuple((params[n].data_ptr(), params[n]._version) for n in names)
    cached = getattr(backbone, '_digest', (None, None))
    if cached[0] == key:
        return cached[1]
    h = hashlib.sha256()
    for name in names:
        t = params[name].detach().cpu().contiguous()
        h.update(f'{name}:{tuple(t.shape)}:{t.dtype};'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    backbone._digest = (key, h.hexdigest())
    return backbone._digest[1]


def record_pretrained(backbone: nn.Module, state_dict, prefix: str, local_metadata: dict):
    """What a backbone's ``state_dict()`` holds (its post-hook): the pretrained file in
    ``local_metadata['pretrained']`` (as configured, relative to the run's folder, and
    absolute), the frozen weights' sha256 once they came from a file, and no frozen
    weights unless ``save_frozen``."""
    local_metadata['backbone_type'] = type(backbone).__name__  # named when refused
    local_metadata['tuners'] = tuner_options(backbone)  # compared when loaded, resumed
    path = backbone.pretrained_file
    if path:
        local_metadata['pretrained'] = [path] if '://' in path else list(
            dict.fromkeys([path, osp.abspath(path)]))
    if backbone.save_frozen:
        return
    keys = frozen_state_keys(backbone)
    if keys and path and backbone._frozen_loaded:  # what a later load checks against
        local_metadata['frozen_sha256'] = frozen_digest(backbone)
    for key in keys:
        state_dict.pop(prefix + key, None)


def check_signature(backbone: nn.Module, theirs: Optional[torch.Tensor], where: str = '',
                    theirs_type: Optional[str] = None):
    """Raise ``ValueError`` if a checkpoint's ``signature`` (None: it has none, as
    pretrained files and MMSeg checkpoints) records another ViT than ``backbone``'s,
    naming the fields that differ (``theirs_type``: the backbone class the checkpoint
    records, named when it is another kind)."""
    ours = backbone.signature
    if theirs is None or (theirs.shape == ours.shape and torch.equal(theirs.cpu(), ours.cpu())):
        return
    fields = backbone.signature_fields
    if theirs.shape != ours.shape:
        kind = f' ({theirs_type})' if isinstance(theirs_type, str) and theirs_type else ''
        diff = (f'{theirs.numel()} signature fields in the checkpoint, {ours.numel()} '
                f'here ({type(backbone).__name__}: {", ".join(fields)}): a checkpoint of '
                f'another kind of backbone{kind}')
    else:
        diff = ', '.join(f'{f} {int(a)} in the checkpoint vs {int(b)} here'
                         for f, a, b in zip(fields, theirs.tolist(), ours.tolist()) if a != b)
    raise ValueError(f'{where}checkpoint was made for another ViT than this backbone '
                     f'({diff}); use the config it was trained with.')


def tuner_options(backbone: nn.Module) -> Dict[str, Optional[dict]]:
    """The options of a backbone's tuners as checkpoints and task files record them:
    ``{'lora': dict(rank, alpha, targets, dropout) or None, 'adapter': dict(width,
    scale, dropout) or None}`` (targets a list, numbers as validated)."""
    out = {}
    for part in ('lora', 'adapter'):
        cfg = getattr(backbone, f'{part}_cfg', None)
        out[part] = None if cfg is None else {
            k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    return out


def _option_value(value) -> str:
    """A recorded option as ``--cfg-options`` takes it."""
    if isinstance(value, (list, tuple)):
        return '"[' + ','.join(map(str, value)) + ']"'
    return repr(value)


def check_tuner_options(backbone: nn.Module, recorded: Optional[Mapping], where: str = ''):
    """Raise ``ValueError`` if a checkpoint records other tuner options (LoRA's rank,
    alpha, targets and dropout; the adapter's width, scale and dropout) than
    ``backbone`` has, naming both values and the ``--cfg-options`` that applies the
    recorded ones. ``recorded`` (the state dict's ``tuners`` metadata, or what a task
    file's stored config says) may lack a tuner or be None (files written before the
    options were recorded): only what is recorded is compared; a tuner the checkpoint
    has and the backbone has not (or the reverse) is :func:`check_tuner_keys`'s to
    refuse, by its tensors."""
    if not isinstance(recorded, Mapping):
        return
    diffs, fixes = [], []
    for part in ('lora', 'adapter'):
        theirs, ours = recorded.get(part), tuner_options(backbone).get(part)
        if not isinstance(theirs, Mapping) or ours is None:
            continue
        for key, value in ours.items():
            if key not in theirs:
                continue
            other = theirs[key]
            same = (sorted(other) == sorted(value) if isinstance(value, list)
                    and isinstance(other, (list, tuple)) else other == value)
            if not same:
                diffs.append(f'{part}.{key} {_option_value(other)} in the checkpoint, '
                             f'{_option_value(value)} here')
                fixes.append(f'model.backbone.{part}.{key}={_option_value(other)}')
    if diffs:
        raise ValueError(
            f'{where}checkpoint was made with other tuner options than this backbone '
            f'has ({"; ".join(diffs)}); its tuned weights mean something else with these. '
            'Use the config it was trained with, or apply the recorded options: '
            f'--cfg-options {" ".join(fixes)}')


def check_shapes(backbone: nn.Module, state_dict, prefix: str, exempt: Collection[str] = ()):
    """Raise ``ValueError`` naming every tensor of ``state_dict`` whose shape is not the
    backbone's (``exempt``: keys, without ``prefix``, whose shape may differ)."""
    own = {prefix + k: v for k, v in backbone.named_parameters()}
    own.update({prefix + k: v for k, v in backbone.named_buffers()})
    skip = {prefix + k for k in exempt}
    mismatched = [
        f'{k}: {tuple(state_dict[k].shape)} in the checkpoint, {tuple(v.shape)} here'
        for k, v in own.items()
        if k in state_dict and k not in skip and state_dict[k].shape != v.shape]
    if mismatched:
        raise ValueError('checkpoint does not fit this backbone (was it made for another '
                         'ViT or prompt setting?):\n  ' + '\n  '.join(mismatched))


def check_tuner_keys(backbone: nn.Module, state_dict, prefix: str, task: bool = False):
    """Refuse LoRA or adapter tensors that do not fit the backbone's ``lora`` and
    ``adapter`` options, naming the option: tensors it has no place for (a non-strict
    load, as MMEngine's ``load_from`` and MMSeg's ``init_model``, would drop them
    silently), tensors of another shape (another rank or width), and, in a vpt-seg
    checkpoint (``task``: it has a ``signature``), its own tensors missing (they would
    stay at their initial values)."""
    own = dict(backbone.named_parameters())
    for part in ('lora', 'adapter'):
        theirs = {k[len(prefix):]: v for k, v in state_dict.items()
                  if k.startswith(f'{prefix}{part}.')}
        mine = {k: p for k, p in own.items() if k.startswith(f'{part}.')}
        cfg = getattr(backbone, f'{part}_cfg', None)
        here = f'this backbone has {part}={cfg}'
        fix = (f'set model.backbone.{part} as the task was trained (the task file\'s own '
               'config has it)')
        extra = [k for k in theirs if k not in mine]
        if extra:
            here += '' if cfg is None else ', without these layers'
            raise ValueError(f'checkpoint holds {part} weights ({_listing(extra)}) but '
                             f'{here}: {fix}')
        other = [f'{k}: {tuple(v.shape)} in the checkpoint, {tuple(mine[k].shape)} here'
                 for k, v in theirs.items() if v.shape != mine[k].shape]
        if other:
            size = 'rank' if part == 'lora' else 'width'
            raise ValueError(f'checkpoint holds {part} weights of other shapes than {here} '
                             f'(another {size}?): {_listing(other, 4)}; {fix}')
        missing = [k for k in mine if k not in theirs]
        if missing and (theirs or task) and not backbone._loading_pretrained:
            raise ValueError(f'checkpoint lacks {part} weights {here} ({_listing(missing)}): '
                             f'{fix}, or {part}=None if it had none')


def _partial_frozen_message(state_dict, prefix, frozen, present) -> str:
    """Why a checkpoint with some, not all, frozen weights is refused, and what it
    looks like: a task file with leaked frozen keys, or a full one missing some."""
    tuned = [k for k in state_dict if k.startswith(prefix) and k not in frozen
             and not k.endswith('signature')]
    if len(present) <= len(frozen) // 2:
        return (f'checkpoint looks like a task file ({len(tuned)} tuned tensors, '
                f'{len(frozen) - len(present)} of the {len(frozen)} frozen backbone '
                'weights absent) but holds frozen weights that should not be there: '
                f'{_listing(present)}. A task file takes the frozen backbone from the '
                'pretrained file; remove these keys (or re-save it with '
                'save_frozen=False), or save a full checkpoint with save_frozen=True.')
    missing = [k for k in frozen if k not in state_dict]
    return (f'checkpoint looks like a full checkpoint ({len(present)} of the '
            f'{len(frozen)} frozen backbone weights) but lacks {_listing(missing)}; '
            'is it truncated or made for another backbone?')


def prepare_state_dict(backbone: nn.Module, state_dict, prefix: str, local_metadata: dict):
    """Before a backbone loads ``state_dict`` (its load pre-hook): refuse a checkpoint
    of another backbone, and complete a task checkpoint (tuned weights only) with the
    frozen weights from the pretrained file (:func:`complete_frozen`); a full checkpoint
    (or the pretrained file itself) loads as it is.

    Raises:
        ValueError: another ViT (signature, shapes), some but not all frozen weights, or
            no candidate holds the recorded frozen weights.
        FileNotFoundError: no candidate for the frozen weights exists.
    """
    try:
        _prepare_state_dict(backbone, state_dict, prefix, local_metadata)
    finally:
        backbone._checkpoint_source = None  # named by check_task_checkpoint, this load only


def _prepare_state_dict(backbone: nn.Module, state_dict, prefix: str, local_metadata: dict):
    sig_key = prefix + 'signature'
    check_signature(backbone, state_dict.get(sig_key),
                    theirs_type=local_metadata.get('backbone_type'))
    task = sig_key in state_dict
    if not task:  # a pretrained file or an MMSeg checkpoint
        state_dict[sig_key] = backbone.signature.clone()
    check_tuner_keys(backbone, state_dict, prefix, task)
    check_tuner_options(backbone, local_metadata.get('tuners'))
    if task and not backbone._loading_pretrained:
        # MMSeg's init_model loads non-strictly: tuned weights missing from a vpt-seg
        # checkpoint would stay at their random initialisation (tools/test.py refuses).
        frozen_keys = set(frozen_state_keys(backbone))
        check_task_state_dict(
            [prefix + k for k, p in backbone.named_parameters() if k not in frozen_keys],
            state_dict, getattr(backbone, '_checkpoint_source', None) or 'checkpoint')
    backbone.check_checkpoint_fits(state_dict, prefix)
    frozen = [prefix + k for k in frozen_state_keys(backbone)]
    present = [k for k in frozen if k in state_dict]
    if 0 < len(present) < len(frozen) and not backbone._loading_pretrained:
        raise ValueError(_partial_frozen_message(state_dict, prefix, frozen, present))
    if present and not backbone._loading_pretrained and backbone._frozen_loaded:
        _replacing_frozen(backbone, state_dict, prefix)
    if not frozen or present or backbone._loading_pretrained:
        return  # a full checkpoint (or the pretrained file itself)
    digest = local_metadata.get('frozen_sha256')
    if not backbone._frozen_loaded:
        complete_frozen(backbone, local_metadata)
    elif digest and frozen_digest(backbone) != digest:
        # Loaded already (training's init_weights: load_from, --resume), from a file
        # with other weights than the checkpoint was trained on.
        if backbone.prefer_configured:
            raise ValueError(_other_weights_message(backbone, backbone.pretrained_file,
                                                    local_metadata))
        print_log(f'{backbone.pretrained_file} ({_short(backbone.pretrained_option)}) holds '
                  'other frozen weights than this checkpoint was trained on (sha256 '
                  'differs); loading them from the file the checkpoint records',
                  logger='current', level=logging.WARNING)
        complete_frozen(backbone, local_metadata)
    params = dict(backbone.named_parameters(prefix=prefix[:-1] if prefix else ''))
    for key in frozen:
        state_dict[key] = params[key].detach()


def _replacing_frozen(backbone: nn.Module, state_dict, prefix: str):
    """A full checkpoint (a folded one, ``save_frozen=True``) loaded over frozen weights
    that came from a file already (training: ``init_weights``, then ``load_from``): if
    its frozen weights differ, say so in one line and make the checkpoint the file the
    run's checkpoints record (:func:`record_pretrained`: its path and the sha256 of the
    weights now loaded), so they load with ``tools/test.py``; where the file is not
    known, the backbone saves its frozen weights instead (``save_frozen``)."""
    params = dict(backbone.named_parameters())
    keys = frozen_state_keys(backbone)
    if all(torch.equal(state_dict[prefix + k].detach().cpu(), params[k].detach().cpu())
           for k in keys if prefix + k in state_dict):
        return
    source = getattr(backbone, '_checkpoint_source', None)
    before = backbone.pretrained_file
    if source and '://' not in source and osp.isfile(source):
        backbone.pretrained_file = source
        after = (f'this run\'s checkpoints record {source} as where their frozen weights '
                 'come from')
    else:
        backbone.save_frozen = True
        after = 'this run\'s checkpoints will hold the frozen weights (save_frozen=True)'
    if before:  # (weights of a random initialisation are replaced without a word)
        print_log(f'{source or "the checkpoint"} is a full checkpoint whose frozen backbone '
                  f'weights differ from {before} ({_short(backbone.pretrained_option)}): '
                  f'they replace them; {after}', logger='current', level=logging.WARNING)


def _recorded(local_metadata: dict) -> List[str]:
    recorded = local_metadata.get('pretrained')
    return [recorded] if isinstance(recorded, str) else list(recorded or [])


def frozen_candidates(backbone: nn.Module, local_metadata: dict) -> List[str]:
    """Where a task checkpoint's frozen weights may be, in order: the files it records
    (``local_metadata['pretrained']``: the training run's file, or a task file's
    neighbour and ``pretrained_path``), then the backbone's configured file. The
    recorded files go first because they are the ones the task was trained on, while a
    config's path may name another file where the task is loaded (MMSeg's
    ``MMSegInferencer`` keeps ``init_cfg``). With ``prefer_configured`` (the user named
    the file), the configured file is the only candidate."""
    own = backbone.configured_pretrained()
    if backbone.prefer_configured and own:
        return [own]
    return list(dict.fromkeys(p for p in _recorded(local_metadata) + [own] if p))


def _other_weights_message(backbone, path: str, local_metadata: dict) -> str:
    recorded = _recorded(local_metadata)
    return (f'{path} (named by {_short(backbone.pretrained_option)}) holds other frozen '
            'weights than this checkpoint was trained on (same architecture, other values: '
            f'its sha256 differs from the recorded {local_metadata["frozen_sha256"][:16]}'
            '...). The file you name is used as given, so it must be the pretrained file '
            'the task was trained with' + (f' (the checkpoint records {recorded})'
                                           if recorded else '') + '.')


def _other_family(backbone: nn.Module, path: str) -> Optional[str]:
    """Why a pretrained candidate is of another family than ``backbone`` (a timm hub
    folder for an MMSeg-layout ViT, an MMSeg-layout file for timm's), for messages;
    None where it is not (or cannot tell)."""
    ours = type(backbone).__name__
    timm_backbone = ours == 'PromptedTimmViT'
    try:
        if osp.isdir(path):
            import json
            with open(osp.join(path, 'config.json')) as f:
                arch = json.load(f).get('architecture')
            if timm_backbone:
                return None
            return (f"a timm hub folder ({arch or 'no architecture named'}), weights for "
                    f"PromptedTimmViT (model.backbone.type='PromptedTimmViT'); this backbone "
                    f'is {ours}, the MMSeg ViT layout: another family')
        if timm_backbone and osp.isfile(path):
            from .weights import detect_format, read_checkpoint
            obj = read_checkpoint(path)
            fmt, _ = detect_format(obj['state_dict'] if isinstance(
                obj.get('state_dict'), Mapping) else obj)
            if fmt == 'mmseg':
                return (f'an MMSeg-layout ViT file, weights for PromptedVisionTransformer; '
                        f'this backbone is {ours} ({backbone.model_name}, timm): another '
                        'family')
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None
    return None


def complete_frozen(backbone: nn.Module, local_metadata: dict):
    """Load the frozen weights a task checkpoint leaves out, from the first of
    :func:`frozen_candidates` that exists, is readable, is this ViT and, when the
    checkpoint records their sha256 (``local_metadata['frozen_sha256']``), holds
    exactly those weights; every candidate skipped is named in a note.

    Raises:
        FileNotFoundError: no candidate exists.
        ValueError: no pretrained file is known, or none holds the recorded weights (or
            none is readable); a file the user named holds other weights.
    """
    option = backbone.pretrained_option
    own = backbone.configured_pretrained()
    candidates = frozen_candidates(backbone, local_metadata)
    if not candidates:
        raise ValueError(
            'this checkpoint holds only tuned parameters (a task checkpoint); the frozen '
            'backbone must come from its pretrained file, but neither the checkpoint nor '
            f'the config ({option}) names one (saved before checkpoints recorded it?); set '
            f'--cfg-options {option}=/path/to/weights, load it with '
            'vpt_seg.load_task_model(config, ckpt, pretrained=...), or export it as a task '
            'file (tools/export_task.py).')
    digest = local_metadata.get('frozen_sha256')  # task files and checkpoints record it
    skipped = []
    for found in candidates:
        if '://' not in found and not osp.exists(found):
            skipped.append(f'{found} (missing)')
            continue
        print_log(f'Task checkpoint: loading the frozen backbone from {found}' + (
            f' (the file it was trained with; the config names {own})'
            if own and found != own else ''), logger='current')
        backbone._loading_pretrained = True
        try:
            backbone.load_pretrained(found)
        except (OSError, ValueError, RuntimeError) as err:  # unreadable, not this ViT
            backbone._frozen_loaded = False
            reason = _other_family(backbone, found) or str(err).strip().split('\n')[0]
            skipped.append(f'{found} (cannot be used: {reason})')
            print_log(f'{found}: skipped, {reason}', logger='current', level=logging.WARNING)
            continue
        finally:
            backbone._loading_pretrained = False
        backbone._frozen_loaded = True
        if digest is None or frozen_digest(backbone) == digest:
            return
        backbone._frozen_loaded = False
        if backbone.prefer_configured:
            raise ValueError(_other_weights_message(backbone, found, local_metadata))
        skipped.append(f'{found} (other weights: sha256 differs)')
        print_log(f'{found}: skipped, not the frozen weights this task was trained on '
                  '(sha256 differs)', logger='current', level=logging.WARNING)
    if all(s.endswith('(missing)') for s in skipped):
        raise FileNotFoundError(
            'this checkpoint holds only tuned parameters (a task checkpoint); its frozen '
            f'backbone comes from the pretrained file, looked for at {candidates} (from '
            f'the checkpoint, then {option}), none exists. Put the file at one of those '
            'paths (a .safetensors task file: next to it), or name it: --cfg-options '
            f'{option}=/path/to/weights for the tools, vpt_seg.load_task_model(config, '
            "ckpt, pretrained=...) in Python (MMSeg's init_model drops init_cfg).")
    other = any(s.endswith('(other weights: sha256 differs)') for s in skipped)
    what = (f'the checkpoint records their sha256 {digest[:16]}...; ' + (
        'same architecture, other values' if other else 'none of them can be used here')
        if digest else 'none is readable')
    raise ValueError(
        'none of the candidates holds the frozen weights this task was trained on '
        f'({what}): ' + '; '.join(skipped) + '. Put the pretrained file the task was made '
        f'with next to it (a task file), or name it with --cfg-options {option}=...')


# ------------------------------------------------------------ a whole task
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


def check_task_state_dict(expected: Collection[str], state_dict: Mapping[str, Any],
                          path: str = 'checkpoint'):
    """Raise if a checkpoint lacks tuned weights a model needs (its heads, its prompts).

    Args:
        expected: The keys of the model's ``state_dict()`` (frozen weights are not in
            it, they come from the pretrained file).
        state_dict: The checkpoint's (``module.`` prefixes already removed).
        path: The file, for the message.

    Raises:
        ValueError: Naming the missing parts (``decode_head``: 12 tensors, ...) and what
            the file looks like instead.
    """
    missing = [k for k in expected if k not in state_dict and not k.endswith('signature')]
    if not missing:
        return
    parts: Dict[str, int] = {}
    for key in missing:
        part = key.split('.')[0]
        if part == 'backbone':
            part = 'backbone.' + key.split('.')[1]
        parts[part] = parts.get(part, 0) + 1
    tuners = [p.split('.')[1] for p in parts if p in ('backbone.lora', 'backbone.adapter')]
    hint = ''.join(f' The config sets model.backbone.{t}, but the checkpoint lacks these '
                   f'{t} weights: set model.backbone.{t} as the task was trained (the task '
                   f"file's own config has it), or {t}=None if it had none." for t in tuners)
    raise ValueError(
        f'{path} lacks tuned weights this model needs: '
        + ', '.join(f'{p} ({n} tensors)' for p, n in parts.items())
        + f', e.g. {missing[0]}.{hint} The file looks like {describe_state_dict(state_dict)}. '
        'Give the task checkpoint this config wrote (work_dirs/<config>/iter_*.pth).')


def check_task_checkpoint(model: nn.Module, state_dict: Mapping[str, Any], path: str,
                          expected: Optional[Collection[str]] = None,
                          metadata: Optional[Mapping] = None):
    """Before a model loads a checkpoint: refuse one made for another backbone (by its
    ``signature``, naming the backbone kind it records), then one that lacks tuned
    weights the model needs (:func:`check_task_state_dict`). The kind goes first: a
    DINOv2 task on an MMSeg-layout config differs in its heads too, but the backbone is
    what to fix. The backbone is told the file's name (``_checkpoint_source``): a full
    checkpoint that replaces its frozen weights is then recorded as their source.

    Args:
        model: The model about to load it (``model.backbone``: a prompted backbone).
        state_dict: The checkpoint's (``module.`` prefixes already removed).
        path: The file, for messages.
        expected: ``model.state_dict()``'s keys, if known already.
        metadata: The state dict's ``_metadata`` (default: ``state_dict._metadata``).
    """
    backbone = getattr(model, 'backbone', None)
    if hasattr(backbone, 'signature_fields'):
        backbone._checkpoint_source = path  # named if it replaces frozen weights
    signature = state_dict.get('backbone.signature')
    if signature is not None and getattr(backbone, 'signature_fields', None):
        metadata = getattr(state_dict, '_metadata', None) if metadata is None else metadata
        recorded = (metadata or {}).get('backbone') or {}
        check_signature(backbone, signature, f'{path}: ',
                        theirs_type=recorded.get('backbone_type'))
    check_task_state_dict(list(model.state_dict()) if expected is None else expected,
                          state_dict, path)


def configured_in_cfg(backbone_cfg) -> Optional[str]:
    """The pretrained file a ``model.backbone`` config names, at its backbone's
    ``pretrained_option`` (``init_cfg.checkpoint`` for MMSeg's layout, ``checkpoint``
    for timm's); None: none."""
    keys = pretrained_option_of(backbone_cfg).split('.')[2:]
    value = backbone_cfg
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value if isinstance(value, str) else None


def _name_pretrained(backbone_cfg, path: str):
    """Set the backbone config's pretrained file to ``path``."""
    keys = pretrained_option_of(backbone_cfg).split('.')[2:]
    if keys == ['init_cfg', 'checkpoint']:
        backbone_cfg['init_cfg'] = dict(type='Pretrained', checkpoint=path)
        return
    target = backbone_cfg
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = path


def load_task_model(config, checkpoint: str, pretrained: Optional[str] = None) -> nn.Module:
    """Build a task model from its config and load its task checkpoint.

    Args:
        config: Config file or :class:`~mmengine.config.Config` of the task; None: the
            config stored in a task file (``.safetensors``, see :mod:`vpt_seg.formats.task_file`).
        checkpoint: Its task checkpoint (tuned weights; full checkpoints load too) or
            task file.
        pretrained: Take the frozen backbone from this file instead of the config's
            (serving: the shared backbone's file); it is the caller's word, used instead
            of the file the checkpoint records, and must hold the frozen weights the
            checkpoint records (sha256).

    Returns:
        The model in eval mode; ``model.dataset_meta`` holds the classes (and palette)
        stored in the checkpoint by MMEngine's runner, when there are any.

    Raises:
        ValueError: the checkpoint does not fit the config (missing or unexpected
            tuned weights, other shapes, another ViT).
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    if config is None:
        if not str(checkpoint).endswith('.safetensors'):
            raise ValueError(f'{checkpoint}: no config given and none stored in the file '
                             '(only task files made by tools/export_task.py carry one)')
        cfg = read_task_config(checkpoint)  # data: nothing is executed
    else:
        cfg = Config.fromfile(config) if isinstance(config, str) else config
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model_cfg = copy.deepcopy(cfg.model)
    if pretrained is not None:
        own = configured_in_cfg(model_cfg.backbone)
        if own and osp.abspath(own) != osp.abspath(pretrained):
            print_log(f'{checkpoint}: frozen weights from {pretrained} (the config names '
                      f'{own})', logger='current')
        _name_pretrained(model_cfg.backbone, pretrained)
    model = MODELS.build(model_cfg)
    if pretrained is not None and hasattr(model.backbone, 'prefer_configured'):
        model.backbone.prefer_configured = True  # the caller's word
    ckpt, state = load_checkpoint_file(checkpoint)
    check_task_checkpoint(model, state, checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        where = getattr(cfg, 'filename', None) or (
            'the config stored in it' if config is None else 'the config')
        raise ValueError(f'{checkpoint} does not fit {where}: {err}') from None
    meta = ckpt.get('meta') or {}
    if meta.get('dataset_meta'):  # class names (and palette) the runner stored
        if str(checkpoint).endswith('.safetensors'):
            check_class_count(checkpoint, meta['dataset_meta'], model_cfg)
        model.dataset_meta = meta['dataset_meta']
    names = getattr(getattr(model, 'head', None), 'class_names', None)
    if names is not None:  # a text head classifies what it embeds (maybe a new list)
        stored = list((getattr(model, 'dataset_meta', None) or {}).get('classes') or [])
        if [str(c).replace('_', ' ').strip() for c in stored] != list(names):
            model.dataset_meta = dict(classes=tuple(names))
    return model.eval()


def export_inputs(cfg, checkpoint: str, model: Optional[nn.Module] = None
                  ) -> Dict[str, Optional[str]]:
    """What an export reads, ``{what: path}``, for
    :func:`~vpt_seg.formats.outputs.check_output`: the config's file, the checkpoint,
    the pretrained file the config names and, once ``model`` is loaded, the file its
    frozen weights came from."""
    backbone_cfg = (cfg.get('model') or {}).get('backbone') if cfg is not None else None
    inputs = {'the config': getattr(cfg, 'filename', None) if cfg is not None else None,
              'the checkpoint': checkpoint,
              'the pretrained file the config names': (
                  configured_in_cfg(backbone_cfg) if isinstance(backbone_cfg, Mapping)
                  else None)}
    if model is not None:
        inputs['the pretrained file the frozen weights were loaded from'] = getattr(
            getattr(model, 'backbone', None), 'pretrained_file', None)
        for name, module in _frozen_modules(model):  # a CoOp text tower's CLIP file
            inputs[f'the file the frozen {name} was loaded from'] = module.pretrained_file
    return inputs


def _frozen_modules(model: nn.Module):
    """``(name, module)`` of the modules besides the backbone that hold frozen weights
    from a file of their own (a CoOp text tower)."""
    backbone = getattr(model, 'backbone', None)
    for name, module in model.named_modules():
        if name and module is not backbone and callable(
                getattr(module, 'configured_pretrained', None)):
            yield name, module


def _check_task_output(out: str, force: bool):
    """Refuse to replace an existing file that is not a task file unless ``force``."""
    if not osp.isfile(out) or force:
        return
    from .task_file import TASK_FORMAT, read_task_metadata
    try:
        ours = read_task_metadata(out).get('format') == TASK_FORMAT
    except ValueError:
        ours = False
    if not ours:
        raise OutputError(f'OUT {out!r} exists and is not a vpt-seg task file; export_task '
                          'replaces only its own files. Choose another path, or pass --force '
                          '(force=True) to replace it.')


def export_task(config, checkpoint: str, out: str, force: bool = False) -> Dict[str, str]:
    """Write a task checkpoint as a portable task file (:mod:`vpt_seg.formats.task_file`).

    The header records the backbone's own ``signature_fields``, its pretrained file
    (the file name, looked for next to the task file, and the path the config names)
    and the frozen weights' sha256. The file is written beside ``out`` and renamed
    over it when complete (:func:`~vpt_seg.formats.outputs.atomic_write`), with the
    usual file mode.

    Args:
        config: The task's config file (or :class:`~mmengine.config.Config`).
        checkpoint: Its training or task checkpoint (``.pth``), or a task file.
        out: The task file to write (``.safetensors``).
        force: Replace an existing ``out`` that is not a task file (never an input).

    Returns:
        The metadata written.

    Raises:
        ValueError: ``out`` does not end in ``.safetensors``, or the checkpoint does not
            fit the config (see :func:`load_task_model`).
        OutputError: ``out`` is the config, the checkpoint or the pretrained file (or
            a file in its hub folder), is a folder or would go under a file, or is an
            existing file that is not a task file (without ``force``).
    """
    from mmengine.config import Config

    from ..runner import resolve_config
    if not out.endswith('.safetensors'):
        raise ValueError(f'task file {out!r}: the name must end in .safetensors')
    cfg = Config.fromfile(resolve_config(config)) if isinstance(config, str) else config
    check_output(out, export_inputs(cfg, checkpoint))
    _check_task_output(out, force)
    model = load_task_model(cfg, checkpoint)
    check_output(out, export_inputs(cfg, checkpoint, model))
    backbone = model.backbone
    pretrained = getattr(backbone, 'pretrained_file', None) or ''
    digest = frozen_digest(backbone) if any(
        not p.requires_grad for p in backbone.parameters()) else None
    others = {}
    for name, module in _frozen_modules(model):
        file = getattr(module, 'pretrained_file', None) or ''
        others[name + '.'] = dict(
            pretrained=file, pretrained_path=module.configured_pretrained() or file,
            frozen_sha256=frozen_digest(module) if module._frozen_loaded else '')
    with atomic_write(out) as tmp:
        meta = write_task_file(tmp, model, cfg, pretrained=pretrained,
                               pretrained_path=configured_in_cfg(cfg.model.backbone)
                               or pretrained, frozen_sha256=digest, frozen_modules=others)
    return meta
