"""Fit an MMSeg-named ViT state dict (:mod:`vpt_seg.formats.weights`) to a backbone.

Pure functions over state dicts (torch and timm only; no MMSeg):

* **Fit**: :func:`fit_state_dict` compares with the backbone's parameter
  shapes, resamples the position embedding to the backbone's grid once
  (:func:`resample_pos_embed`, timm's resampler, [CLS] entry kept apart), drops what a
  segmentation backbone does not use (classifier head, an unused final norm) and raises
  one clear error for anything else (patch size, width, depth, unknown keys, missing
  weights). The :class:`FitReport` it returns prints as the one-line load summary.
* **Infer** the backbone a file fits: :func:`infer_backbone_kwargs` (used by
  ``tools/convert_vit.py``).
"""
import math
import re
from dataclasses import dataclass, field
from typing import Any, Collection, Dict, List, Mapping, Optional, Tuple

import torch
from timm.layers import resample_abs_pos_embed

__all__ = ['FitReport', 'resample_pos_embed', 'fit_state_dict', 'infer_backbone_kwargs',
           'is_ignorable']

#: Keys (after conversion) a segmentation backbone never uses: classifier heads, the
#: pooled-feature norm, the old representation layer. Dropped and reported.
_IGNORABLE = re.compile(r'^(head|head_dist|fc_norm|pre_logits)(\.|$)')


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
    depth, own_depth = _check_architecture(sd, target, problems)
    _fit_pos_embed(sd, target, grid_size, interpolation, antialias, report, problems)
    _check_patch_bias(sd, target, problems)
    _check_keys(sd, target, optional, depth, own_depth, report, problems)
    if problems:
        raise ValueError('pretrained ViT does not fit this backbone:\n  - '
                         + '\n  - '.join(problems))
    out = {k: sd[k] for k in target if k in sd}
    report.loaded = list(out)
    report.initial = sorted(k for k in target if k not in sd)
    return out, report


def _check_architecture(sd, target, problems: List[str]) -> Tuple[int, int]:
    """Patch size, input channels, width (the patch embedding) and depth of the file
    against the backbone; ``(the file's depth, the backbone's)``."""
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
    return depth, own_depth


def _fit_pos_embed(sd, target, grid_size, interpolation: str, antialias: bool,
                   report: 'FitReport', problems: List[str]):
    """The file's position embedding resampled to the backbone's grid, in ``sd``."""
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


def _check_patch_bias(sd, target, problems: List[str]):
    """A patch-embedding bias on one side only."""
    bias_key = 'patch_embed.projection.bias'
    if bias_key in sd and bias_key not in target:
        problems.append(f'the file has a patch-embedding bias ({bias_key}) but the backbone '
                        'was built with patch_bias=False: set patch_bias=True (timm and JAX '
                        'ViTs have this bias)')
    elif bias_key in target and bias_key not in sd:
        problems.append('the backbone has a patch-embedding bias the file lacks: set '
                        'patch_bias=False for this file')


def _check_keys(sd, target, optional, depth: int, own_depth: int, report: 'FitReport',
                problems: List[str]):
    """Keys the backbone has no place for (the ignorable ones noted), backbone weights
    the file lacks, and shapes that differ (the patch embedding's: reported above)."""
    pk, bias_key = 'patch_embed.projection.weight', 'patch_embed.projection.bias'
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
