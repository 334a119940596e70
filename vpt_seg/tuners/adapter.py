"""AdaptFormer's parallel adapter (Chen et al., NeurIPS 2022), in plain torch.

Beside each block's MLP runs a bottleneck on the same normed input:

    x_out = x + MLP(LN(x)) + s * up(ReLU(down(LN(x))))       down: C -> w, up: w -> C

``up`` starts at zero (weights and bias, as AdaptFormer's code), so a fresh task computes
exactly the frozen model; ``down`` is initialised as torch's ``nn.Linear``, its bias zero.
Where the ViT scales its MLP branch (LayerScale) or drops it (drop-path), the adapter
branch is added outside both, with its own scale ``s``.
"""
import numbers
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['check_adapter_options', 'Bottleneck', 'Adapter']

_OPTION = 'model.backbone.adapter'


def check_adapter_options(cfg: Mapping) -> dict:
    """Validate a backbone's ``adapter`` option.

    Args:
        cfg: ``dict(width=64, scale=0.1, dropout=0.0)``; missing keys take these defaults.

    Returns:
        ``dict(width=int, scale=float, dropout=float)``.

    Raises:
        ValueError: an unknown key, or a value of the wrong type or out of range.
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f'{_OPTION} must be None or a dict(width=..., scale=..., '
                         f'dropout=...), got {cfg!r}')
    unknown = sorted(set(cfg) - {'width', 'scale', 'dropout'})
    if unknown:
        raise ValueError(f'{_OPTION}: unknown keys {unknown}; it takes width, scale, dropout')
    width, scale = cfg.get('width', 64), cfg.get('scale', 0.1)
    dropout = cfg.get('dropout', 0.0)
    if not isinstance(width, numbers.Integral) or isinstance(width, bool) or width < 1:
        raise ValueError(f'{_OPTION}.width must be an integer >= 1 (the bottleneck width), '
                         f'got {width!r}')
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        raise ValueError(f'{_OPTION}.scale must be a number (s, the adapter branch\'s '
                         f'scale), got {scale!r}')
    if (not isinstance(dropout, numbers.Real) or isinstance(dropout, bool)
            or not 0.0 <= dropout < 1.0):
        raise ValueError(f'{_OPTION}.dropout must be a probability in [0, 1), got {dropout!r}')
    return dict(width=int(width), scale=float(scale), dropout=float(dropout))


class Bottleneck(nn.Module):
    """``x -> up(dropout(ReLU(down(x))))``, ``(..., C) -> (..., C)``, ``up`` zero at init."""

    def __init__(self, embed_dims: int, width: int, dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(embed_dims, width)
        self.up = nn.Linear(width, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self):
        """``down`` as ``nn.Linear`` with a zero bias; ``up`` zero (AdaptFormer's init)."""
        self.down.reset_parameters()
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = F.relu(F.linear(x, self.down.weight.to(dtype), self.down.bias.to(dtype)))
        return F.linear(self.dropout(h), self.up.weight.to(dtype), self.up.bias.to(dtype))


class Adapter(nn.Module):
    """One AdaptFormer bottleneck per block.

    Args:
        num_layers: Blocks of the ViT (each gets an adapter).
        embed_dims: Token width ``C``.
        width: Bottleneck width ``w``.
        scale: ``s``.
        dropout: Dropout inside the bottleneck (after the ReLU).

    State-dict keys: ``layers.{block}.down.weight``, ``.down.bias``, ``.up.weight``, ``.up.bias``.
    """

    def __init__(self, num_layers: int, embed_dims: int, width: int = 64, scale: float = 0.1,
                 dropout: float = 0.0):
        super().__init__()
        self.width, self.scale = width, scale
        self.layers = nn.ModuleList(Bottleneck(embed_dims, width, dropout)
                                    for _ in range(num_layers))

    def reset_parameters(self):
        for bottleneck in self.layers:
            bottleneck.reset_parameters()

    def delta(self, layer: int, x: torch.Tensor) -> Optional[torch.Tensor]:
        """``s * up(ReLU(down(x)))`` for block ``layer``: ``(B, N, C) -> (B, N, C)``;
        ``x`` is the block's normed MLP input."""
        return self.layers[layer](x) * self.scale

    def extra_repr(self) -> str:
        return f'width={self.width}, scale={self.scale:g}'
