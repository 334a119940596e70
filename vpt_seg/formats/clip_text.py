"""CLIP files as open_clip publishes them, read for their text tower.

open_clip's files (``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, or a
hub folder holding one, e.g. ``timm/vit_base_patch16_clip_224.openai``) keep OpenAI's
key layout with both towers in one file: ``visual.*`` for the image tower and, for the
text tower, ``token_embedding.weight``, ``positional_embedding``,
``transformer.resblocks.N.*``, ``ln_final.*``, ``text_projection`` and ``logit_scale``.
This module finds such a file, reads it safely (safetensors, or ``torch.load`` with
``weights_only=True``: :func:`vpt_seg.formats.weight_files.read_checkpoint`) and returns the
text keys only. OpenAI's original ``.pt`` files are TorchScript archives (code, not
weights): they are refused, never loaded.
"""
import os.path as osp
import re
from typing import Dict, Mapping

import torch

from .weight_files import is_torchscript, read_checkpoint

__all__ = ['CLIP_HUB_FILES', 'TEXT_KEYS', 'find_clip_file', 'read_clip_text_state_dict',
           'text_tower_shape']

#: Weight files of an open_clip hub folder, in the order open_clip prefers them.
CLIP_HUB_FILES = ('open_clip_model.safetensors', 'open_clip_pytorch_model.bin')
#: Top-level keys of the text tower (``transformer.resblocks.*`` besides these).
TEXT_KEYS = ('token_embedding.weight', 'positional_embedding', 'ln_final.weight',
             'ln_final.bias', 'text_projection', 'logit_scale')
_GET_IT = ('download open_clip\'s file instead, e.g. huggingface-cli download '
           'timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors '
           '--local-dir pretrain/clip_vit_b16, and name that file or folder')


def find_clip_file(path: str, option: str) -> str:
    """The CLIP weights file at ``path`` (a file, or a hub folder with one of
    :data:`CLIP_HUB_FILES`).

    Raises:
        FileNotFoundError: nothing there, or a folder without an open_clip file.
        ValueError: a URL or hub name (files are read locally only).
    """
    if '://' in path or path.startswith(('hf-hub:', 'hf_hub:')):
        raise ValueError(f'{option}={path!r}: CLIP weights are read from local files only; '
                         + _GET_IT)
    path = osp.expanduser(path)
    if osp.isdir(path):
        for name in CLIP_HUB_FILES:
            if osp.isfile(osp.join(path, name)):
                return osp.join(path, name)
        raise FileNotFoundError(f'{option}={path!r} is a folder without '
                                f'{" or ".join(CLIP_HUB_FILES)} (open_clip\'s layout); name '
                                'the CLIP weights file itself')
    if not osp.isfile(path):
        raise FileNotFoundError(f'CLIP weights not found: {path!r} (from {option}); put the '
                                f'file there or set --cfg-options {option}=/path/to/'
                                'open_clip_model.safetensors')
    return path


def read_clip_text_state_dict(path: str, option: str = 'checkpoint') -> Dict[str, torch.Tensor]:
    """The text tower of a CLIP file (OpenAI key layout), read safely.

    Args:
        path: The file or hub folder.
        option: The config key that named it, for messages.

    Returns:
        ``{key: tensor}`` for :data:`TEXT_KEYS` and ``transformer.resblocks.*``.

    Raises:
        FileNotFoundError: see :func:`find_clip_file`.
        ValueError: OpenAI's TorchScript ``.pt`` (refused, saying where the open_clip
            file is), an unreadable file, or a file without a text tower (an image-only
            timm file, ``text.``-prefixed towers of other models), naming what it holds.
    """
    file = find_clip_file(path, option)
    if not file.endswith('.safetensors') and is_torchscript(file):
        raise ValueError(f'{file} ({option}) is a TorchScript archive (OpenAI\'s original '
                         'CLIP .pt): it holds code, which vpt-seg never runs; ' + _GET_IT)
    obj = read_checkpoint(file)
    if isinstance(obj, Mapping) and isinstance(obj.get('state_dict'), Mapping):
        obj = obj['state_dict']
    if not isinstance(obj, Mapping):
        raise ValueError(f'{file} ({option}) holds no weights (expected names -> tensors)')
    state = {(k[7:] if k.startswith('module.') else k): v for k, v in obj.items()}
    text = {k: v for k, v in state.items()
            if k in TEXT_KEYS or k.startswith('transformer.resblocks.')}
    missing = [k for k in TEXT_KEYS if k not in text]
    if missing or not any(k.startswith('transformer.resblocks.') for k in text):
        tops = sorted({k.split('.')[0] for k in state})
        hint = (' (its text tower is under "text.": a model open_clip builds as '
                'CustomTextCLIP, whose text tower this encoder does not read)'
                if 'text' in tops else
                ' (an image tower only: timm\'s model.safetensors holds no text tower)'
                if not text else '')
        raise ValueError(f'{file} ({option}) holds no CLIP text tower in OpenAI\'s layout: '
                         f'missing {", ".join(missing) or "transformer.resblocks.*"}; its '
                         f'top-level keys are {", ".join(tops[:12])}{hint}. Give an '
                         'open_clip CLIP file (open_clip_model.safetensors), which holds '
                         'both towers')
    bad = [k for k, v in text.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f'{file} ({option}): {bad[:4]} are not tensors')
    return text


def text_tower_shape(state: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    """What a text state dict's shapes say about its tower, under MMSeg's argument
    names: ``total_vocab_size``, ``embed_dims``, ``context_length``, ``output_dims``,
    ``num_layers``, ``mlp_ratio`` (the hidden width over ``embed_dims``; heads cannot be
    read from shapes)."""
    vocab, width = state['token_embedding.weight'].shape
    proj = state['text_projection']
    layers = {int(m.group(1)) for k in state
              for m in [re.match(r'transformer\.resblocks\.(\d+)\.', k)] if m}
    fc = state.get('transformer.resblocks.0.mlp.c_fc.weight')
    return dict(total_vocab_size=int(vocab), embed_dims=int(width),
                context_length=int(state['positional_embedding'].shape[0]),
                output_dims=int(proj.shape[-1] if proj.dim() == 2 else 0),
                num_layers=len(layers),
                mlp_ratio=float(fc.shape[0] / width) if fc is not None else 0.0)
