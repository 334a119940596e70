"""Distributed runs on machines without GPUs: MMEngine's ``pytorch`` launcher with the
gloo backend and DDP over CPU modules."""
import datetime
import os

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.logging import print_log

__all__ = ['dist_backend', 'setup_distributed']


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
