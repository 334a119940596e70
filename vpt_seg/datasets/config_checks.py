"""A config's datasets checked before anything is built: each dataloader's folders exist,
hold images with annotations and at least one valid label, and the heads' class count
is the dataset's (the start-up checks of ``tools/train.py``, ``tools/test.py`` and
``tools/check_data.py``)."""
import os.path as osp

from mmengine.config import Config

from .checks import check_class_counts, check_split_has_labels, check_split_layout, head_classes

__all__ = ['prepare_cfg', 'check_loader']


def _dataset_dirs(dataset: dict):
    """The folders a dataset config reads from (MMSeg's data_root + data_prefix layout)."""
    if dataset.get('type') in ('ConcatDataset', 'RepeatDataset', 'ClassBalancedDataset'):
        inner = dataset.get('datasets') or [dataset.get('dataset')]
        for d in inner:
            yield from _dataset_dirs(d)
        return
    root = dataset.get('data_root', '') or ''
    prefixes = dataset.get('data_prefix') or {}
    if not prefixes:
        if root:
            yield 'data_root', root
        return
    for key, prefix in prefixes.items():
        yield key, osp.join(root, prefix)


def prepare_cfg(cfg: Config, training: bool) -> Config:
    """Fail early, naming the folder or file, when a dataset is not where the config says
    (a missing folder, an empty split, images without annotations, a split without a
    single valid label) or does not fit the model (heads with another ``num_classes``
    than the dataset's classes).

    Raises:
        FileNotFoundError: a dataset folder (``data_root``/``data_prefix``) is missing or
            holds no images, or images have no annotation.
        DataError: every pixel of the split is ignored.
        ClassCountError: a head's ``num_classes`` is not the dataset's class count.
    """
    loaders = ('train_dataloader', 'val_dataloader') if training else ('test_dataloader',)
    for loader in loaders:
        if cfg.get(loader) is None or (loader == 'val_dataloader' and cfg.get('val_cfg') is None):
            continue
        check_loader(cfg, loader)
    return cfg


def check_loader(cfg: Config, loader: str):
    """The checks of :func:`prepare_cfg` for one dataloader (``'train_dataloader'``, ...).

    Raises:
        FileNotFoundError: a dataset folder is missing or holds no images, or images have
            no annotation.
        ClassCountError: a head's ``num_classes`` is not the dataset's class count.
    """
    for key, path in _dataset_dirs(cfg[loader]['dataset']):
        if path and '://' not in path and not osp.isdir(path):
            raise FileNotFoundError(
                f'{loader}: dataset folder {path!r} ({key}) does not exist. Put the data '
                'there (ADE20k: data/ade/ADEChallengeData2016/{images,annotations}/'
                '{training,validation}) or point the config at it, e.g. --cfg-options '
                f'{loader}.dataset.data_root=/path/to/ADEChallengeData2016')
    _check_layout(cfg, loader)


def _check_layout(cfg: Config, loader: str):
    """An empty split, or images without annotations, named before anything is built."""
    from mmengine.registry import init_default_scope
    from mmseg.datasets import BaseSegDataset
    from mmseg.registry import DATASETS
    dataset = cfg[loader]['dataset']
    if dataset.get('type') in ('ConcatDataset', 'RepeatDataset', 'ClassBalancedDataset'):
        return
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    built = DATASETS.build(dict(dataset, lazy_init=True, pipeline=[]))
    if isinstance(built, BaseSegDataset):
        prefix = dict(dataset.get('data_prefix') or {})
        where = osp.join(dataset.get('data_root', '') or '', prefix.get('img_path', ''))
        data_list = built.load_data_list()
        check_split_layout(data_list, f'{loader}: {where}')
        check_split_has_labels(data_list, f'{loader}: {where}', built.ignore_index)
        check_class_counts(head_classes(cfg.model), built.metainfo.get('classes'),
                           f'{loader} ({type(built).__name__}, {where})')
