"""Folding one task into a standalone MMSeg checkpoint, for users who deploy one task.

``tools/export_task.py --fold CONFIG CHECKPOINT OUT.pth`` (:func:`fold_task`) writes two
files side by side:

* ``OUT.pth``: an MMSeg checkpoint, ``{'meta': ..., 'state_dict': ...}``, with the whole
  model: the frozen ViT with LoRA's ``(alpha / r) B A`` merged into the weights it
  updates (:meth:`~vpt_seg.models.frozen.FrozenBackboneMixin.fold_lora`) and the tuned
  biases in place, the prompts (still tokens), the adapters (still modules) and the
  heads as trained. It holds tensors, strings and lists only, so it reads with
  ``torch.load(weights_only=True)``, as every loader in vpt-seg (and MMEngine's, through
  :mod:`vpt_seg.patches`) reads checkpoints. ``meta`` has ``dataset_meta`` (when the task
  recorded its classes), ``cfg`` (the text of ``OUT.py``, as MMEngine's checkpoints keep
  it) and ``vpt_seg_fold`` (what was folded, from which file).
* ``OUT.py``: the task's config with a standalone backbone: ``lora=None`` (merged),
  ``tune_bias=False`` (the biases are weights now), ``save_frozen=True`` (a state dict
  holds the frozen weights) and no pretrained file (``init_cfg=None`` for the MMSeg
  layout, ``checkpoint=None`` for ``PromptedTimmViT``); ``custom_imports`` loads
  vpt_seg.

MMSeg's ``init_model('OUT.py', 'OUT.pth')`` and ``inference_model``, and
``tools/test.py OUT.py OUT.pth``, load it with no pretrained file anywhere.
"""
import copy
import os
import os.path as osp
from typing import Dict

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from .weights import load_torch_file
from .config_data import literal_config_text
from .loading import load_task_model
from .task_file import pretrained_option_of, read_task_config

__all__ = ['standalone_config', 'fold_task', 'folded_config_path']

#: The largest difference of the folded backbone's features to the task's, on a random
#: input, that :func:`fold_task` takes for float32 rounding.
FOLD_ATOL = 1e-4


def folded_config_path(out: str) -> str:
    """The config written beside a folded checkpoint: ``OUT.pth`` -> ``OUT.py``."""
    return osp.splitext(out)[0] + '.py'


def standalone_config(cfg: Config) -> Config:
    """``cfg`` with the backbone of a folded checkpoint (see the module docstring):
    ``lora=None``, ``tune_bias=False``, ``save_frozen=True``, no pretrained file."""
    cfg = copy.deepcopy(cfg)
    backbone = cfg.model.backbone
    keys = pretrained_option_of(backbone).split('.')[2:]  # before the options change
    backbone.pop('prefer_init_cfg', None)
    if backbone.get('lora') is not None:
        backbone['lora'] = None
    if backbone.get('tune_bias'):
        backbone['tune_bias'] = False
    backbone['save_frozen'] = True
    if keys == ['init_cfg', 'checkpoint']:
        backbone['init_cfg'] = None
    else:
        backbone[keys[-1]] = None
    if 'custom_imports' not in cfg:
        cfg['custom_imports'] = dict(imports=['vpt_seg'], allow_failed_imports=False)
    cfg['load_from'] = None
    cfg['resume'] = False
    return cfg


def _features(model, x):
    with torch.no_grad():
        out = model.backbone(x)
    return out if isinstance(out, (tuple, list)) else (out, )


