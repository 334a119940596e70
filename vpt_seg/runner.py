"""Checks a config before the runner starts, so mistakes surface as clear errors."""
import os.path as osp

from mmengine.config import Config

__all__ = ['load_cfg', 'prepare_cfg']


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


def load_cfg(args) -> Config:
    """Load ``args.config`` and apply the flags tools/train.py and tools/test.py share:
    ``--launcher``, ``--cfg-options`` and ``--work-dir`` (default ``work_dirs/<config>``)."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def prepare_cfg(cfg: Config, training: bool) -> Config:
    """Fail early, naming the missing folder, when a dataset is not where the config says.

    Raises:
        FileNotFoundError: a dataset folder (``data_root``/``data_prefix``) is missing.
    """
    loaders = ('train_dataloader', 'val_dataloader') if training else ('test_dataloader',)
    for loader in loaders:
        if cfg.get(loader) is None or (loader == 'val_dataloader' and cfg.get('val_cfg') is None):
            continue
        for key, path in _dataset_dirs(cfg[loader]['dataset']):
            if path and '://' not in path and not osp.isdir(path):
                raise FileNotFoundError(
                    f'{loader}: dataset folder {path!r} ({key}) does not exist. Put the data '
                    'there (ADE20k: data/ade/ADEChallengeData2016/{images,annotations}/'
                    '{training,validation}) or point the config at it, e.g. --cfg-options '
                    f'{loader}.dataset.data_root=/path/to/ADEChallengeData2016')
    return cfg
