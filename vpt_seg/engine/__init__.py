from .checkpoint_io import download_checkpoint, load_from_http, load_from_local
from .class_list import ClassListError, ClassListHook
from .hooks import (
    DataCheckHook,
    NonFiniteCheckHook,
    NonFiniteError,
    SafeCheckpointHook,
    find_resumable_checkpoint,
)
from .lock import WorkDirLock, WorkDirLockedError
from .optim import TunedOptimWrapperConstructor

__all__ = ['TunedOptimWrapperConstructor', 'SafeCheckpointHook', 'NonFiniteCheckHook',
           'NonFiniteError', 'DataCheckHook', 'find_resumable_checkpoint', 'load_from_local',
           'load_from_http', 'download_checkpoint', 'WorkDirLock', 'WorkDirLockedError',
           'ClassListHook', 'ClassListError']
