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

A CoOp task's text heads (``TextClsHead``, ``TextSegHead``: heads with ``fold_text()``)
are folded too (:func:`fold_text_heads`): the class embeddings ``exp(logit_scale) *
normalize(g(t_i))`` are computed once into the head's fixed classifier (a plain linear
layer, or a 1x1 convolution for pixels), the text tower and the CLIP file are gone, and
the head's config in ``OUT.py`` is its folded one (``text_encoder=None``, the class
names). The written pair's logits are then compared with the task's as well.
"""
import copy
import os.path as osp
from typing import Dict, List

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from ..tuners.class_list import owns_classes, text_heads
from .config_data import literal_config_text
from .export import export_inputs
from .loading import load_task_model
from .outputs import OutputError, atomic_write, check_output
from .pretrained_key import FLAG_NAMES, rule_of
from .task_file import read_task_config
from .weight_files import load_torch_file

__all__ = ['standalone_config', 'fold_task', 'fold_text_heads', 'folded_config_path']

#: The largest difference of the folded backbone's features to the task's, on a random
#: input, that :func:`fold_task` takes for float32 rounding.
FOLD_ATOL = 1e-4


def folded_config_path(out: str) -> str:
    """The config written beside a folded checkpoint: ``OUT.pth`` -> ``OUT.py``."""
    return osp.splitext(out)[0] + '.py'


#: The first words of every config :func:`fold_task` writes: an existing ``OUT.py``
#: without them is not replaced unless forced.
FOLD_MARK = '# Written by tools/export_task.py --fold'


def _written_by_fold(path: str) -> bool:
    try:
        with open(path, errors='replace') as f:
            return f.read(len(FOLD_MARK)) == FOLD_MARK
    except OSError:
        return False


def _check_fold_outputs(out: str, cfg_path: str, inputs, force: bool):
    """Refuse outputs that are inputs, and an ``OUT.py`` (or an ``OUT.pth`` without its
    ``OUT.py``) that an earlier fold did not write, unless ``force``."""
    check_output(out, inputs)
    check_output(cfg_path, inputs, option='OUT.py')
    if force:
        return
    if osp.lexists(cfg_path) and not _written_by_fold(cfg_path):
        raise OutputError(
            f'{cfg_path} exists and was not written by export_task.py --fold (its config '
            f'goes there, beside {out}); choose another OUT, or pass --force (force=True) to '
            'replace it.')
    if osp.lexists(out) and not osp.lexists(cfg_path):
        raise OutputError(
            f'{out} exists and is not an earlier fold (no {osp.basename(cfg_path)} of ours '
            'beside it); choose another OUT, or pass --force (force=True) to replace it.')


def standalone_config(cfg: Config) -> Config:
    """``cfg`` with the backbone of a folded checkpoint (see the module docstring):
    ``lora=None``, ``tune_bias=False``, ``save_frozen=True``, no pretrained file."""
    cfg = copy.deepcopy(cfg)
    backbone = cfg.model.backbone
    rule = rule_of(backbone)
    for flag in FLAG_NAMES:  # the user's word, not the folded checkpoint's
        backbone.pop(flag, None)
    if backbone.get('lora') is not None:
        backbone['lora'] = None
    if backbone.get('tune_bias'):
        backbone['tune_bias'] = False
    backbone['save_frozen'] = True
    rule.set_pretrained(backbone, None)
    if 'custom_imports' not in cfg:
        cfg['custom_imports'] = dict(imports=['vpt_seg'], allow_failed_imports=False)
    cfg['load_from'] = None
    cfg['resume'] = False
    return cfg


def _tensors(out) -> tuple:
    """The tensors of nested lists and tuples (a classifier's backbone gives
    ``[patch map, cls]`` per layer), in order."""
    if isinstance(out, (tuple, list)):
        return tuple(t for item in out for t in _tensors(item))
    return (out, )


def _features(model, x, logits: bool = False):
    """The backbone's outputs on ``x`` (flat), and with ``logits`` the model's
    (``mode='tensor'``) last."""
    with torch.no_grad():
        out = _tensors(model.backbone(x))
        return out + (model(x, mode='tensor'), ) if logits else out


def _config_at(model_cfg, name: str):
    """The config of the module ``name`` (``head``, ``decode_head``,
    ``auxiliary_head.1``) inside ``model_cfg``, as ``(parent, key)``."""
    parent, parts = model_cfg, name.split('.')
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, (list, tuple)) else parent[part]
    last = parts[-1]
    return parent, (int(last) if isinstance(parent, (list, tuple)) else last)


def fold_text_heads(model, cfg: Config) -> List[str]:
    """Fold every text head of ``model`` that embeds its classes in place
    (``head.fold_text()``: its class embeddings computed once into a fixed classifier, its
    text encoder dropped) and put what changes in each one's config into ``cfg.model``;
    what was folded. Auxiliary heads with ``text_encoder='shared'`` stay: they use the
    folded decode head's embeddings.

    Raises:
        ValueError: a text head that cannot be folded (no ``fold_text``), naming it.
    """
    folded = []
    for name, head in text_heads(model):
        if not owns_classes(head):  # 'shared': uses the folded decode head's embeddings
            continue
        if not callable(getattr(head, 'fold_text', None)):
            raise ValueError(f'{name} ({type(head).__name__}) classifies by text embeddings '
                             'but has no fold_text(): it cannot be folded')
        names = list(head.class_names)
        parent, key = _config_at(cfg.model, name)
        parent[key] = dict(parent[key], **head.fold_text())
        folded.append(f'the text classifier of {name} ({len(names)} class embeddings, '
                      'computed once)')
    return folded


def fold_task(config, checkpoint: str, out: str, force: bool = False) -> Dict[str, object]:
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
            (:func:`folded_config_path`). Both are written to temporary files beside
            them, read back and compared, and only then renamed over them, so an earlier
            fold's files stay as they were if anything fails.
        force: Replace an existing ``OUT.py`` (or an ``OUT.pth`` without one) that an
            earlier fold did not write (never an input).

    Returns:
        ``dict(checkpoint=out, config=..., folded=[what was merged], largest_difference=...)``.

    Raises:
        ValueError: ``out`` does not end in ``.pth``; the checkpoint does not fit the
            config; the folded model differs from the task (a bug; nothing is written).
        OutputError: ``out`` or ``OUT.py`` is the config, the checkpoint or the
            pretrained file, is a folder or would go under a file; or ``OUT.py`` exists
            and an earlier fold did not write it (without ``force``).
    """
    if not str(out).endswith('.pth'):
        raise ValueError(f'--fold writes an MMSeg checkpoint: {out!r} must end in .pth '
                         '(its config goes beside it, as .py)')
    if isinstance(config, str):
        config = Config.fromfile(config)
    cfg_path = folded_config_path(out)
    _check_fold_outputs(out, cfg_path, export_inputs(config, checkpoint), force)
    model = load_task_model(config, checkpoint)
    cfg = config if config is not None else read_task_config(checkpoint)
    _check_fold_outputs(out, cfg_path, export_inputs(config, checkpoint, model), True)
    x = _probe(model.backbone)
    text = bool(text_heads(model))  # CoOp: the logits are compared too
    expected = _features(model, x, logits=text)
    folded = _fold_in_place(model.backbone)
    standalone = standalone_config(cfg)
    folded += fold_text_heads(model, standalone)
    meta = _fold_meta(model, standalone, checkpoint, folded)
    worst = _write_checked(model, standalone, meta, checkpoint, out, cfg_path, x, expected,
                           logits=text)
    _say_folded(out, folded)
    return dict(checkpoint=out, config=cfg_path, folded=folded, largest_difference=worst)


