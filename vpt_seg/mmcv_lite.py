"""MMSeg on mmcv-lite, whatever is imported first: the stand-in for ``mmcv.ops``.

MMSeg 1.2.2 imports a few compiled mmcv ops at import time (``mmcv.ops.point_sample``,
``sigmoid_focal_loss``, ...). ``mmcv-lite`` ships the Python files of ``mmcv.ops`` but not
the compiled ``mmcv._ext``, so ``import mmcv.ops`` (and with it ``import mmseg.models``
or ``from mmseg.apis import init_model``) fails with ``No module named 'mmcv._ext'``.

:func:`install_mmcv_ops_shim` registers a stand-in ``mmcv.ops`` package whose
``__path__`` is the real one: pure-Python ops (``point_sample``) load from mmcv's own
files, and every compiled op becomes a placeholder that raises a clear error if it is
ever *called*. ``import vpt_seg`` applies it (:mod:`vpt_seg.patches`).

So that the import order does not matter, ``pip install`` (editable installs included)
also puts ``vpt_seg_mmcv_lite.pth`` (the file ``vpt_seg/mmcv_lite.pth``) into
site-packages; Python runs it at start-up. It loads this file by its path, without
importing the package (which would import torch at every interpreter start), and calls
:func:`install_finder`, which only adds an import hook for the name ``mmcv.ops``: when
that is first imported and ``mmcv._ext`` cannot be found, the hook returns the stand-in;
with a full mmcv it steps aside. This module is plain Python (no torch, no mmcv import,
no package-relative import), so the start-up cost is one small file. Set
``VPT_SEG_NO_MMCV_HOOK=1`` to disable the hook (``import vpt_seg`` still applies the
stand-in).
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

__all__ = ['install_mmcv_ops_shim', 'install_finder', 'mmcv_ext_available']

_PURE_OPS = ('point_sample', 'bilinear_grid_sample', 'rel_roi_point_to_rel_img_point')


def _compiled_op_placeholder(name):
    def _missing(*args, **kwargs):
        raise RuntimeError(
            f'mmcv.ops.{name} needs the compiled mmcv ops, but this environment has '
            'mmcv-lite. Install the full mmcv 2.1.0 (see README, "Full mmcv") to use it.')

    _missing.__name__ = name
    return _missing


def mmcv_ext_available() -> bool:
    """Whether mmcv's compiled extension (``mmcv._ext``) is installed."""
    if 'mmcv._ext' in sys.modules:
        return True
    try:
        return importlib.util.find_spec('mmcv._ext') is not None
    except ModuleNotFoundError:  # no mmcv at all
        return False


def _ops_dirs():
    spec = importlib.util.find_spec('mmcv')
    return [p + os.sep + 'ops' for p in spec.submodule_search_locations]


def _fill_shim(shim: types.ModuleType):
    """Make ``shim`` the stand-in ``mmcv.ops`` (it must already be in ``sys.modules``)."""
    shim.__path__ = _ops_dirs()  # submodules such as mmcv.ops.point_sample load from disk
    shim.__vpt_seg_shim__ = True

    def __getattr__(name):
        if name.startswith('__'):
            raise AttributeError(name)
        placeholder = _compiled_op_placeholder(name)
        setattr(shim, name, placeholder)
        return placeholder

    shim.__getattr__ = __getattr__
    import mmcv
    mmcv.ops = shim
    # Pure-Python ops come from mmcv's own file. Importing the submodule binds its name
    # on the package, so the functions are bound after the import.
    pure = importlib.import_module('mmcv.ops.point_sample')
    for name in _PURE_OPS:
        setattr(shim, name, getattr(pure, name))


def install_mmcv_ops_shim() -> types.ModuleType:
    """Register the stand-in ``mmcv.ops`` (after a failed import of the real one)."""
    shim = types.ModuleType('mmcv.ops')
    shim.__file__ = None
    sys.modules['mmcv.ops'] = shim
    _fill_shim(shim)
    return shim


class _ShimLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return types.ModuleType(spec.name)

    def exec_module(self, module):
        module.__file__ = None
        _fill_shim(module)


class MmcvOpsFinder(importlib.abc.MetaPathFinder):
    """Import hook: the stand-in for ``mmcv.ops`` when ``mmcv._ext`` is missing."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'mmcv.ops' or mmcv_ext_available():
            return None
        return importlib.machinery.ModuleSpec('mmcv.ops', _ShimLoader(), is_package=True)


def install_finder():
    """Add :class:`MmcvOpsFinder` to ``sys.meta_path`` (once); run by the ``.pth`` file."""
    if os.environ.get('VPT_SEG_NO_MMCV_HOOK'):
        return
    # by name: the start-up hook and the package each load their own copy of this file
    if not any(type(f).__name__ == 'MmcvOpsFinder' for f in sys.meta_path):
        sys.meta_path.insert(0, MmcvOpsFinder())
