"""Exporting a task: the task file (:mod:`vpt_seg.formats.task_file`) written from a
task checkpoint and its config, never over one of its inputs, and checked by loading it
back (:func:`export_task`)."""
import os.path as osp
from typing import Dict, Mapping, Optional

from torch import nn

from .frozen_weights import frozen_digest
from .loading import load_task_model
from .outputs import OutputError, atomic_write, check_output
from .pretrained_key import pretrained_in
from .task_file import write_task_file

__all__ = ['export_inputs', 'export_task']


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
                  pretrained_in(backbone_cfg) if isinstance(backbone_cfg, Mapping)
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
    if not out.endswith('.safetensors'):
        raise ValueError(f'task file {out!r}: the name must end in .safetensors')
    cfg = Config.fromfile(config) if isinstance(config, str) else config
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
                               pretrained_path=pretrained_in(cfg.model.backbone)
                               or pretrained, frozen_sha256=digest, frozen_modules=others)
    return meta
