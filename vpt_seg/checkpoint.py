"""Pretrained ViT weights as published (timm, Google JAX, MMSeg) for MMSeg's ViT.

Pure functions over state dicts (torch, numpy and timm only; no MMSeg):

1. **Read** a file: ``.safetensors``, ``.npz`` (JAX), anything else with ``torch.load``
   (``.pth``, ``.bin``, ``.pt``); :func:`read_checkpoint`.
2. **Detect and convert** to MMSeg's names: :func:`to_mmseg_state_dict` finds the patch
   embedding (``patch_embed.projection.weight`` MMSeg, ``patch_embed.proj.weight`` timm,
   ``embedding/kernel`` JAX), takes the keys under the same prefix (so a whole MMSeg
   segmentor file, ``backbone.*``, or a ``module.*`` wrapper works) and renames them
   (:func:`convert_timm_to_mmseg`, :func:`convert_jax_npz`). Keys with no MMSeg name are
   kept under their own name, so the next step can name them.
3. **Fit** to a backbone: :func:`fit_state_dict` compares with the backbone's parameter
   shapes, resamples the position embedding to the backbone's grid once
   (:func:`resample_pos_embed`, timm's resampler, [CLS] entry kept apart), drops what a
   segmentation backbone does not use (classifier head, an unused final norm) and raises
   one clear error for anything else (patch size, width, depth, unknown keys, missing
   weights). The :class:`FitReport` it returns prints as the one-line load summary.

MMSeg names: ``patch_embed.projection.{weight,bias}``, ``cls_token``, ``pos_embed``,
``layers.{i}.ln1/ln2``, ``layers.{i}.attn.attn.in_proj_{weight,bias}`` (q, k, v stacked),
``layers.{i}.attn.attn.out_proj``, ``layers.{i}.ffn.layers.0.0`` (fc1),
``layers.{i}.ffn.layers.1`` (fc2), ``ln1`` (final norm), ``ln_pre`` (pre-norm).
"""
import contextlib
import math
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Any, Collection, Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np
import torch
from timm.layers import resample_abs_pos_embed

__all__ = ['FORMATS', 'ViTCheckpoint', 'FitReport', 'UnreadableCheckpointError',
           'read_checkpoint', 'reading_once', 'load_torch_file',
           'describe_state_dict', 'detect_format',
           'convert_timm_to_mmseg', 'convert_jax_npz', 'to_mmseg_state_dict',
           'load_vit_checkpoint', 'load_vit_state_dict', 'resample_pos_embed',
           'fit_state_dict', 'infer_backbone_kwargs', 'is_ignorable']

#: Source formats, each known by the key of its patch-embedding kernel.
FORMATS = {
    'mmseg': 'patch_embed.projection.weight',
    'timm': 'patch_embed.proj.weight',
    'jax': 'embedding/kernel',
}

#: Keys (after conversion) a segmentation backbone never uses: classifier heads, the
#: pooled-feature norm, the old representation layer. Dropped and reported.
_IGNORABLE = re.compile(r'^(head|head_dist|fc_norm|pre_logits)(\.|$)')

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


# ------------------------------------------------------------------------- reading
class UnreadableCheckpointError(ValueError):
    """A file that is not a readable checkpoint (truncated, garbage, unsafe objects)."""


def _load_error_reason(err: BaseException, path: Optional[str] = None) -> str:
    """torch's reason for refusing a file, without its advice to turn off safe loading."""
    text = str(err)
    if path is not None:
        import zipfile
        with open(path, 'rb') as f:
            head = f.read(4)
        if not head:
            return 'it is empty'
        if head == b'PK\x03\x04' and not zipfile.is_zipfile(path):
            return 'its zip archive is incomplete (the file is truncated)'
    unsafe = re.search(r'Unsupported global: GLOBAL ([\w.]+)', text)
    if unsafe:
        return (f'it stores the Python object {unsafe.group(1)}, which safe loading refuses '
                '(a checkpoint of weights never needs it)')
    if 'zip archive' in text or 'central directory' in text:
        return 'its zip archive is incomplete (the file is truncated)'
    if isinstance(err, EOFError) or 'Ran out of input' in text:
        return 'it ends early (empty or truncated)'
    if any(s in text for s in ('invalid load key', 'could not find MARK', 'Unsupported operand')):
        return 'it is not a torch file'
    for line in text.strip().split('\n'):
        if line.strip() and 'weights_only' not in line and 'trust' not in line:
            return line.strip()
    return type(err).__name__


