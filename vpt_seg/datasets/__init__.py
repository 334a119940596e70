"""Datasets: synthetic ADE20k-layout data for tests and the transfer study, image folders,
and image-level tags from segmentation data."""
from .synthetic import TASK_CLASSES, make_ade20k, render_sample

__all__ = ['TASK_CLASSES', 'make_ade20k', 'render_sample']
from .image_folder import ImageFolderDataset, PackClsInputs  # noqa: E402
from .synthetic_cls import CLS_CLASSES, make_cls_folder, render_cls_sample  # noqa: E402

__all__ += ['ImageFolderDataset', 'PackClsInputs', 'CLS_CLASSES', 'make_cls_folder',
            'render_cls_sample']
from .ade_tags import ADE20KTagsDataset  # noqa: E402

__all__ += ['ADE20KTagsDataset']
from .checks import (  # noqa: E402
    CheckedLoadAnnotations,
    CheckedLoadImageFromFile,
    DataError,
    check_dataset,
    check_split_layout,
)

__all__ += ['CheckedLoadAnnotations', 'CheckedLoadImageFromFile', 'DataError',
            'check_dataset', 'check_split_layout']
