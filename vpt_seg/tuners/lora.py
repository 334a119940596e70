"""LoRA (Hu et al., ICLR 2022) for the linear layers of a ViT's blocks, in plain torch.

A targeted linear layer ``y = W x + b`` becomes

    y = W x + b + (alpha / r) * B A dropout(x)          A: (r, in), B: (out, r)

with ``W`` and ``b`` frozen and only ``A`` and ``B`` tuned. ``B`` starts at zero (the
paper's init; ``A`` as torch's ``nn.Linear``, Kaiming-uniform), so a fresh task computes
exactly the frozen model. The module never edits the pretrained weights: the backbone
adds :meth:`LoRA.delta` to the layer's output (:class:`~vpt_seg.tuners.terms.TaskBatch`),
and :meth:`LoRA.merged` gives ``(alpha / r) B A`` for folding it into ``W``.

Targets are named as in every ViT: ``q``, ``k``, ``v`` (the attention's query, key and
value projections, packed or separate), ``proj`` (the attention output), ``fc1`` and
``fc2`` (the MLP; ``fc1`` covers both input projections of a SwiGLU MLP). Each backbone
says which *sites* (its linear layers, or slices of a packed one) a target names.
"""
import math
import numbers
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['LORA_TARGETS', 'check_lora_options', 'LowRank', 'LoRA']

#: What ``targets`` may name.
LORA_TARGETS = ('q', 'k', 'v', 'proj', 'fc1', 'fc2')

_OPTION = 'model.backbone.lora'


def check_lora_options(cfg: Mapping) -> dict:
    """Validate a backbone's ``lora`` option; errors name the option and what it accepts.

    Args:
        cfg: ``dict(rank=8, alpha=8, targets=('q', 'v'), dropout=0.0)``; missing keys
            take these defaults.

    Returns:
        The options as ``dict(rank=int, alpha=float, targets=tuple, dropout=float)``.

    Raises:
        ValueError: an unknown key, or a value of the wrong type or out of range.
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f'{_OPTION} must be None or a dict(rank=..., alpha=..., targets=..., '
                         f'dropout=...), got {cfg!r}')
    unknown = sorted(set(cfg) - {'rank', 'alpha', 'targets', 'dropout'})
    if unknown:
        raise ValueError(f'{_OPTION}: unknown keys {unknown}; it takes rank, alpha, targets, '
                         'dropout')
    rank = cfg.get('rank', 8)
    alpha = cfg.get('alpha', rank)
    targets = cfg.get('targets', ('q', 'v'))
    dropout = cfg.get('dropout', 0.0)
    if not isinstance(rank, numbers.Integral) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f'{_OPTION}.rank must be an integer >= 1 (the rank r of B A), got '
                         f'{rank!r}')
    if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or alpha <= 0:
        raise ValueError(f'{_OPTION}.alpha must be a number > 0 (updates are scaled by '
                         f'alpha / rank), got {alpha!r}')
    if isinstance(targets, str):
        targets = (targets,)
    if not isinstance(targets, Sequence) or not targets:
        raise ValueError(f'{_OPTION}.targets must be a non-empty list of {LORA_TARGETS}, got '
                         f'{targets!r}')
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad:
        raise ValueError(f'{_OPTION}.targets {bad} name no layer of a ViT block; targets are '
                         f'{LORA_TARGETS} (q/k/v: attention projections, proj: attention '
                         'output, fc1/fc2: the MLP)')
    if (not isinstance(dropout, numbers.Real) or isinstance(dropout, bool)
            or not 0.0 <= dropout < 1.0):
        raise ValueError(f'{_OPTION}.dropout must be a probability in [0, 1), got {dropout!r}')
    return dict(rank=int(rank), alpha=float(alpha),
                targets=tuple(dict.fromkeys(targets)), dropout=float(dropout))


class LowRank(nn.Module):
    """``x -> B A x`` for one site: ``A`` ``(r, in)``, ``B`` ``(out, r)``, B zero at init."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.empty(out_features, rank))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear, and LoRA's code
        nn.init.zeros_(self.B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                # (..., in) -> (..., out)
        return F.linear(F.linear(x, self.A.to(x.dtype)), self.B.to(x.dtype))


class LoRA(nn.Module):
    """Low-rank updates of the linear layers of every block.

    Args:
        sites: Per block, ``{site: (in_features, out_features)}``: the linear layers (or
            slices of a packed one) the targets name in that backbone (its
            ``lora_sites``).
        rank, alpha, targets, dropout: See :func:`check_lora_options`.

    State-dict keys: ``layers.{block}.{site}.A`` / ``.B``.
    """

    def __init__(self, sites: Sequence[Mapping[str, Tuple[int, int]]], rank: int = 8,
                 alpha: float = 8.0, targets: Sequence[str] = ('q', 'v'),
                 dropout: float = 0.0):
        super().__init__()
        self.rank, self.alpha, self.targets = rank, alpha, tuple(targets)
        self.scale = alpha / rank
        self.layers = nn.ModuleList(
            nn.ModuleDict({s: LowRank(i, o, rank) for s, (i, o) in block.items()})
            for block in sites)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self):
        """The paper's init: ``B = 0``, so the updates start at zero."""
        for block in self.layers:
            for low in block.values():
                low.reset_parameters()

    def delta(self, layer: int, site: str, x: torch.Tensor) -> Optional[torch.Tensor]:
        """``(alpha / r) B A dropout(x)`` of ``site`` in block ``layer``, or None where
        the site is not tuned: ``(B, N, in) -> (B, N, out)``."""
        sites = self.layers[layer]
        if site not in sites:
            return None
        return sites[site](self.dropout(x)) * self.scale

    def merged(self, layer: int, site: str) -> torch.Tensor:
        """``(alpha / r) B A``, ``(out, in)``: what folding adds to the site's weight."""
        low = self.layers[layer][site]
        return (low.B @ low.A) * self.scale

    def sites(self) -> Dict[int, Tuple[str, ...]]:
        return {i: tuple(block) for i, block in enumerate(self.layers)}

    def extra_repr(self) -> str:
        return f'rank={self.rank}, alpha={self.alpha:g}, targets={list(self.targets)}'
