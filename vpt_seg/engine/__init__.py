from .checkpoint_io import load_from_local
from .hooks import (DataCheckHook, NonFiniteCheckHook, NonFiniteError, SafeCheckpointHook,
                    find_resumable_checkpoint)
from .optim import TunedOptimWrapperConstructor

__all__ = ['TunedOptimWrapperConstructor', 'SafeCheckpointHook', 'NonFiniteCheckHook',
           'NonFiniteError', 'DataCheckHook', 'find_resumable_checkpoint', 'load_from_local']
