"""Pretrained ViT weights as published (timm, Google JAX, MMSeg): read, described, renamed.

Pure functions over state dicts (torch and numpy only; no MMSeg):

1. **Read** a file: ``.safetensors``, ``.npz`` (JAX), anything else with ``torch.load``
   (``.pth``, ``.bin``, ``.pt``); :func:`~vpt_seg.formats.weight_files.read_checkpoint`
   (reading files safely is :mod:`vpt_seg.formats.weight_files`).
2. **Detect and convert** to MMSeg's names: :func:`to_mmseg_state_dict` finds the patch
   embedding (``patch_embed.projection.weight`` MMSeg, ``patch_embed.proj.weight`` timm,
   ``embedding/kernel`` JAX), takes the keys under the same prefix (so a whole MMSeg
   segmentor file, ``backbone.*``, or a ``module.*`` wrapper works) and renames them
   (:func:`convert_timm_to_mmseg`, :func:`convert_jax_npz`). Keys with no MMSeg name are
   kept under their own name, so fitting can name them.

Fitting the result to a backbone is :mod:`vpt_seg.formats.fitting`.

MMSeg names: ``patch_embed.projection.{weight,bias}``, ``cls_token``, ``pos_embed``,
``layers.{i}.ln1/ln2``, ``layers.{i}.attn.attn.in_proj_{weight,bias}`` (q, k, v stacked),
``layers.{i}.attn.attn.out_proj``, ``layers.{i}.ffn.layers.0.0`` (fc1),
``layers.{i}.ffn.layers.1`` (fc2), ``ln1`` (final norm), ``ln_pre`` (pre-norm).
"""
import re
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import numpy as np
import torch

from .weight_files import read_checkpoint

__all__ = ['FORMATS', 'ViTCheckpoint', 'describe_state_dict', 'detect_format',
           'convert_timm_to_mmseg', 'convert_jax_npz', 'to_mmseg_state_dict',
           'load_vit_checkpoint', 'load_vit_state_dict']

#: Source formats, each known by the key of its patch-embedding kernel.
FORMATS = {
    'mmseg': 'patch_embed.projection.weight',
    'timm': 'patch_embed.proj.weight',
    'jax': 'embedding/kernel',
}

# timm -> MMSeg, applied to the key with the block index already split off.
_TIMM_BLOCK = [
    ('norm1.', 'ln1.'),
    ('norm2.', 'ln2.'),
    ('attn.qkv.weight', 'attn.attn.in_proj_weight'),
    ('attn.qkv.bias', 'attn.attn.in_proj_bias'),
    ('attn.proj.', 'attn.attn.out_proj.'),
    ('mlp.fc1.', 'ffn.layers.0.0.'),
    ('mlp.fc2.', 'ffn.layers.1.'),
]
_TIMM_TOP = [
    ('patch_embed.proj.', 'patch_embed.projection.'),
    ('norm.', 'ln1.'),
    ('norm_pre.', 'ln_pre.'),
]
# JAX (original ViT release) -> timm names inside one encoder block.
_JAX_BLOCK = {
    'LayerNorm_0/scale': 'norm1.weight', 'LayerNorm_0/bias': 'norm1.bias',
    'LayerNorm_2/scale': 'norm2.weight', 'LayerNorm_2/bias': 'norm2.bias',
    'MlpBlock_3/Dense_0/kernel': 'mlp.fc1.weight', 'MlpBlock_3/Dense_0/bias': 'mlp.fc1.bias',
    'MlpBlock_3/Dense_1/kernel': 'mlp.fc2.weight', 'MlpBlock_3/Dense_1/bias': 'mlp.fc2.bias',
}
_JAX_MHA = 'MultiHeadDotProductAttention_1/'


class ViTCheckpoint(NamedTuple):
    """A checkpoint converted to MMSeg names.

    Attributes:
        state_dict: MMSeg-named tensors (keys with no MMSeg name keep their own).
        format: ``'mmseg'``, ``'timm'`` or ``'jax'``.
        prefix: The prefix the ViT's keys had in the file (``''``, ``'backbone.'``, ...).
        num_outside: Keys of the file outside ``prefix`` (not part of the ViT), dropped.
        num_heads: Attention heads, where the file records them (JAX), else None.
    """
    state_dict: Dict[str, torch.Tensor]
    format: str
    prefix: str = ''
    num_outside: int = 0
    num_heads: Optional[int] = None


