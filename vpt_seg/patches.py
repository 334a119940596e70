"""Every change vpt-seg makes to another library, in one place, applied once at import.

``import vpt_seg`` calls :func:`apply` first, before any MMSeg import; it is idempotent.
:data:`PATCHES` lists each change and why; the functions that implement a patch live with
their subject (named in the list), the act of patching (assignments, registrations,
warning filters) is here:

1. **mmcv-lite.** MMSeg imports a few compiled ops at import time
   (``mmcv.ops.point_sample``, ``sigmoid_focal_loss``, ...). ``mmcv-lite`` ships the
   Python files of ``mmcv.ops`` but not the compiled ``mmcv._ext``, so ``import mmcv.ops``
   fails. When (and only when) that happens, we register a stand-in ``mmcv.ops`` package
   (:mod:`vpt_seg.mmcv_lite`): pure-Python ops load from mmcv's own files, and every
   compiled op becomes a placeholder that raises a clear error if it is ever *called*.
   Nothing in vpt-seg calls them. With a full mmcv install ``import mmcv.ops`` succeeds
   and nothing changes. The start-up hook ``vpt_seg_mmcv_lite.pth`` that pip installs
   applies the same stand-in when ``mmseg`` is imported before ``vpt_seg``.

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

3. **Checkpoint loaders.** MMEngine's loaders for every scheme are replaced by safe ones
   (:mod:`vpt_seg.engine.checkpoint_io`), and ``.safetensors`` paths get a loader of their
   own (:func:`vpt_seg.formats.task_file.load_from_safetensors`).

4. **MMSegInferencer** finds vpt-seg's checked loaders in a config's test pipeline
   (:func:`vpt_seg.datasets.checks.transform_idx_finding_subclasses`).

5. **Warnings that are noise** for vpt-seg's users (they come from MMSeg's and MMEngine's
   own code, whatever the config says) are filtered by message and module, MMEngine's
   log warnings of that kind by message; every other warning is shown.

6. **FLOP counter.** ``torch.utils.flop_counter`` counts the GPU attention kernels but not
   torch's CPU flash-attention ones, so the benchmark's FLOPs on CPU would leave attention
   out; we register the counter's own SDPA formulas for them (when torch has them and
   none is registered).
"""
import importlib
import logging
import re
import sys
import warnings

import numpy as np
import torch

__all__ = ['MMCV_FULL', 'PATCHES', 'apply']

MMCV_FULL = None  # set by apply(): True with compiled mmcv ops, False with mmcv-lite

#: What vpt-seg changes in other libraries, and why: ``(target, change and reason)``.
PATCHES = (
    ('mmcv.ops', 'a stand-in when mmcv._ext is missing (mmcv-lite): MMSeg imports compiled '
                 'ops at import time, vpt-seg calls none of them'),
    ('mmengine HistoryBuffer.__getstate__', 'leaves out its default statistics methods, '
                                            'so a saved message hub loads with weights_only'),
    ('torch.serialization safe globals', 'allows HistoryBuffer and numpy arrays/scalars, '
                                         'so --resume works with torch>=2.6 safe loading'),
    ("mmengine CheckpointLoader schemes '', http(s)://, torchvision://, modelzoo://, "
     'open-mmlab://, mmcls://, s3://, petrel://, pavi://',
     'read with weights_only=True: a downloaded pickle never runs code'),
    ('mmengine CheckpointLoader scheme *.safetensors', 'task files and plain safetensors '
                                                       'weights load wherever MMEngine loads'),
    ('mmseg MMSegInferencer._get_transform_idx', 'also finds subclasses of LoadImageFromFile '
                                                 'and LoadAnnotations (the checked loaders)'),
    ('mmseg InferencerLoader.__init__', 'the image files MMSegInferencer reads go through '
                                        'the checked loader (pixel limit from the header, '
                                        'truncated files refused), as every other reader'),
    ('warnings filters', 'mmcv-lite, pkg_resources and MMSeg deprecations that a user '
                         'cannot act on (by message and module)'),
    ('mmengine MMLogger.__init__', 'adds a filter for three MMEngine log warnings that a user '
                                   'cannot act on (FileClient, HardDiskBackend, metric prefix)'),
    ('torch.utils.flop_counter registry', "formulas for torch's CPU flash-attention kernels "
                                          "(the counter's own SDPA ones), so the benchmark "
                                          'counts attention on CPU'),
)

# (message regex, category, module regex): noise a user of vpt-seg cannot act on.
_NOISE = (
    # mmcv-lite has no compiled deformable attention; vpt-seg never uses it.
    (r'Fail to import ``MultiScaleDeformableAttention``', UserWarning, r'mmcv\.cnn'),
    # mmengine resolves `mmseg::` config bases through pkg_resources (imported from
    # mmengine.utils and through importlib: the message alone names it).
    (r'pkg_resources is deprecated as an API', UserWarning, r''),
    (r'Deprecated call to `pkg_resources\.declare_namespace', DeprecationWarning,
     r'pkg_resources'),
    # MMSeg's own SETR heads, losses, hooks and ADE20k pipeline use these, not the user.
    (r'``build_loss`` would be deprecated soon', UserWarning, r'mmseg\.models\.builder'),
    (r'Default ``avg_non_ignore`` is False', UserWarning, r'mmseg\.models\.losses'),
    (r'The draw is False', UserWarning, r'mmseg\.engine\.hooks'),
    (r'`reduce_zero_label` will be deprecated', UserWarning, r'mmseg\.datasets\.transforms'),
)

