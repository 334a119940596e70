"""vpt-seg: Visual Prompt Tuning for MMSegmentation.

Importing the package applies :mod:`vpt_seg.patches` (every change vpt-seg makes to
mmcv, MMEngine and MMSeg, in one place) and registers its modules in MMSeg's and
MMEngine's registries, so configs load it with
``custom_imports = dict(imports=['vpt_seg'], allow_failed_imports=False)``.

Layout: ``tuners/`` the method in plain torch; ``models/``, ``engine/``, ``datasets/``,
``evaluation/`` its MMSeg and MMEngine modules; ``formats/`` weight and task files and
the loading rules; ``serving/`` many tasks on one backbone; ``experiments/`` the study
and the benchmark; ``config_paths.py``, ``tool_config.py`` and ``cli.py`` what the tools share.
"""
from . import patches  # noqa: F401  (must precede every mmseg import)
from .datasets import *  # noqa: F401,F403
from .engine import *  # noqa: F401,F403
from .evaluation import *  # noqa: F401,F403
from .formats.export import export_task  # noqa: F401
from .formats.fitting import fit_state_dict, resample_pos_embed  # noqa: F401
from .formats.fold import fold_task  # noqa: F401
from .formats.loading import load_task_model  # noqa: F401
from .formats.task_file import read_task_file  # noqa: F401
from .formats.weights import load_vit_checkpoint  # noqa: F401
from .models import *  # noqa: F401,F403
from .serving.multitask import MultiTaskViT, build_shared_backbone  # noqa: F401
from .tuners import Adapter, LoRA, VisualPrompt  # noqa: F401
from .tuners.class_list import read_class_file, set_task_classes  # noqa: F401

__version__ = '0.1.0'