def describe_state_dict(state_dict: Mapping[str, Any]) -> str:
    """What a state dict looks like, in words: a pretrained ViT, a classification task,
    a segmentation task (and which heads it has), or its first keys."""
    tops = sorted({k.split('.')[0] for k in state_dict})
    if not any(k.startswith('backbone.') for k in state_dict):
        try:
            fmt, prefix = detect_format(state_dict)
        except ValueError:
            fmt = None
        if fmt is not None:
            return (f'a pretrained ViT backbone ({fmt} format, {len(state_dict)} tensors, no '
                    'heads): it belongs in model.backbone.init_cfg.checkpoint, not in '
                    'load_from or tools/test.py')
    if 'head' in tops and 'decode_head' not in tops:
        return ('a classification task file (backbone + head.*, no decode_head): it '
                'belongs to a VPTClassifier config')
    if 'decode_head' in tops:
        return 'a segmentation task file with ' + ', '.join(
            t for t in tops if t.endswith('head')) + ' (another config\'s heads?)'
    return f'a file with {len(state_dict)} keys under {", ".join(tops[:8]) or "nothing"}'


def _unwrap(obj: Any) -> Mapping[str, Any]:
    """The state dict inside a training checkpoint (``state_dict``, ``model``, ``module``)."""
    if not isinstance(obj, Mapping):
        raise ValueError(f'not a ViT checkpoint: expected a mapping of weights, got '
                         f'{type(obj).__name__}')
    for key in ('state_dict', 'model', 'module'):
        if key in obj and isinstance(obj[key], Mapping) and not _is_weights(obj):
            return _unwrap(obj[key])
    return obj


def _is_weights(obj: Mapping) -> bool:
    return any(isinstance(v, (torch.Tensor, np.ndarray)) for v in obj.values())


def detect_format(state_dict: Mapping[str, Any]) -> Tuple[str, str]:
    """Find the ViT in ``state_dict`` by its patch-embedding kernel.

    Returns:
        ``(format, prefix)``: one of :data:`FORMATS` and the prefix of the ViT's keys
        (the shortest, if several ViTs are stored).

    Raises:
        ValueError: no patch-embedding kernel of a known format (not a ViT).
    """
    found = []
    for fmt, suffix in FORMATS.items():
        for key in state_dict:
            if key.endswith(suffix) and (key == suffix or key[-len(suffix) - 1] in './'):
                found.append((len(key) - len(suffix), fmt, key[:-len(suffix)]))
    if not found:
        some = ', '.join(list(state_dict)[:8])
        raise ValueError(
            'not a ViT checkpoint: no patch-embedding kernel found (looked for keys ending '
            'in ' + ', '.join(f'{s!r} ({f})' for f, s in FORMATS.items()) +
            f'); the file has {len(state_dict)} keys, e.g. {some}')
    _, fmt, prefix = min(found)
    return fmt, prefix


