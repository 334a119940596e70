"""timm and open_clip weight files, and the timm ViT families vpt-seg runs.

Files: a timm weights file (``model.safetensors``, ``pytorch_model.bin``, ``.pth``) or
the hub's folder (one of them and ``config.json``), or a CLIP as open_clip publishes it
(``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, with
``open_clip_config.json``): found (:func:`find_weights_file`), read safely
(:func:`read_timm_state_dict`: safetensors or ``torch.load(weights_only=True)``) and
converted by the family's own ``checkpoint_filter_fn`` (:func:`fit_timm_state_dict`);
stand-ins written as the hub and open_clip do (:func:`write_hub_folder`,
:func:`write_open_clip_folder`). Families: the table of supported ViT families
(:data:`FAMILIES`), the model-name check and what timm's pretrained_cfg says of a CLIP
(its projection width, its normalisation). The backbone that loads them is
:class:`~vpt_seg.models.PromptedTimmViT`; nothing here builds or runs a model.
"""
import json
import os
import os.path as osp
import re
from typing import Dict, Mapping, Optional, Sequence, Tuple

import timm
import torch
from torch import nn

from .outputs import atomic_write
from .weights import read_checkpoint

__all__ = ['FAMILIES', 'HUB_FILES', 'OPEN_CLIP_CONFIG', 'check_model_name', 'is_clip_model',
           'clip_projection_dims', 'pretrained_normalization', 'read_open_clip_config',
           'find_weights_file', 'write_hub_folder', 'write_open_clip_folder',
           'read_timm_state_dict', 'fit_timm_state_dict', 'same_weights_arch',
           'families_text', 'vit_classes', 'HEAD_MODULES']

#: The ViT families this backbone is tested on: (family, a timm name, what is special).
FAMILIES = (
    ('ViT / AugReg', 'vit_base_patch16_224.augreg_in21k', '[CLS]'),
    ('DeiT-III', 'deit3_base_patch16_224', 'LayerScale, position embedding without [CLS]'),
    ('DINOv2', 'vit_base_patch14_dinov2', 'patch 14, LayerScale'),
    ('DINOv2 + registers', 'vit_base_patch14_reg4_dinov2', '[CLS] + 4 registers'),
    ('EVA02', 'eva02_base_patch14_224', "timm's Eva: RoPE, SwiGLU, last norm in fc_norm"),
    ('CLIP', 'vit_base_patch16_clip_224', 'pre-norm (norm_pre)'),
    ('SigLIP', 'vit_base_patch16_siglip_224', 'no [CLS], attention-pool head (unused)'),
    ('MAE', 'vit_base_patch16_224.mae', '[CLS]'),
)
#: timm modules whose ViT classes (``VisionTransformer``, ``Eva``) the backbone runs.
_MODULES = ('timm.models.vision_transformer', 'timm.models.deit', 'timm.models.eva')

#: Weight files of a hub folder: timm's, in the order timm's hub loader prefers them, then
#: open_clip's (a whole CLIP; ``timm/vit_base_patch16_clip_224.openai`` holds both kinds).
HUB_FILES = ('model.safetensors', 'pytorch_model.bin',
             'open_clip_model.safetensors', 'open_clip_pytorch_model.bin')
#: open_clip's description of the CLIP in a hub folder (``model_cfg``, ``preprocess_cfg``).
OPEN_CLIP_CONFIG = 'open_clip_config.json'

#: Top-level modules of a timm ViT that hold no backbone weights for segmentation
#: (classifier and pooling heads); the file's keys under them are ignored.
HEAD_MODULES = ('head', 'head_dist', 'attn_pool')


def families_text() -> str:
    return '; '.join(f'{f} ({n})' for f, n, _ in FAMILIES)


def vit_classes():
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer, Eva


