"""Top-k classification accuracy as an MMEngine metric."""
from typing import Dict, List, Sequence, Union

import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmseg.registry import METRICS

__all__ = ['TopKAccuracy', 'topk_accuracy']


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor,
                  topk: Sequence[int] = (1, 5)) -> Dict[int, float]:
    """Percentage of samples whose label is among the ``k`` highest scores.

    Args:
        scores: ``(N, K)`` class scores (logits or probabilities).
        labels: ``(N,)`` class indices.
        topk: The values of ``k``; a ``k`` above ``K`` counts as ``K`` (always 100).

    Returns:
        ``{k: accuracy in percent}``.
    """
    maxk = min(max(topk), scores.shape[1])
    ranked = scores.topk(maxk, dim=1).indices                            # (N, maxk)
    hits = ranked == labels.view(-1, 1)
    return {k: hits[:, :min(k, maxk)].any(dim=1).float().mean().item() * 100 for k in topk}


@METRICS.register_module()
class TopKAccuracy(BaseMetric):
    """Top-k accuracy (percent) from ``pred_score`` and ``gt_label`` of each data sample.

    Args:
        topk: The ``k`` values, reported as ``accuracy/top1``, ``accuracy/top5``, ...
        collect_device: ``'cpu'`` or ``'gpu'``, for distributed collection.
        prefix: Prefix of the metric names (default ``accuracy``).
    """

    default_prefix = 'accuracy'

    def __init__(self, topk: Union[int, Sequence[int]] = (1, 5),
                 collect_device: str = 'cpu', prefix: str = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = (topk,) if isinstance(topk, int) else tuple(topk)
        if not self.topk or min(self.topk) < 1:
            raise ValueError(f'topk values must be >= 1, got {self.topk}')

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append(dict(score=sample['pred_score'].detach().cpu(),
                                     label=int(sample['gt_label'])))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        scores = torch.stack([r['score'] for r in results])
        labels = torch.tensor([r['label'] for r in results])
        if scores.shape[1] < max(self.topk):
            print_log(f'{scores.shape[1]} classes: top-{max(self.topk)} accuracy is 100 by '
                      'definition', logger='current')
        acc = topk_accuracy(scores, labels, self.topk)
        return {f'top{k}': v for k, v in acc.items()}
