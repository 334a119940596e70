"""Make MMSeg 1.2.2 importable with ``mmcv-lite`` and MMEngine resumable on torch >= 2.6.

Two compatibility fixes, applied once when :mod:`vpt_seg` is imported:

1. **mmcv-lite.** MMSeg imports a few compiled ops at import time
   (``mmcv.ops.point_sample``, ``sigmoid_focal_loss``, ...). ``mmcv-lite`` ships the
   Python files of ``mmcv.ops`` but not the compiled ``mmcv._ext``, so ``import mmcv.ops``
   fails. When (and only when) that happens, we register a stand-in ``mmcv.ops`` package
   whose ``__path__`` is the real one: pure-Python ops (``point_sample``) load from
   mmcv's own files, and every compiled op becomes a placeholder that raises a clear
   error if it is ever *called*. Nothing in vpt-seg calls them. With a full mmcv install
   ``import mmcv.ops`` succeeds and this module changes nothing. The stand-in lives in
   :mod:`vpt_seg_mmcv_lite`, whose start-up hook (installed by pip as a ``.pth`` file)
   applies it even when ``mmseg`` is imported before ``vpt_seg``.

2. **torch.load(weights_only=True).** MMEngine 0.10.7 calls ``torch.load`` without
   ``weights_only``; torch >= 2.6 then refuses the non-tensor objects a training
   checkpoint holds (message-hub ``HistoryBuffer``s, numpy arrays and scalars), so
   ``--resume`` breaks. We keep torch's safe loader and allow-list exactly those types
   with ``torch.serialization.add_safe_globals``. ``HistoryBuffer`` also pickles its
   built-in statistics methods through ``getattr``, which no safe loader may allow; we
   leave those out of its pickled state (``__setstate__`` restores them anyway), so
   checkpoints written with vpt-seg imported resume safely. A checkpoint written by
   stock MMEngine still holds them: torch then refuses it with its own message, and a
   user who trusts the file can set ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.
"""
import importlib
import importlib.util
import os.path as osp
import sys

import numpy as np
import torch

__all__ = ['MMCV_FULL', 'apply']

MMCV_FULL = None  # set by apply(): True with compiled mmcv ops, False with mmcv-lite


def _shim_module():
    """The stand-in's implementation, :mod:`vpt_seg_mmcv_lite` (a top-level module so the
    start-up ``.pth`` hook can import it without importing this package)."""
    try:
        import vpt_seg_mmcv_lite
        return vpt_seg_mmcv_lite
    except ImportError:  # an editable install made before the module existed
        path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'vpt_seg_mmcv_lite.py')
        spec = importlib.util.spec_from_file_location('vpt_seg_mmcv_lite', path)
        module = importlib.util.module_from_spec(spec)
        sys.modules['vpt_seg_mmcv_lite'] = module
        spec.loader.exec_module(module)
        return module


def _history_buffer_getstate(self) -> dict:
    """HistoryBuffer's state without its default statistics methods (restored on load)."""
    state = dict(self.__dict__)
    defaults = {name: getattr(type(self), name) for name in ('min', 'max', 'current', 'mean')}
    state['statistics_methods'] = {name: method for name, method in self._statistics_methods.items()
                                   if defaults.get(name) is not method}
    return state


def _allow_mmengine_checkpoint_types():
    from mmengine.logging.history_buffer import HistoryBuffer
    HistoryBuffer.__getstate__ = _history_buffer_getstate
    safe = [HistoryBuffer, np.dtype, np.ndarray]
    safe += [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
    safe += [np.float64, np.float32, np.int64, np.int32, np.bool_]
    try:  # numpy >= 2 keeps _reconstruct in numpy._core
        from numpy._core.multiarray import _reconstruct, scalar
        safe += [_reconstruct, scalar]
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
        safe += [_reconstruct, scalar]
    torch.serialization.add_safe_globals(safe)


def apply():
    """Apply both fixes; idempotent."""
    global MMCV_FULL
    if MMCV_FULL is not None:
        return
    try:
        importlib.import_module('mmcv.ops')
        MMCV_FULL = not getattr(sys.modules['mmcv.ops'], '__vpt_seg_shim__', False)
    except ModuleNotFoundError as err:
        if err.name == 'mmcv':
            raise ImportError(
                'vpt-seg needs mmcv, which is not installed. Install one of the two: '
                'pip install "vpt-seg[lite]" (mmcv-lite, pure Python, the default) or '
                'pip install "vpt-seg[full]" (mmcv with compiled ops); from a clone: '
                'pip install -r requirements.txt') from None
        if err.name != 'mmcv._ext':
            raise
        for name in [m for m in sys.modules if m.startswith('mmcv.ops')]:
            del sys.modules[name]  # drop the half-imported real package
        _shim_module().install_mmcv_ops_shim()
        MMCV_FULL = False
    _allow_mmengine_checkpoint_types()


apply()