_RESUME_HINT = ('If a run was killed while saving it, use an earlier checkpoint '
                '(tools/train.py --resume skips unreadable ones).')


def load_torch_file(path: str, map_location: Any = 'cpu', what: str = 'checkpoint',
                    hint: str = _RESUME_HINT, name: Optional[str] = None) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    The one reader of torch checkpoints: ``tools/test.py``, ``load_from``, ``--resume``
    (through MMEngine's loaders, local and remote, see :mod:`vpt_seg.engine.checkpoint_io`),
    ``tools/serve.py`` and the pretrained-weights reader all call it. ``name``: where
    the file came from (a URL), for the messages.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnreadableCheckpointError: the file is truncated, not a torch file, or holds
            Python objects that safe loading refuses; the message names the file and never
            suggests turning safe loading off.
    """
    path = osp.expanduser(str(path))
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} not found: {path!r}')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip, pickle and EOF errors, each with its own type
        where = repr(path) if name is None else f'{name!r} (downloaded to {path!r})'
        raise UnreadableCheckpointError(
            f'{where} is not a readable {what}: {_load_error_reason(err, path)}. {hint}'
        ) from None


_read_once: Optional[Dict[Tuple[str, int, int], Mapping[str, Any]]] = None


@contextlib.contextmanager
def reading_once():
    """Within the block, :func:`read_checkpoint` reads each file once and then returns
    what it read (a new mapping of the same tensors, which every loader copies into its
    model and never changes). For serving: one pretrained file, read for the shared
    backbone and again for each task's frozen weights. A file changed on disk is read
    again; the tensors are freed when the block ends.
    """
    global _read_once
    outer, _read_once = _read_once, {} if _read_once is None else _read_once
    try:
        yield
    finally:
        _read_once = outer


def read_checkpoint(path: str) -> Mapping[str, Any]:
    """Read a weights file as published: a mapping of names to tensors or arrays.

    ``.safetensors`` with safetensors, ``.npz`` with numpy (JAX), anything else with
    :func:`load_torch_file` (``.pth``, ``.bin``, ``.pt``, MMSeg/MMEngine files). Inside
    :func:`reading_once`, a file is read once.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: The file cannot be read as weights.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'pretrained ViT weights not found: {path!r}')
    if _read_once is None:
        return _read_weights(path)
    stat = os.stat(path)
    key = (osp.realpath(path), stat.st_mtime_ns, stat.st_size)
    if key not in _read_once:
        _read_once[key] = _read_weights(path)
    return dict(_read_once[key])


def _read_weights(path: str) -> Mapping[str, Any]:
    if not path.endswith(('.safetensors', '.npz')):
        return load_torch_file(path, what='torch file', hint=(
            'not a ViT checkpoint: give weights as .safetensors, .npz (JAX), or a torch '
            'file (.pth/.bin/.pt).'))
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as err:  # each reader raises its own types for a foreign file
        reason = str(err).strip().split('\n')[0]
        raise ValueError(f'not a ViT checkpoint: cannot read {path!r} as weights '
                         '(.safetensors, .npz, or a torch file: .pth/.bin/.pt): '
                         f'{type(err).__name__}: {reason}') from err


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


# ------------------------------------------------------------------------- fitting
def _grid_of(num_tokens: int) -> Optional[int]:
    side = math.isqrt(num_tokens)
    return side if side * side == num_tokens else None


