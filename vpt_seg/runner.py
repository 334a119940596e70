"""What the tools share before MMEngine's runner starts: finding a config (also inside an
installed package), applying the common flags, checking data folders, and distributed
runs on machines without GPUs."""
import contextlib
import logging
import os
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger, print_log

__all__ = ['config_dirs', 'tools_dir', 'resolve_config', 'load_cfg', 'prepare_cfg',
           'check_loader', 'dist_backend', 'setup_distributed', 'quiet_logger',
           'mark_named_pretrained']

_PACKAGE = osp.dirname(osp.abspath(__file__))
_SCOPE = 'vpt_seg::'


def _shipped(name: str) -> str:
    """``vpt_seg/.mim/<name>`` in an installed package, else ``<repo>/<name>``."""
    mim = osp.join(_PACKAGE, '.mim', name)
    return mim if osp.isdir(mim) else osp.join(osp.dirname(_PACKAGE), name)


def config_dirs() -> str:
    """The project's ``configs/`` folder (shipped as ``vpt_seg/.mim/configs`` when installed)."""
    return _shipped('configs')


def tools_dir() -> str:
    """The project's ``tools/`` folder (shipped as ``vpt_seg/.mim/tools`` when installed)."""
    return _shipped('tools')


def resolve_config(path: str) -> str:
    """A config file path: ``path`` itself if it exists, else the project's own config of
    that name, as OpenMMLab's ``.mim`` packaging resolves ``package::`` names.

    ``configs/demo/x.py``, ``demo/x.py`` and ``vpt_seg::demo/x.py`` all name
    ``<configs>/demo/x.py``, so the tools work from any folder with an installed package.

    Raises:
        FileNotFoundError: neither ``path`` nor a shipped config of that name exists.
    """
    if osp.isfile(path):
        return path
    rel = path[len(_SCOPE):] if path.startswith(_SCOPE) else path
    rel = rel[len('configs/'):] if rel.startswith('configs/') else rel
    shipped = osp.join(config_dirs(), rel)
    if not osp.isabs(rel) and osp.isfile(shipped):
        return shipped
    raise FileNotFoundError(f'config not found: {path!r} (neither a file here nor one of '
                            f"vpt-seg's configs under {config_dirs()})")


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


@contextlib.contextmanager
def quiet_logger(level: int = logging.WARNING):
    """Lower MMEngine's current logger to ``level`` for a block (e.g. its long
    ``init_weights`` report), and restore it after."""
    logger = MMLogger.get_current_instance()
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def mark_named_pretrained(cfg: Config, cfg_options) -> Config:
    """When ``--cfg-options`` names the backbone's pretrained file
    (``model.backbone.init_cfg(.checkpoint)``, ``model.backbone.checkpoint`` for
    ``PromptedTimmViT``), that file is the user's word: set the backbone's
    ``prefer_init_cfg`` / ``prefer_checkpoint``, so a task checkpoint takes its frozen
    weights from it rather than from the file it records (its sha256 is still checked).
    An inherited one leaves the recorded file first."""
    backbone = (cfg.get('model') or {}).get('backbone')
    if not isinstance(backbone, dict):
        return cfg
    keys = [str(k) for k in (cfg_options or {})]
    if backbone.get('type') == 'PromptedVisionTransformer' and any(
            k.startswith('model.backbone.init_cfg') for k in keys):
        backbone['prefer_init_cfg'] = True
    if backbone.get('type') == 'PromptedTimmViT' and 'model.backbone.checkpoint' in keys:
        backbone['prefer_checkpoint'] = True
    return cfg


def load_cfg(args) -> Config:
    """Load ``args.config`` and apply the flags tools/train.py and tools/test.py share:
    ``--launcher``, ``--cfg-options`` (see :func:`mark_named_pretrained`) and
    ``--work-dir`` (default ``work_dirs/<config>``)."""
    args.config = resolve_config(args.config)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
        mark_named_pretrained(cfg, args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


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

    from .datasets.checks import (
        check_class_counts,
        check_split_has_labels,
        check_split_layout,
        head_classes,
    )
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


def dist_backend(backend: str, cuda: bool) -> str:
    """The process group's backend for a config's ``env_cfg.dist_cfg.backend`` on this device.

    MMSeg's runtime base sets ``nccl``, which needs GPUs; without CUDA it becomes ``gloo``,
    so one config serves both. Any other choice is kept.
    """
    return 'gloo' if backend == 'nccl' and not cuda else backend


def setup_distributed(cfg: Config) -> Config:
    """Let ``--launcher pytorch`` (``tools/dist_train.sh``) run on machines without GPUs.

    MMEngine's launcher calls ``torch.cuda.set_device`` and wraps the model with
    ``device_ids=[LOCAL_RANK]``, both of which need CUDA. Without CUDA, this starts the
    process group itself with ``gloo`` (the config's ``env_cfg.dist_cfg.backend``;
    ``nccl``, MMSeg's default, is replaced by ``gloo`` with one log line, see
    :func:`dist_backend`) from the launcher's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...), so the runner finds it started, and has DDP wrap the CPU model with
    ``device_ids=None``. With CUDA, or without a launcher, nothing changes.

    Raises:
        ValueError: no CUDA and a backend other than nccl or gloo, or a launcher other
            than pytorch.
    """
    if cfg.get('launcher', 'none') == 'none' or torch.cuda.is_available():
        return cfg
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    configured = dist_cfg.pop('backend', 'nccl')
    backend = dist_backend(configured, cuda=False)
    if backend != 'gloo':
        raise ValueError(
            f"distributed training without GPUs needs the gloo backend, but the config has "
            f"env_cfg.dist_cfg.backend='{configured}'; add "
            "--cfg-options env_cfg.dist_cfg.backend=gloo")
    if cfg.launcher != 'pytorch':
        raise ValueError(f'--launcher {cfg.launcher} without GPUs is not supported; use '
                         '--launcher pytorch (tools/dist_train.sh, torchrun)')
    if configured != backend:
        cfg.merge_from_dict({'env_cfg.dist_cfg.backend': backend})
        if os.environ.get('RANK', '0') == '0':
            print_log(f"no CUDA device: the process group uses the gloo backend instead of "
                      f"the config's {configured} (env_cfg.dist_cfg.backend)", logger='current')
    import datetime

    import torch.distributed as torch_dist
    if not torch_dist.is_initialized():
        timeout = dist_cfg.pop('timeout', None)
        if timeout is not None:
            dist_cfg['timeout'] = datetime.timedelta(seconds=timeout)
        torch_dist.init_process_group(backend='gloo', rank=int(os.environ['RANK']),
                                      world_size=int(os.environ['WORLD_SIZE']), **dist_cfg)
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper.setdefault('device_ids', None)  # a CPU module: DDP takes no device ids
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    return cfg
