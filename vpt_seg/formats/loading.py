"""Loading a task: a task checkpoint or task file read (safely) and built into its model,
its frozen weights from the pretrained file (the rules: :mod:`vpt_seg.formats.frozen_weights`),
with :func:`load_task_model`."""
import copy
import os.path as osp
from collections import OrderedDict
from typing import Optional, Tuple, Union

from mmengine.logging import print_log
from torch import nn

from ..tuners.class_list import text_heads
from .frozen_weights import check_task_checkpoint
from .pretrained_key import pretrained_in, set_pretrained
from .task_file import check_class_count, load_from_safetensors, read_task_config
from .weight_files import load_torch_file

__all__ = ['load_checkpoint_file', 'load_task_model']


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
        own = pretrained_in(model_cfg.backbone)
        if own and osp.abspath(own) != osp.abspath(pretrained):
            print_log(f'{checkpoint}: frozen weights from {pretrained} (the config names '
                      f'{own})', logger='current')
        set_pretrained(model_cfg.backbone, pretrained)
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
    heads = text_heads(model)
    if heads:  # a text head classifies what it embeds (maybe a new list)
        names = list(heads[0][1].class_names)
        stored = list((getattr(model, 'dataset_meta', None) or {}).get('classes') or [])
        if [str(c).replace('_', ' ').strip() for c in stored] != names:
            model.dataset_meta = dict(classes=tuple(names))
    return model.eval()
