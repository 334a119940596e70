"""Classification heads on the final [CLS] embedding (VPT's image-classification setup).

The VPT paper classifies with a linear layer on the last layer's [CLS] token; its
appendix also compares MLP heads (hidden layers of Linear -> ReLU -> BatchNorm ->
Dropout, then a final Linear). Both heads own their loss, like MMSeg's decode heads:
softmax cross-entropy over one class per image, or with ``multi_label=True`` one sigmoid
per class (binary cross-entropy on multi-hot tags, as for image-level tags from a
segmentation dataset, :class:`~vpt_seg.datasets.ADE20KTagsDataset`).
"""
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import nn

__all__ = ['LinearClsHead', 'MLPClsHead']


class _ClsHead(nn.Module):
    """Shared loss on ``(B, K)`` logits: cross-entropy (optionally label-smoothed) over
    class indices, or with ``multi_label`` binary cross-entropy over multi-hot labels."""

    def __init__(self, in_channels: int, num_classes: int, loss_weight: float = 1.0,
                 label_smoothing: float = 0.0, multi_label: bool = False):
        super().__init__()
        if num_classes < (1 if multi_label else 2):
            raise ValueError(f'num_classes must be >= {1 if multi_label else 2}, got '
                             f'{num_classes}')
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}')
        if multi_label and label_smoothing:
            raise ValueError('label_smoothing applies to the single-label cross-entropy; '
                             'with multi_label=True leave it at 0')
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.loss_weight = loss_weight
        self.label_smoothing = label_smoothing
        self.multi_label = multi_label

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{'loss_cls': scalar}`` from ``(B, K)`` logits and ``(B,)`` class indices, or
        with ``multi_label`` ``(B, K)`` multi-hot labels (BCE, mean over all entries)."""
        if self.multi_label:
            if labels.shape != logits.shape:
                raise ValueError(f'multi-label loss needs (B, K) multi-hot labels shaped '
                                 f'like the logits {tuple(logits.shape)}, got '
                                 f'{tuple(labels.shape)}')
            loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        else:
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return dict(loss_cls=self.loss_weight * loss)


@MODELS.register_module()
class LinearClsHead(_ClsHead):
    """``(B, C) -> (B, K)``: dropout, then one linear layer (the paper's head).

    Args:
        in_channels: Width ``C`` of the [CLS] embedding.
        num_classes: Number of classes ``K``.
        dropout: Dropout on the embedding before the linear layer.
        loss_weight: Multiplier of the loss.
        label_smoothing: Label smoothing of the cross-entropy loss (single-label only).
        multi_label: One independent sigmoid per class instead of a softmax: the loss
            is binary cross-entropy on ``(B, K)`` multi-hot labels and
            :class:`~vpt_seg.models.VPTClassifier` predicts sigmoid scores and every
            class scoring above 0.5.
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
        loss_weight: Multiplier of the loss.
        label_smoothing: Label smoothing of the cross-entropy loss (single-label only).
        multi_label: One independent sigmoid per class instead of a softmax: the loss
            is binary cross-entropy on ``(B, K)`` multi-hot labels and
            :class:`~vpt_seg.models.VPTClassifier` predicts sigmoid scores and every
            class scoring above 0.5.
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