def _probe(backbone) -> torch.Tensor:
    """The random input (fixed seed) the task and its folded checkpoint are compared on."""
    size = tuple(getattr(backbone, 'img_size', (224, 224)))
    return torch.randn(1, getattr(backbone, 'in_channels', 3), *size,
                       generator=torch.Generator().manual_seed(0))


def _fold_in_place(backbone) -> List[str]:
    """Merge LoRA into the weights (tuned biases already are), mark the backbone as a
    model of its own (its frozen weights saved, no pretrained file); what was folded."""
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
    return folded


def _fold_meta(model, standalone: Config, checkpoint: str, folded: List[str]) -> dict:
    """The folded checkpoint's ``meta``: its config as literals, where it came from, what
    was folded, and the task's classes (and palette)."""
    meta = dict(cfg=literal_config_text(standalone), vpt_seg_fold=dict(
        source=osp.abspath(checkpoint), folded=folded))
    if getattr(model, 'dataset_meta', None):
        meta['dataset_meta'] = {k: list(map(list, v)) if k == 'palette' else list(v)
                                for k, v in model.dataset_meta.items()
                                if k in ('classes', 'palette') and v is not None}
    return meta


def _write_checked(model, standalone: Config, meta: dict, checkpoint: str, out: str,
                   cfg_path: str, x: torch.Tensor, expected, logits: bool = False) -> float:
    """Write the checkpoint and its config, read them back as a user would and compare
    the backbone's features on ``x`` (with ``logits``, the model's logits too); the
    largest difference.

    Both files go to temporary names beside the outputs, are read back and compared
    there, and replace the outputs only then: a kill or a failure leaves what was there
    before.

    Raises:
        ValueError: the folded model differs from the task (nothing is written).
    """
    from mmseg.registry import MODELS
    with atomic_write(out) as tmp_out, atomic_write(cfg_path, suffix='.py') as tmp_cfg:
        torch.save(dict(meta=meta, state_dict=model.state_dict()), tmp_out)
        with open(tmp_cfg, 'w') as f:
            # literals only: no key or string of the config becomes code
            f.write(literal_config_text(standalone, header=(
                f'{FOLD_MARK[2:]} from {osp.basename(checkpoint)!r}:\n'
                f'the config of {osp.basename(out)}, a standalone checkpoint (LoRA and tuned '
                'biases merged;\nlora=None, save_frozen=True, no pretrained file; text heads '
                'with their class embeddings fixed).')))
        # Read back as a user would: the written config, the file through the safe reader.
        check = MODELS.build(Config.fromfile(tmp_cfg).model)
        state = load_torch_file(tmp_out, what='folded checkpoint')['state_dict']
        check.load_state_dict(state, strict=True)
        worst = _largest_difference(_features(check.eval(), x, logits), expected, logits)
        if not worst <= FOLD_ATOL:
            raise ValueError(f'{out}: the folded model differs from the task by '
                             f'{worst:.3g} (> {FOLD_ATOL:g}) on a random input; nothing was '
                             'written; please report this')
    return worst


def _largest_difference(got, expected, logits: bool) -> float:
    """The largest difference of ``got`` to ``expected`` (NaN if any is NaN); with
    ``logits`` the last pair, ``exp(logit_scale)`` (100 for CLIP) times a cosine, is
    compared relative to its largest value."""
    worst = 0.0
    for i, (a, b) in enumerate(zip(got, expected)):
        scale = max(1.0, float(b.abs().max())) if logits and i == len(got) - 1 else 1.0
        diff = float((a - b).abs().max()) / scale
        if diff != diff:  # NaN
            return diff
        worst = max(worst, diff)
    return worst


def _say_folded(out: str, folded: List[str]):
    if folded:
        print_log(f'{out}: folded {" and ".join(folded)} into the weights', logger='current')
    else:
        print_log(f'{out}: nothing to fold (no LoRA, no tuned biases); written as a '
                  'standalone checkpoint: the pretrained weights with the task\'s prompts, '
                  'adapters and heads, no pretrained file needed', logger='current')