def check_model_name(model_name: str) -> None:
    """Raise ``ValueError`` unless ``model_name`` is a timm ViT of a supported family."""
    from timm.models import is_model, model_entrypoint, split_model_name_tag
    arch, _ = split_model_name_tag(model_name)
    if not is_model(arch):
        raise ValueError(f'model_name={model_name!r} is not a timm model (timm.list_models() '
                         f'lists them); supported ViT families: {families_text()}')
    module = model_entrypoint(arch).__module__
    if module not in _MODULES:
        raise ValueError(
            f'model_name={model_name!r} ({module}) is not a plain ViT: PromptedTimmViT '
            'prompts the token sequence of a ViT with one global attention over all tokens '
            f'(no windows, stages or conv stem). Supported families: {families_text()}')


def is_clip_model(model_name: str) -> bool:
    """True for timm's CLIP image towers (``vit_*_clip_*``), whose ``head`` is CLIP's
    visual projection when loaded from a CLIP file."""
    return bool(re.search(r'_clip(_|$)', model_name.split('.')[0]))


def _clip_cfg(model_name: str):
    """timm's pretrained_cfg of the CLIP image tower ``model_name`` names, or None when
    it names none: not a CLIP architecture (``*_clip_*``), or a tag fine-tuned into a
    classifier (``.laion2b_ft_in1k``: its ``head`` classifies). An untagged name takes
    the architecture's first CLIP tag (timm's default tag may be a fine-tuned one)."""
    from timm.models import get_pretrained_cfg, split_model_name_tag
    arch, tag = split_model_name_tag(model_name)
    if not is_clip_model(arch):
        return None
    tags = [tag] if tag else [n.split('.', 1)[1] for n in timm.list_pretrained(f'{arch}.*')]
    for t in tags:
        if 'ft' not in t.split('_'):
            return get_pretrained_cfg(f'{arch}.{t}')
    return None


def clip_projection_dims(model_name: str) -> int:
    """Width of the visual projection of the CLIP image tower ``model_name`` names (512
    for ViT-B/16, 768 for ViT-L/14, from timm's pretrained_cfg), 0 for other models."""
    cfg = _clip_cfg(model_name)
    return int(cfg.num_classes) if cfg is not None else 0


def pretrained_normalization(model_name: str) -> Optional[dict]:
    """How the images of the CLIP ``model_name`` names were normalised in pretraining,
    in MMSeg's data-preprocessor convention (0-255 pixels): ``dict(mean=[...],
    std=[...])`` from timm's pretrained_cfg (OpenAI's CLIP: mean 0.48145466, 0.4578275,
    0.40821073, std 0.26862954, 0.26130258, 0.27577711, times 255); None for models
    that are not CLIP image towers (their configs name their normalisation)."""
    cfg = _clip_cfg(model_name)
    if cfg is None:
        return None
    return dict(mean=[round(m * 255, 6) for m in cfg.mean],
                std=[round(s * 255, 6) for s in cfg.std])


def same_weights_arch(a: str, b: str) -> bool:
    """timm's QuickGELU CLIP variants hold the same weights as their plain names
    (``timm/vit_base_patch16_clip_224.openai`` serves ``vit_base_patch16_clip_quickgelu_224``)."""
    return a.replace('_quickgelu', '') == b.replace('_quickgelu', '')


def read_open_clip_config(weights_file: str) -> Optional[dict]:
    """The ``open_clip_config.json`` beside a weights file (open_clip's hub layout), or
    None. Data only: its ``model_cfg`` is read for ``quick_gelu``, nothing in it is
    built or followed."""
    path = osp.join(osp.dirname(weights_file), OPEN_CLIP_CONFIG)
    if not osp.isfile(path):
        return None
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f'{path}: not a readable open_clip config (JSON): {err}') from None
    return config if isinstance(config, dict) else None


