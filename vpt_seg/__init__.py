"""vpt-seg: Visual Prompt Tuning for MMSegmentation.

Importing the package applies the compatibility fixes of :mod:`vpt_seg.compat` (MMSeg
on mmcv-lite, MMEngine resume on torch >= 2.6) and registers its modules in MMSeg's and
MMEngine's registries, so configs load it with
``custom_imports = dict(imports=['vpt_seg'], allow_failed_imports=False)``.
"""
from . import compat  # noqa: F401  (must precede every mmseg import)
from .models import *  # noqa: F401,F403
from .engine import *  # noqa: F401,F403
from .datasets import *  # noqa: F401,F403
from .evaluation import *  # noqa: F401,F403
from .prompt import VisualPrompt
from .task_file import read_task_file  # registers .safetensors with MMEngine
from .loading import export_task, load_task_model

__version__ = '0.1.0'
