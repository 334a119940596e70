"""Datasets: synthetic ADE20k-layout data for tests and the transfer study."""
from .synthetic import TASK_CLASSES, make_ade20k, render_sample

__all__ = ['TASK_CLASSES', 'make_ade20k', 'render_sample']
