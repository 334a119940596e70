"""Metrics: top-k accuracy for classification tasks, mAP and F1 for multi-label tags."""
from .accuracy import TopKAccuracy, topk_accuracy
from .multilabel import MeanAveragePrecision, average_precision

__all__ = ['TopKAccuracy', 'topk_accuracy', 'MeanAveragePrecision', 'average_precision']
