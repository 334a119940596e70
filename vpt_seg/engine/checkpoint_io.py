"""MMEngine's checkpoint loaders, each reading safely, with errors that name the file.

MMEngine reads every checkpoint (``load_from``, ``--resume``, ``tools/test.py``,
``init_cfg``, MMSeg's ``init_model`` and ``MMSegInferencer``) through the loader that
:class:`~mmengine.runner.CheckpointLoader` registers for the path's scheme. Its loaders
call ``torch.load`` bare or, for URLs, ``torch.hub``'s ``load_url``, which unpickles with
``weights_only=False``: a downloaded pickle runs whatever its ``__reduce__`` names. We
register our own in their place (``force=True``, the registry's own override
mechanism; the registrations are in :mod:`vpt_seg.patches`), with the same arguments
and results, each ending in
:func:`vpt_seg.formats.weight_files.load_torch_file` (``weights_only=True``) or, for
``.safetensors``, the safetensors reader:

================================  ====================================================
``''`` (local files)              :func:`load_from_local`
``http://``, ``https://``         :func:`load_from_http`: download once into torch.hub's
                                  cache (``torch.hub.get_dir()/checkpoints``, by file
                                  name, as MMEngine does), then read the file
``torchvision://``, ``modelzoo://``  the model zoo's URL, then :func:`load_from_http`
``open-mmlab://``, ``openmmlab://``  MMEngine's URL table: :func:`load_from_http`, or the
                                  local file under MMEngine's home
``mmcls://``                      the mmcls URL, :func:`load_from_http`, then MMEngine's
                                  own key conversion
``s3://``, ``petrel://``          the bytes from MMEngine's file backend, read safely
``pavi://``                       pavi's download, read safely
================================  ====================================================

A pickle that holds Python objects is refused with the same
:class:`~vpt_seg.formats.weight_files.UnreadableCheckpointError` as a local one, naming the URL.
"""
import io
import os
import os.path as osp
import tempfile
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from mmengine.dist import get_dist_info
from mmengine.runner import checkpoint as mmengine_checkpoint

from ..formats.weight_files import load_torch_file

__all__ = ['load_from_local', 'load_from_http', 'load_from_torchvision', 'load_from_openmmlab',
           'load_from_mmcls', 'load_from_ceph', 'load_from_pavi', 'download_checkpoint',
           'read_downloaded']


def load_from_local(filename, map_location):
    """Load a local checkpoint: :func:`~vpt_seg.formats.weight_files.load_torch_file`."""
    return load_torch_file(filename, map_location=map_location)


def download_checkpoint(url: str, model_dir: Optional[str] = None) -> str:
    """The cached copy of ``url``: ``<model_dir or torch.hub.get_dir()/checkpoints>/NAME``,
    downloaded first if it is not there (``torch.hub.download_url_to_file``: to a
    temporary file, renamed when complete). In a distributed run rank 0 downloads and
    the others wait for it.

    Raises:
        ValueError: the URL names no file.
        OSError: the download failed (urllib's error, with the URL).
    """
    name = osp.basename(urlparse(url).path)
    if not name or name in ('.', '..'):
        raise ValueError(f'{url!r}: the URL names no file to download')
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    cached = osp.join(model_dir, name)
    rank, world_size = get_dist_info()
    if rank == 0 and not osp.isfile(cached):
        os.makedirs(model_dir, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, cached, progress=False)
        except OSError as err:  # URLError, HTTPError, connection and disk errors
            raise OSError(f'cannot download {url}: {err}') from None
    if world_size > 1:
        torch.distributed.barrier()
    return cached


def read_downloaded(path: str, source: str, map_location: Any = None) -> Any:
    """Read a downloaded checkpoint as a local one: ``.safetensors`` (task files and
    plain weights) through the safetensors reader, anything else through
    :func:`~vpt_seg.formats.weight_files.load_torch_file`; errors name ``source`` (the URL)."""
    if path.endswith('.safetensors'):
        from ..formats.task_file import load_from_safetensors
        return load_from_safetensors(path, map_location)
    return load_torch_file(path, map_location=map_location, name=source, hint=(
        'A remote checkpoint is read as safely as a local one; ask for its weights alone '
        '(a state dict of tensors, or .safetensors), or, if you trust the file, load it '
        'yourself and save its state dict.'))


def load_from_http(filename, map_location=None, model_dir=None):
    """Load a checkpoint from a URL: :func:`download_checkpoint`, then
    :func:`read_downloaded` (``weights_only=True``, or safetensors)."""
    return read_downloaded(download_checkpoint(filename, model_dir), filename, map_location)


def load_from_torchvision(filename, map_location=None):
    """``torchvision://NAME``: torchvision's URL for NAME, read by :func:`load_from_http`."""
    model_urls = mmengine_checkpoint.get_torchvision_models()
    name = filename[len('modelzoo://'):] if filename.startswith('modelzoo://') \
        else filename[len('torchvision://'):]
    return load_from_http(model_urls[name], map_location=map_location)


def load_from_openmmlab(filename, map_location=None):
    """``open-mmlab://NAME``: MMEngine's URL (or file under its home) for NAME."""
    prefix = 'open-mmlab://' if filename.startswith('open-mmlab://') else 'openmmlab://'
    name = filename[len(prefix):]
    name = mmengine_checkpoint.get_deprecated_model_names().get(name, name)
    url = mmengine_checkpoint.get_external_models()[name]
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location=map_location)
    path = osp.join(mmengine_checkpoint._get_mmengine_home(), url)
    return load_torch_file(path, map_location=map_location)


def load_from_mmcls(filename, map_location=None):
    """``mmcls://NAME``: the mmcls URL, read by :func:`load_from_http`, keys converted
    as MMEngine does."""
    url = mmengine_checkpoint.get_mmcls_models()[filename[len('mmcls://'):]]
    return mmengine_checkpoint._process_mmcls_checkpoint(
        load_from_http(url, map_location=map_location))


def load_from_ceph(filename, map_location=None, backend='petrel'):
    """``s3://`` and ``petrel://``: the bytes from MMEngine's file backend, read from a
    temporary file by :func:`read_downloaded`."""
    from mmengine.fileio import get_file_backend
    data = get_file_backend(filename, backend_args={'backend': backend}).get(filename)
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, osp.basename(filename) or 'checkpoint.pth')
        with io.open(path, 'wb') as f:
            f.write(data)
        return read_downloaded(path, filename, map_location)


def load_from_pavi(filename, map_location=None):
    """``pavi://``: pavi's model cloud download, read by :func:`read_downloaded`."""
    try:
        from pavi import modelcloud
    except ImportError:
        raise ImportError('Please install pavi to load checkpoint from modelcloud.') from None
    model = modelcloud.get(filename[len('pavi://'):])
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, model.name)
        model.download(path)
        return read_downloaded(path, filename, map_location)