#: MMEngine log warnings (``print_log``, not :mod:`warnings`) that are noise: raised by
#: MMEngine's own hooks and metrics whatever the config says.
_NOISE_LOGS = re.compile('|'.join((
    r'The prefix is not set in metric class ',
    r'"FileClient" will be deprecated in future',
    r'"HardDiskBackend" is the alias of "LocalBackend"',
)))


class _QuietLogs(logging.Filter):
    """Drops the log warnings of :data:`_NOISE_LOGS`; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.WARNING or not _NOISE_LOGS.match(record.getMessage())


_QUIET_LOGS = _QuietLogs()


def _mmcv_ops():
    """The stand-in ``mmcv.ops`` when its compiled ops are missing; sets :data:`MMCV_FULL`."""
    global MMCV_FULL
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
        from . import mmcv_lite
        mmcv_lite.install_mmcv_ops_shim()
        MMCV_FULL = False


def _history_buffer_getstate(self) -> dict:
    """HistoryBuffer's state without its default statistics methods (restored on load)."""
    state = dict(self.__dict__)
    defaults = {name: getattr(type(self), name) for name in ('min', 'max', 'current', 'mean')}
    state['statistics_methods'] = {name: method for name, method in self._statistics_methods.items()
                                   if defaults.get(name) is not method}
    return state


def _mmengine_checkpoint_types():
    from mmengine.logging.history_buffer import HistoryBuffer
    HistoryBuffer.__getstate__ = _history_buffer_getstate
    safe = [HistoryBuffer, np.dtype, np.ndarray]
    safe += [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
    safe += [np.float64, np.float32, np.int64, np.int32, np.bool_]
    try:  # numpy >= 2 keeps _reconstruct in numpy._core
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    safe += [_reconstruct, scalar]
    torch.serialization.add_safe_globals(safe)


def _checkpoint_loaders():
    from mmengine.runner import CheckpointLoader

    from .engine import checkpoint_io as safe
    from .formats.task_file import load_from_safetensors
    for prefixes, loader in (
            ('', safe.load_from_local),
            (('http://', 'https://'), safe.load_from_http),
            (('modelzoo://', 'torchvision://'), safe.load_from_torchvision),
            (('open-mmlab://', 'openmmlab://'), safe.load_from_openmmlab),
            ('mmcls://', safe.load_from_mmcls),
            ([r'(\S+\:)?s3://', r'(\S+\:)?petrel://'], safe.load_from_ceph),
            ('pavi://', safe.load_from_pavi),
            (r'(?=.*\.safetensors$)(?!\w+://)', load_from_safetensors)):
        CheckpointLoader.register_scheme(prefixes, loader, force=True)


def _inferencer():
    from mmseg.apis import MMSegInferencer

    from .datasets.checks import transform_idx_finding_subclasses
    found = MMSegInferencer._get_transform_idx
    if not getattr(found, 'finds_subclasses', False):
        MMSegInferencer._get_transform_idx = transform_idx_finding_subclasses(found)


def _inferencer_loader():
    from mmseg.datasets.transforms.loading import InferencerLoader
    from mmseg.registry import TRANSFORMS

    from .datasets.checks import CheckedLoadImageFromFile
    if getattr(InferencerLoader.__init__, 'checked', False):
        return

    def __init__(self, max_pixels=None, check_orientation=False, **kwargs):
        # MMSegInferencer turns the config's (checked) image loader into an
        # InferencerLoader with the same arguments: file paths are read as training and
        # serving read them; no annotation is read, so a rotated photo is decoded upright.
        super(InferencerLoader, self).__init__()
        self.from_file = CheckedLoadImageFromFile(
            max_pixels=max_pixels, check_orientation=check_orientation, **kwargs)
        self.from_ndarray = TRANSFORMS.build(dict(type='LoadImageFromNDArray', **kwargs))

    __init__.checked = True
    InferencerLoader.__init__ = __init__


def _warning_filters():
    for message, category, module in _NOISE:
        warnings.filterwarnings('ignore', message=message, category=category, module=module)


def _log_filters():
    from mmengine.logging import MMLogger
    init = MMLogger.__init__
    if getattr(init, 'quiet_logs', False):
        return

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.addFilter(_QUIET_LOGS)

    __init__.quiet_logs = True
    MMLogger.__init__ = __init__
    for logger in MMLogger._instance_dict.values():  # made before vpt_seg was imported
        logger.addFilter(_QUIET_LOGS)


def _flop_counter():
    from torch.utils import flop_counter
    aten = torch.ops.aten
    fwd = getattr(aten, '_scaled_dot_product_flash_attention_for_cpu', None)
    bwd = getattr(aten, '_scaled_dot_product_flash_attention_for_cpu_backward', None)
    if fwd is None or fwd in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(fwd)
    def _fwd(query, key, value, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(query, key, value)

    if bwd is not None:
        @flop_counter.register_flop_formula(bwd)
        def _bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
            return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def apply():
    """Apply every patch of :data:`PATCHES`; idempotent."""
    if MMCV_FULL is not None:
        return
    _warning_filters()
    _mmcv_ops()
    _log_filters()
    _mmengine_checkpoint_types()
    _checkpoint_loaders()
    _inferencer()
    _inferencer_loader()
    _flop_counter()


apply()
