"""Multi-label metrics (image tags): mean average precision and macro F1."""
from typing import Dict, List, Sequence

import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmseg.registry import METRICS

__all__ = ['MeanAveragePrecision', 'average_precision']


def average_precision(scores, labels) -> torch.Tensor:
    """Per-class average precision of a ranking by score.

    For each class the samples are sorted by descending score (ties keep the sample
    order); AP is the mean, over the class's positives, of the precision at each
    positive's rank: ``AP = 1/|P| * sum_{i in P} TP(rank_i) / rank_i``. Without ties this
    equals ``sklearn.metrics.average_precision_score``.

    Args:
        scores: ``(N, K)`` scores (logits or probabilities); tensor or array.
        labels: ``(N, K)`` multi-hot labels (positive where > 0.5).

    Returns:
        ``(K,)`` float64 tensor of APs in ``[0, 1]``; NaN for a class without positives.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    labels = torch.as_tensor(labels) > 0.5
    if scores.dim() != 2 or scores.shape != labels.shape:
        raise ValueError(f'scores and labels must both be (N, K), got {tuple(scores.shape)} '
                         f'and {tuple(labels.shape)}')
    order = scores.sort(dim=0, descending=True, stable=True).indices   # (N, K)
    hits = labels.gather(0, order).double()                             # (N, K) by rank
    ranks = torch.arange(1, scores.shape[0] + 1, dtype=torch.float64)[:, None]
    precision = hits.cumsum(0) / ranks                                  # (N, K)
    num_pos = hits.sum(0)                                               # (K,)
    ap = (precision * hits).sum(0) / num_pos
    return torch.where(num_pos > 0, ap, torch.full_like(ap, float('nan')))


def _macro_f1(scores: torch.Tensor, labels: torch.Tensor, thr: float) -> float:
    """Macro F1 (percent) at ``score > thr``, over the classes where it is defined."""
    pred, gt = scores > thr, labels > 0.5
    tp = (pred & gt).sum(0).double()
    fp = (pred & ~gt).sum(0).double()
    fn = (~pred & gt).sum(0).double()
    denom = 2 * tp + fp + fn
    defined = denom > 0  # a class never present and never predicted has no F1
    if not defined.any():
        return float('nan')
    return (2 * tp[defined] / denom[defined]).mean().item() * 100


@METRICS.register_module()
class MeanAveragePrecision(BaseMetric):
    """mAP and macro F1 (percent) of multi-label predictions (image tags).

    Reads each data sample's ``pred_score`` ``(K,)`` (sigmoid scores, as
    :class:`~vpt_seg.models.VPTClassifier` with a ``multi_label`` head predicts) and
    multi-hot ``gt_label`` ``(K,)``. Reports, with the default prefix ``multi-label``:

    * ``mAP``: :func:`average_precision` averaged over the classes with at least one
      positive in the evaluated set (others have no AP);
    * ``F1``: macro F1 at ``score > thr``, averaged over the classes that are present
      or predicted at least once (F1 is 0/0 for the others).

    Args:
        thr: Score threshold of the F1 predictions (0.5 for sigmoid scores).
        collect_device: ``'cpu'`` or ``'gpu'``, for distributed collection.
        prefix: Prefix of the metric names (default ``multi-label``).
    """

    default_prefix = 'multi-label'

    def __init__(self, thr: float = 0.5, collect_device: str = 'cpu', prefix: str = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.thr = thr

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            score = torch.as_tensor(sample['pred_score']).detach().cpu().float().reshape(-1)
            label = torch.as_tensor(sample['gt_label']).detach().cpu().float().reshape(-1)
            if label.shape != score.shape:
                raise ValueError(
                    f'{type(self).__name__} needs a (K,) multi-hot gt_label per sample, like '
                    f'pred_score {tuple(score.shape)}; got gt_label of shape '
                    f'{tuple(torch.as_tensor(sample["gt_label"]).shape)} (single-label data '
                    'is measured by TopKAccuracy)')
            self.results.append(dict(score=score, label=label))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        scores = torch.stack([r['score'] for r in results])              # (N, K)
        labels = torch.stack([r['label'] for r in results])              # (N, K)
        ap = average_precision(scores, labels)
        present = ~ap.isnan()
        if not present.any():
            print_log('MeanAveragePrecision: no class has a positive sample; mAP is NaN',
                      logger='current')
            mean_ap = float('nan')
        else:
            mean_ap = ap[present].mean().item() * 100
        return {'mAP': mean_ap, 'F1': _macro_f1(scores, labels, self.thr)}
