"""Classification heads on the final [CLS] embedding (VPT's image-classification setup).

The VPT paper classifies with a linear layer on the last layer's [CLS] token; its
appendix also compares MLP heads (hidden layers of Linear -> ReLU -> BatchNorm ->
Dropout, then a final Linear). Both heads own their loss, like MMSeg's decode heads.
"""
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import nn

__all__ = ['LinearClsHead', 'MLPClsHead']


class _ClsHead(nn.Module):
    """Shared loss: cross-entropy on ``(B, K)`` logits, optionally label-smoothed."""

    def __init__(self, in_channels: int, num_classes: int, loss_weight: float = 1.0,
                 label_smoothing: float = 0.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f'num_classes must be >= 2, got {num_classes}')
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}')
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.loss_weight = loss_weight
        self.label_smoothing = label_smoothing

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``(B, K)`` logits and ``(B,)`` class indices -> ``{'loss_cls': scalar}``."""
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return dict(loss_cls=self.loss_weight * loss)


@MODELS.register_module()
class LinearClsHead(_ClsHead):
    """``(B, C) -> (B, K)``: dropout, then one linear layer (the paper's head).

    Args:
        in_channels: Width ``C`` of the [CLS] embedding.
        num_classes: Number of classes ``K``.
        dropout: Dropout on the embedding before the linear layer.
        loss_weight: Multiplier of the cross-entropy loss.
        label_smoothing: Label smoothing of the cross-entropy loss.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0, **kwargs):
        super().__init__(in_channels, num_classes, **kwargs)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x))                                  # (B, K)


@MODELS.register_module()
class MLPClsHead(_ClsHead):
    """``(B, C) -> (B, K)``: hidden blocks ``Linear -> ReLU -> Norm -> Dropout``, then a
    final linear layer (the paper's "MLP-k" heads have ``k - 1`` hidden blocks).

    Args:
        in_channels: Width ``C`` of the [CLS] embedding.
        num_classes: Number of classes ``K``.
        hidden_channels: Width of each hidden block (an int for one block, a list for
            several); None = one block of width ``in_channels``.
        norm: ``'BN'`` (BatchNorm1d, as in the paper's code), ``'LN'`` or None.
        dropout: Dropout after each hidden block.
        loss_weight: Multiplier of the cross-entropy loss.
        label_smoothing: Label smoothing of the cross-entropy loss.
    """

    NORMS = {'BN': nn.BatchNorm1d, 'LN': nn.LayerNorm, None: None}

    def __init__(self,
                 in_channels: int,
                 num_classes: int,
                 hidden_channels: Optional[Union[int, Sequence[int]]] = None,
                 norm: Optional[str] = 'BN',
                 dropout: float = 0.1,
                 **kwargs):
        super().__init__(in_channels, num_classes, **kwargs)
        if norm not in self.NORMS:
            raise ValueError(f"norm must be one of 'BN', 'LN', None; got {norm!r}")
        if hidden_channels is None:
            hidden_channels = [in_channels]
        elif isinstance(hidden_channels, int):
            hidden_channels = [hidden_channels]
        if not hidden_channels:
            raise ValueError('MLPClsHead needs at least one hidden block; use LinearClsHead '
                             'for a linear head')
        blocks, width = [], in_channels
        for hidden in hidden_channels:
            blocks += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            if norm is not None:
                blocks.append(self.NORMS[norm](hidden))
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
            width = hidden
        self.hidden = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(x))                                   # (B, K)