def fold_task(config, checkpoint: str, out: str) -> Dict[str, object]:
    """Write one task as a standalone MMSeg checkpoint and its config (module docstring).

    The task is loaded as :func:`~vpt_seg.formats.loading.load_task_model` loads it (frozen
    weights from its pretrained file, checked by sha256), folded, saved, then the
    written pair is read back (safe loading, strict) and its backbone compared with the
    task's on a random input.

    A task with nothing to fold (no LoRA, no tuned biases: prompts, adapters or a head
    alone) is still written, as the pretrained weights with the task's tuned parts: a
    checkpoint that needs no pretrained file beside it; the log says so.

    Args:
        config: The task's config file (or :class:`~mmengine.config.Config`); None: the
            one stored in a task file.
        checkpoint: Its training or task checkpoint (``.pth``), or a task file.
        out: The checkpoint to write (``.pth``); the config goes beside it
            (:func:`folded_config_path`).

    Returns:
        ``dict(checkpoint=out, config=..., folded=[what was merged], largest_difference=...)``.

    Raises:
        ValueError: ``out`` does not end in ``.pth``; the checkpoint does not fit the
            config; the folded model differs from the task (a bug; both files are then
            removed).
    """
    from mmseg.registry import MODELS

    from ..runner import resolve_config
    if not str(out).endswith('.pth'):
        raise ValueError(f'--fold writes an MMSeg checkpoint: {out!r} must end in .pth '
                         '(its config goes beside it, as .py)')
    if isinstance(config, str):
        config = Config.fromfile(resolve_config(config))
    model = load_task_model(config, checkpoint)
    cfg = config if config is not None else read_task_config(checkpoint)
    backbone = model.backbone
    size = tuple(getattr(backbone, 'img_size', (224, 224)))
    x = torch.randn(1, getattr(backbone, 'in_channels', 3), *size,
                    generator=torch.Generator().manual_seed(0))
    expected = _features(model, x)

    folded = []
    if getattr(backbone, 'lora', None) is not None:
        lora = backbone.lora_cfg
        folded.append(f"LoRA (rank {lora['rank']}, alpha {lora['alpha']}, targets "
                      f"{list(lora['targets'])})")
        backbone.fold_lora()
    if getattr(backbone, 'tune_bias', False):
        folded.append('tuned biases')
    backbone.save_frozen = True
    backbone.pretrained_file = None  # the weights are no pretrained file's any more
    standalone = standalone_config(cfg)
    cfg_path = folded_config_path(out)
    text = literal_config_text(standalone)  # literals only: no key or string becomes code
    meta = dict(cfg=text, vpt_seg_fold=dict(
        source=osp.abspath(checkpoint), folded=folded))
    if getattr(model, 'dataset_meta', None):
        meta['dataset_meta'] = {k: list(map(list, v)) if k == 'palette' else list(v)
                                for k, v in model.dataset_meta.items()
                                if k in ('classes', 'palette') and v is not None}
    torch.save(dict(meta=meta, state_dict=model.state_dict()), out)
    with open(cfg_path, 'w') as f:
        f.write(literal_config_text(standalone, header=(
            f'Written by tools/export_task.py --fold from {osp.basename(checkpoint)!r}:\n'
            f'the config of {osp.basename(out)}, a standalone checkpoint (LoRA and tuned '
            'biases merged;\nlora=None, save_frozen=True, no pretrained file).')))
    if folded:
        print_log(f'{out}: folded {" and ".join(folded)} into the weights', logger='current')
    else:
        print_log(f'{out}: nothing to fold (no LoRA, no tuned biases); written as a '
                  'standalone checkpoint: the pretrained weights with the task\'s prompts, '
                  'adapters and heads, no pretrained file needed', logger='current')

    # Read back as a user would: the written config, the file through the safe reader.
    check = MODELS.build(Config.fromfile(cfg_path).model)
    state = load_torch_file(out, what='folded checkpoint')['state_dict']
    check.load_state_dict(state, strict=True)
    worst = max(float((a - b).abs().max()) for a, b in zip(_features(check.eval(), x),
                                                           expected))
    if not worst <= FOLD_ATOL:
        for path in (out, cfg_path):
            os.remove(path)
        raise ValueError(f'{out}: the folded backbone differs from the task by {worst:.3g} '
                         f'(> {FOLD_ATOL:g}) on a random input; please report this')
    return dict(checkpoint=out, config=cfg_path, folded=folded, largest_difference=worst)