def resample_pos_embed(pos_embed: torch.Tensor,
                       new_size: Tuple[int, int],
                       num_prefix_tokens: int = 1,
                       interpolation: str = 'bicubic',
                       antialias: bool = True) -> torch.Tensor:
    """Resample a square position-embedding grid to ``new_size``, prefix entries apart.

    ``(1, K + h * h, C) -> (1, K + H * W, C)`` with timm's
    :func:`~timm.layers.resample_abs_pos_embed` (the pretrained grid is square, as for
    every published ViT). Returns the input unchanged when the grid already fits.

    Raises:
        ValueError: The token count is not ``num_prefix_tokens`` plus a square.
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f'pos_embed must be (1, N, C), got {tuple(pos_embed.shape)}')
    side = _grid_of(pos_embed.shape[1] - num_prefix_tokens)
    if side is None:
        raise ValueError(f'pos_embed has {pos_embed.shape[1]} entries: not {num_prefix_tokens} '
                         'prefix entries plus a square grid')
    if (side, side) == tuple(new_size):
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed, new_size=list(new_size), old_size=[side, side],
        num_prefix_tokens=num_prefix_tokens, interpolation=interpolation,
        antialias=antialias and interpolation in ('bilinear', 'bicubic'))


def is_ignorable(key: str) -> bool:
    """Whether a converted key belongs to the classifier, not the feature extractor."""
    return bool(_IGNORABLE.match(key))


def _layer_of(key: str) -> int:
    """The transformer layer a key belongs to; -1 outside the layers."""
    match = re.match(r'^layers\.(\d+)\.', key)
    return int(match.group(1)) if match else -1


def _depth(keys) -> int:
    return max((_layer_of(k) for k in keys), default=-1) + 1


@dataclass
class FitReport:
    """What :func:`fit_state_dict` did, for the one-line load summary."""
    source: str = ''
    loaded: List[str] = field(default_factory=list)
    resampled: Optional[Tuple[Tuple[int, int], Tuple[int, int]]] = None
    ignored: List[str] = field(default_factory=list)
    initial: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f'loaded {len(self.loaded)} tensors']
        if 'patch_embed.projection.weight' in self.loaded:
            parts[0] += (' (patch-embedding bias included)'
                         if 'patch_embed.projection.bias' in self.loaded
                         else ' (the file has no patch-embedding bias)')
        if self.resampled:
            (h0, w0), (h1, w1) = self.resampled
            parts.append(f'pos_embed resampled {h0}x{w0} -> {h1}x{w1} grid')
        if self.ignored:
            parts.append(f'ignored {len(self.ignored)} ({_short(self.ignored)})')
        parts.append(f'left at initial value {len(self.initial)}'
                     + (f' ({_short(self.initial)})' if self.initial else ''))
        parts += self.notes
        return f'Pretrained ViT {self.source}: ' + '; '.join(parts)


def _short(keys: List[str], limit: int = 6) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f', ... {len(keys) - limit} more' if len(keys) > limit else '')


def fit_state_dict(state_dict: Mapping[str, torch.Tensor],
                   target: Mapping[str, torch.Size],
                   grid_size: Tuple[int, int],
                   optional: Collection[str] = (),
                   interpolation: str = 'bicubic',
                   antialias: bool = True) -> Tuple[Dict[str, torch.Tensor], FitReport]:
    """Match an MMSeg-named ViT state dict to a backbone, strictly.

    Args:
        state_dict: Output of :func:`to_mmseg_state_dict`.
        target: The backbone's ``{name: shape}`` (every parameter and buffer).
        grid_size: The backbone's patch grid ``(H / p, W / p)`` at its ``img_size``.
        optional: Target keys the file need not hold (prompts): left at their init.
        interpolation: Mode for resampling the position embedding.
        antialias: Antialias when the grid shrinks (timm's default).

    Returns:
        ``(state_dict to load, report)``: every non-optional target key, with the
        position embedding resampled to ``(1, 1 + H * W, C)``.

    Raises:
        ValueError: Naming every problem at once: another patch size, input channels,
            width or depth; a patch bias the backbone lacks (or the reverse); keys the
            backbone has no place for (other than the classifier head and an unused
            final norm); backbone weights the file lacks; shape mismatches.
    """
    sd = dict(state_dict)
    report = FitReport()
    problems: List[str] = []

    pk = 'patch_embed.projection.weight'
    if pk in sd and pk in target:
        have, want = tuple(sd[pk].shape), tuple(target[pk])
        if have[2:] != want[2:]:
            problems.append(f'patch size: the file has {have[2]}x{have[3]} patches, the '
                            f'backbone {want[2]}x{want[3]} (patch_size) [{pk}: {have} vs {want}]')
        if have[1] != want[1]:
            problems.append(f'input channels: the file has {have[1]}, the backbone {want[1]} '
                            '(in_channels)')
        if have[0] != want[0]:
            problems.append(f'width: the file has embed_dims={have[0]}, the backbone '
                            f'{want[0]} (embed_dims)')
    depth, own_depth = _depth(sd), _depth(target)
    if depth != own_depth:
        problems.append(f'depth: the file has {depth} transformer layers, the backbone '
                        f'{own_depth} (num_layers)')

    # Position embedding: a [CLS] entry of zeros if the file has none (timm's
    # no_embed_class), then resample the grid to the backbone's.
    pos = sd.get('pos_embed')
    if pos is not None and 'pos_embed' in target and pos.dim() == 3 \
            and pos.shape[-1] == target['pos_embed'][-1]:
        if _grid_of(pos.shape[1]) is not None and target['pos_embed'][1] > 1:
            pos = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)
            report.notes.append('no [CLS] position entry in the file: zeros')
        try:
            new = resample_pos_embed(pos, grid_size, 1, interpolation, antialias)
        except ValueError as err:
            problems.append(str(err))
        else:
            if new is not pos:
                side = _grid_of(pos.shape[1] - 1)
                report.resampled = ((side, side), tuple(grid_size))
            sd['pos_embed'] = new

    bias_key = 'patch_embed.projection.bias'
    if bias_key in sd and bias_key not in target:
        problems.append(f'the file has a patch-embedding bias ({bias_key}) but the backbone '
                        'was built with patch_bias=False: set patch_bias=True (timm and JAX '
                        'ViTs have this bias)')
    elif bias_key in target and bias_key not in sd:
        problems.append('the backbone has a patch-embedding bias the file lacks: set '
                        'patch_bias=False for this file')

    unexpected = sorted(k for k in sd if k not in target and k != bias_key)
    for key in unexpected:
        if is_ignorable(key) or (key.startswith('ln1.') and 'ln1.weight' not in target):
            report.ignored.append(key)
    unknown = [k for k in unexpected if k not in report.ignored
               and _layer_of(k) < own_depth]  # extra layers: reported as depth
    if unknown:
        problems.append(f'{len(unknown)} keys the backbone has no place for: '
                        + ', '.join(unknown[:12]) + (' ...' if len(unknown) > 12 else ''))

    missing = sorted(k for k in target if k not in sd and k not in optional
                     and k != bias_key and _layer_of(k) < depth)
    if missing:
        hint = ' (final_norm=True, but the file has no final norm)' \
            if any(k.startswith('ln1.') for k in missing) else ''
        problems.append(f'{len(missing)} backbone weights not in the file{hint}: '
                        + ', '.join(missing[:12]) + (' ...' if len(missing) > 12 else ''))

    mismatched = [f'{k}: {tuple(sd[k].shape)} in the file, {tuple(target[k])} here'
                  for k in sorted(target) if k in sd and k != pk
                  and tuple(sd[k].shape) != tuple(target[k])]  # pk: reported above
    if mismatched:
        problems.append('shape mismatches:\n    ' + '\n    '.join(mismatched[:24]))

    if problems:
        raise ValueError('pretrained ViT does not fit this backbone:\n  - '
                         + '\n  - '.join(problems))
    out = {k: sd[k] for k in target if k in sd}
    report.loaded = list(out)
    report.initial = sorted(k for k in target if k not in sd)
    return out, report


def infer_backbone_kwargs(state_dict: Mapping[str, torch.Tensor],
                          num_heads: Optional[int] = None) -> Dict[str, Any]:
    """The MMSeg ``VisionTransformer`` arguments an MMSeg-named ViT state dict fits.

    ``img_size`` is the pretraining size (any multiple of the patch size works, the
    position embedding is resampled at load). ``num_heads`` cannot be read from torch
    weights and is only included when given (JAX files record it).
    """
    proj = state_dict['patch_embed.projection.weight']                   # (C, 3, p, p)
    embed_dims, in_channels, patch_size = proj.shape[0], proj.shape[1], proj.shape[2]
    kwargs: Dict[str, Any] = dict(patch_size=int(patch_size), in_channels=int(in_channels),
                                  embed_dims=int(embed_dims),
                                  num_layers=_depth(state_dict))
    pos = state_dict.get('pos_embed')
    if pos is not None:
        side = _grid_of(pos.shape[1] - 1) or _grid_of(pos.shape[1])
        if side:
            kwargs['img_size'] = int(side * patch_size)
    fc1 = state_dict.get('layers.0.ffn.layers.0.0.weight')
    if fc1 is not None:
        ratio = fc1.shape[0] / embed_dims
        kwargs['mlp_ratio'] = int(ratio) if ratio == int(ratio) else ratio
    if num_heads:
        kwargs['num_heads'] = int(num_heads)
    kwargs['qkv_bias'] = 'layers.0.attn.attn.in_proj_bias' in state_dict
    kwargs['patch_bias'] = 'patch_embed.projection.bias' in state_dict
    kwargs['with_cls_token'] = 'cls_token' in state_dict
    kwargs['pre_norm'] = 'ln_pre.weight' in state_dict
    kwargs['final_norm'] = 'ln1.weight' in state_dict
    return kwargs
