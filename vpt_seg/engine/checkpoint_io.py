"""MMEngine's local checkpoint loader, with errors that name the file.

MMEngine reads every local checkpoint (``load_from``, ``--resume``, ``tools/test.py``,
``init_cfg``) through the loader registered for the empty scheme in
:class:`~mmengine.runner.CheckpointLoader`; it calls ``torch.load`` bare, so a truncated
or foreign file surfaces as torch's zip or unpickling error, which does not name the file
and suggests turning safe loading off. We register :func:`load_from_local` in its place
(``force=True``, the registry's own override mechanism): same arguments, same result,
and :func:`vpt_seg.checkpoint.load_torch_file`'s errors.
"""
from mmengine.runner import CheckpointLoader

from ..checkpoint import load_torch_file

__all__ = ['load_from_local']


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename, map_location):
    """Load a local checkpoint: :func:`~vpt_seg.checkpoint.load_torch_file`."""
    return load_torch_file(filename, map_location=map_location)