# ------------------------------------------------------------------ files
def find_weights_file(path: str, option: str = 'model.backbone.checkpoint'
                      ) -> Tuple[str, Optional[dict]]:
    """The weights file at ``path`` and the hub folder's ``config.json`` (or None).

    ``path`` is a file (``.safetensors``, ``.bin``, ``.pth``, ``.pt``) or a folder in the
    hub's layout (``model.safetensors`` or ``pytorch_model.bin``, and ``config.json``; or
    open_clip's ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``), as
    ``huggingface-cli download timm/<name> --local-dir <folder>`` writes it.

    Raises:
        FileNotFoundError: Nothing at ``path``, or a folder without a weights file; the
            message names the path and ``option``.
        ValueError: A URL or hub name (weights are read from local files only).
    """
    if '://' in path or path.startswith('hf-hub:') or path.startswith('hf_hub:'):
        raise ValueError(f'{option}={path!r}: weights are read from local files only; '
                         'download it first (e.g. huggingface-cli download timm/<name> '
                         '--local-dir pretrain/<name>) and name the file or folder')
    path = osp.expanduser(path)
    if osp.isdir(path):
        for name in HUB_FILES:
            if osp.isfile(osp.join(path, name)):
                config = None
                if osp.isfile(osp.join(path, 'config.json')):
                    with open(osp.join(path, 'config.json')) as f:
                        config = json.load(f)
                return osp.join(path, name), config
        raise FileNotFoundError(f'{option}={path!r} is a folder without {" or ".join(HUB_FILES)} '
                                '(the hub layouts timm and open_clip publish); name the weights '
                                'file itself')
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'pretrained backbone weights not found: {path!r} (from {option}). Put the file '
            f'there, or point the config at it: --cfg-options {option}=/path/to/model.safetensors')
    return path, None


def write_hub_folder(vit: nn.Module, folder: str, model_name: str) -> str:
    """Save a timm model as the hub publishes it: ``folder/model.safetensors`` and a
    ``config.json`` naming its architecture (stand-in pretrained weights for demos and
    tests). Returns the folder."""
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    with atomic_write(osp.join(folder, 'model.safetensors')) as tmp:  # the usual file mode
        save_file({k: v.detach().cpu().contiguous() for k, v in vit.state_dict().items()},
                  tmp)
    with atomic_write(osp.join(folder, 'config.json')) as tmp, open(tmp, 'w') as f:
        json.dump(dict(architecture=model_name.split('.')[0], num_classes=0,
                       num_features=getattr(vit, 'num_features', None)), f, indent=2)
    return folder


def write_open_clip_folder(state_dict: Mapping[str, torch.Tensor], folder: str,
                           model_cfg: dict, preprocess_cfg: Optional[dict] = None,
                           torch_file: bool = False) -> str:
    """Save a whole CLIP as open_clip publishes it on the hub (what its
    ``save_for_hf`` writes, without the tokenizer files): ``open_clip_model.safetensors``
    (OpenAI's key names: ``visual.*`` and the text tower), ``open_clip_config.json``
    (``model_cfg``, ``preprocess_cfg``), and with ``torch_file``
    ``open_clip_pytorch_model.bin`` too. Stand-in CLIPs for demos and tests. Returns the
    folder."""
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, osp.join(folder, 'open_clip_model.safetensors'))
    if torch_file:
        torch.save(tensors, osp.join(folder, 'open_clip_pytorch_model.bin'))
    with open(osp.join(folder, OPEN_CLIP_CONFIG), 'w') as f:
        json.dump(dict(model_cfg=model_cfg, preprocess_cfg=preprocess_cfg or {}), f, indent=2)
    return folder


#: Where a segmentor's checkpoint keeps a ``PromptedTimmViT``'s timm weights.
_VPT_SEG_PREFIX = 'backbone.vit.'


