from .optim import TunedOptimWrapperConstructor

__all__ = ['TunedOptimWrapperConstructor']