# ---------------------------------------------------------------------- converting
def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def convert_timm_to_mmseg(state_dict: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Rename a timm ``VisionTransformer`` state dict to MMSeg's ``VisionTransformer``.

    Tensors are unchanged (both store the patch embedding as a conv ``(C, 3, p, p)`` and
    q, k, v stacked as ``(3C, C)``). timm's final ``norm`` becomes ``ln1``; keys with no
    MMSeg counterpart (``head``, ``fc_norm``, layer scale, register tokens, ...) keep
    their timm name.
    """
    out = {}
    for key, value in state_dict.items():
        new = key
        match = re.match(r'^blocks\.(\d+)\.(.*)$', key)
        if match:
            rest = match.group(2)
            for old, mm in _TIMM_BLOCK:
                if rest.startswith(old):
                    new = f'layers.{match.group(1)}.{mm}{rest[len(old):]}'
                    break
        else:
            for old, mm in _TIMM_TOP:
                if key.startswith(old):
                    new = mm + key[len(old):]
                    break
        out[new] = _tensor(value)
    return out


def _jax_unstack(npz: Mapping[str, Any]) -> Dict[str, Any]:
    """The scanned layout (``Transformer/encoderblock/...`` with a leading layer axis)
    as the per-layer one (``Transformer/encoderblock_{i}/...``)."""
    out = {}
    for key, value in npz.items():
        if key.startswith('Transformer/encoderblock/'):
            rest = key[len('Transformer/encoderblock/'):]
            for i in range(value.shape[0]):
                out[f'Transformer/encoderblock_{i}/{rest}'] = value[i]
        else:
            out[key] = value
    return out


def convert_jax_npz(npz: Mapping[str, Any]) -> Tuple[Dict[str, torch.Tensor], Optional[int]]:
    """Convert the original JAX ViT layout (``ViT-L_16.npz``) to MMSeg names.

    The layout ``timm.models.vision_transformer._load_weights`` reads: kernels are
    ``(in, out)`` (transposed to torch's ``(out, in)``), the patch kernel is HWIO
    (to OIHW), attention q/k/v kernels are ``(C, heads, head_dim)`` and biases
    ``(heads, head_dim)`` (flattened and stacked to ``(3C, C)`` / ``(3C,)``), the output
    kernel is ``(heads, head_dim, C)``. Block ``LayerNorm_0``/``LayerNorm_2`` are the
    pre-attention/pre-MLP norms, ``MlpBlock_3/Dense_{0,1}`` the MLP.

    Args:
        npz: ``{name: array}`` with the prefix (e.g. ``'opt/target/'``) removed.

    Returns:
        ``(state_dict, num_heads)``; unknown keys keep their JAX name.
    """
    npz = _jax_unstack(npz)
    timm_sd: Dict[str, torch.Tensor] = {}
    heads = None
    qkv: Dict[int, Dict[str, Any]] = {}
    for key, value in npz.items():
        w = _tensor(value)
        block = re.match(r'^Transformer/encoderblock_(\d+)/(.*)$', key)
        if key == 'embedding/kernel':
            timm_sd['patch_embed.proj.weight'] = w.permute(3, 2, 0, 1)     # HWIO -> OIHW
        elif key == 'embedding/bias':
            timm_sd['patch_embed.proj.bias'] = w
        elif key == 'cls':
            timm_sd['cls_token'] = w.reshape(1, 1, -1)
        elif key == 'Transformer/posembed_input/pos_embedding':
            timm_sd['pos_embed'] = w.reshape(1, -1, w.shape[-1])
        elif key.startswith('Transformer/encoder_norm/'):
            timm_sd['norm.' + ('weight' if key.endswith('scale') else 'bias')] = w
        elif key in ('head/kernel', 'pre_logits/kernel'):
            timm_sd[key.split('/')[0] + '.weight'] = w.T
        elif key in ('head/bias', 'pre_logits/bias'):
            timm_sd[key.split('/')[0] + '.bias'] = w
        elif block and block.group(2) in _JAX_BLOCK:
            name = _JAX_BLOCK[block.group(2)]
            timm_sd[f'blocks.{block.group(1)}.{name}'] = w.T if w.ndim == 2 else w
        elif block and block.group(2).startswith(_JAX_MHA):
            i, part = int(block.group(1)), block.group(2)[len(_JAX_MHA):]
            if part == 'out/kernel':                                      # (H, D, C)
                heads = w.shape[0]
                timm_sd[f'blocks.{i}.attn.proj.weight'] = w.reshape(-1, w.shape[-1]).T
            elif part == 'out/bias':
                timm_sd[f'blocks.{i}.attn.proj.bias'] = w
            else:
                qkv.setdefault(i, {})[part] = w
        else:
            timm_sd[key] = w
    for i, parts in qkv.items():
        for kind in ('kernel', 'bias'):
            names = [f'{n}/{kind}' for n in ('query', 'key', 'value')]
            have = [n for n in names if n in parts]
            if not have:
                continue
            if len(have) < 3:
                raise ValueError(f'JAX checkpoint: encoderblock_{i} has {have} but not all '
                                 f'of {names}')
            ws = [parts.pop(n) for n in names]
            if kind == 'kernel':                                          # (C, H, D)
                heads = ws[0].shape[1]
                timm_sd[f'blocks.{i}.attn.qkv.weight'] = torch.cat(
                    [w.reshape(w.shape[0], -1).T for w in ws])            # (3HD, C)
            else:                                                         # (H, D)
                timm_sd[f'blocks.{i}.attn.qkv.bias'] = torch.cat([w.reshape(-1) for w in ws])
        for part, w in parts.items():  # anything else in the attention block
            timm_sd[f'Transformer/encoderblock_{i}/{_JAX_MHA}{part}'] = w
    return convert_timm_to_mmseg(timm_sd), heads


def to_mmseg_state_dict(obj: Any, prefix: Optional[str] = None) -> ViTCheckpoint:
    """Detect the format of a loaded checkpoint and convert it to MMSeg names.

    Args:
        obj: What :func:`read_checkpoint` (or MMEngine's loader) returned; a training
            checkpoint's ``state_dict``/``model`` entry is used.
        prefix: The ViT's key prefix in the file; found from the patch embedding if None.

    Raises:
        ValueError: Not a ViT checkpoint.
    """
    state_dict = _unwrap(obj)
    fmt, found = detect_format(state_dict)
    prefix = found if prefix is None else prefix
    inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    outside = len(state_dict) - len(inside)
    if FORMATS[fmt] not in inside:
        raise ValueError(f'not a ViT checkpoint under prefix {prefix!r}: no '
                         f'{prefix + FORMATS[fmt]!r}')
    heads = None
    if fmt == 'timm':
        sd = convert_timm_to_mmseg(inside)
    elif fmt == 'jax':
        sd, heads = convert_jax_npz(inside)
    else:
        sd = {k: _tensor(v) for k, v in inside.items()}
    return ViTCheckpoint(sd, fmt, prefix, outside, heads)


def load_vit_checkpoint(path: str, prefix: Optional[str] = None) -> ViTCheckpoint:
    """Read a timm, JAX or MMSeg ViT file and convert it to MMSeg names."""
    return to_mmseg_state_dict(read_checkpoint(path), prefix=prefix)


def load_vit_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The MMSeg-named state dict of a timm, JAX or MMSeg ViT file."""
    return load_vit_checkpoint(path).state_dict