def read_timm_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A timm weights file as a flat state dict: read safely (safetensors, or
    ``torch.load(weights_only=True)``), unwrapped from a training checkpoint
    (EMA weights first, as timm's loader), ``module.`` prefixes removed; of a full
    vpt-seg checkpoint (``backbone.vit.*``), the ViT's weights."""
    from timm.models import clean_state_dict
    obj = read_checkpoint(path)
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in ('state_dict_ema', 'model_ema', 'state_dict', 'model',
                                       'module') if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f'{path!r} holds no weights (expected a mapping of names to tensors)')
    inner = {k[len(_VPT_SEG_PREFIX):]: v for k, v in obj.items()
             if isinstance(k, str) and k.startswith(_VPT_SEG_PREFIX)}
    if inner:  # a full vpt-seg checkpoint of this backbone (a folded one): its ViT
        obj = inner
    return clean_state_dict(dict(obj))


def _filter_fn(vit: nn.Module):
    """The family's own conversion (``checkpoint_filter_fn`` of the model's timm module)."""
    import importlib
    return importlib.import_module(type(vit).__module__).checkpoint_filter_fn


def fit_timm_state_dict(state_dict: Mapping[str, torch.Tensor], vit: nn.Module,
                        ignored: Sequence[str] = HEAD_MODULES, where: str = 'checkpoint'
                        ) -> Tuple[Dict[str, torch.Tensor], str]:
    """Convert a file's state dict with the family's ``checkpoint_filter_fn`` (which also
    resamples the patch embedding and position grid to ``vit``'s, timm's
    ``resample_patch_embed``/``resample_abs_pos_embed``) and check it against ``vit``.

    Args:
        state_dict: As read from the file.
        vit: The timm model to load into.
        ignored: Top-level module names whose keys are dropped (heads, unused norms).
        where: The file, for messages.

    Returns:
        The state dict to load strictly, and a one-line summary.

    Raises:
        ValueError: The weights belong to another model (missing, unexpected or
            differently shaped keys, all named) or cannot be converted.
    """
    filter_fn = _filter_fn(vit)
    try:
        state = filter_fn(dict(state_dict), vit)
    except Exception as err:  # a foreign layout deep inside timm's conversion
        raise ValueError(f'{where}: cannot convert these weights for {type(vit).__name__} '
                         f'with {filter_fn.__module__}.checkpoint_filter_fn: '
                         f'{type(err).__name__}: {err}') from None
    dropped = sorted(k for k in state if k.split('.')[0] in ignored)
    state = {k: v for k, v in state.items() if k not in dropped}
    target = vit.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [f'{k}: {tuple(state[k].shape)} in the file, {tuple(target[k].shape)} here'
              for k in target if k in state and state[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        def listing(keys):
            return ', '.join(keys[:8]) + (f' ... ({len(keys)} in all)' if len(keys) > 8 else '')
        parts = ([f'shapes differ: {listing(shapes)}'] if shapes else []) + (
            [f'missing from the file: {listing(missing)}'] if missing else []) + (
            [f'not in this model: {listing(unexpected)}'] if unexpected else [])
        raise ValueError(f'{where} holds the weights of another model than this '
                         f'{type(vit).__name__} (another model_name or size?): '
                         + '; '.join(parts))
    resampled = []
    kernel, grid = 'patch_embed.proj.weight', 'pos_embed'
    if kernel in state_dict and kernel in state and state_dict[kernel].shape != state[kernel].shape:
        resampled.append('patch embedding {}x{} -> {}x{}'.format(
            *state_dict[kernel].shape[-2:], *state[kernel].shape[-2:]))
    if grid in state_dict and grid in state and state_dict[grid].shape != state[grid].shape:
        resampled.append(f'position embedding {state_dict[grid].shape[1]} -> '
                         f'{state[grid].shape[1]} tokens')
    heads = sorted({k.split('.')[0] for k in dropped})
    summary = (f'{len(state)} tensors'
               + (f'; resampled {", ".join(resampled)}' if resampled else '')
               + (f'; ignored {", ".join(heads)} ({len(dropped)} tensors)' if heads else ''))
    return state, summary
