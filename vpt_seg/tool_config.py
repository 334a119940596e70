"""A tool's config: loaded from its resolved path, with the flags ``tools/train.py`` and
``tools/test.py`` share applied (``--launcher``, ``--cfg-options``, ``--work-dir``), and a
pretrained file named on the command line marked as the user's word."""
import os.path as osp

from mmengine.config import Config

from .config_paths import resolve_config
from .formats.pretrained_key import NAMED_FLAG

__all__ = ['load_cfg', 'mark_named_pretrained']


def mark_named_pretrained(cfg: Config, cfg_options) -> Config:
    """When ``--cfg-options`` names the backbone's pretrained file (a key its class's
    ``names_pretrained`` accepts: ``model.backbone.init_cfg(.checkpoint)`` for MMSeg's
    layout, ``model.backbone.checkpoint`` for ``PromptedTimmViT``), that file is the
    user's word: set the backbone's ``prefer_configured``, so a task checkpoint takes its
    frozen weights from it rather than from the file it records (its sha256 is still
    checked). An inherited one leaves the recorded file first; a backbone that is not
    ours is left as it is."""
    from mmseg.registry import MODELS
    backbone = (cfg.get('model') or {}).get('backbone')
    kind = backbone.get('type') if isinstance(backbone, dict) else None
    cls = MODELS.get(kind) if isinstance(kind, str) else None
    if not hasattr(cls, 'names_pretrained'):
        return cfg
    if any(cls.names_pretrained(str(k)) for k in (cfg_options or {})):
        backbone[NAMED_FLAG] = True
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
