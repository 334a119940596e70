"""Writing the files vpt-seg exports: never over an input, never half-written.

Every file ``tools/export_task.py`` writes (a task file, a folded checkpoint and its
config) and every hub folder :func:`~vpt_seg.models.timm_vit.write_hub_folder` makes goes
through here:

* :func:`check_output` refuses an output that is one of the files the export reads (the
  config, the checkpoint, the pretrained file or a file in the pretrained hub folder),
  compared by real path and by ``os.path.samefile`` (links and hard links included), and
  an output whose folder is a file;
* :func:`atomic_write` writes to a temporary file in the output's own folder and renames
  it over the output only when it is complete (as the checkpoint hook does,
  :mod:`vpt_seg.engine.hooks`): a write that is killed or fails leaves the previous
  output as it was; the file gets the usual mode (``0o666`` less the umask), not the
  ``0o600`` of a temporary file.
"""
import contextlib
import os
import os.path as osp
import tempfile
from typing import Iterator, Mapping, Optional

__all__ = ['OutputError', 'same_file', 'check_output', 'check_output_folder',
           'nearest_existing_parent', 'atomic_write', 'file_mode']


class OutputError(ValueError):
    """An output path that would overwrite an input, or cannot be written."""


def file_mode() -> int:
    """The mode a new file gets from ``open()``: ``0o666`` less the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` are one file: equal real paths (links resolved), or
    :func:`os.path.samefile` where both exist (hard links)."""
    if osp.realpath(a) == osp.realpath(b):
        return True
    try:
        return osp.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def nearest_existing_parent(path: str) -> str:
    """The closest folder above ``path`` that exists (or a file there, which is what
    stops a write under it)."""
    parent = osp.dirname(osp.abspath(path))
    while parent and not osp.lexists(parent) and parent != osp.dirname(parent):
        parent = osp.dirname(parent)
    return parent


def check_output_folder(out: str, option: str = 'OUT') -> None:
    """Raise :class:`OutputError` if ``out`` is a folder, or a file on its way is not a
    folder (``out`` would go under a file), naming the path and what to do."""
    if osp.isdir(out):
        raise OutputError(f'{option} {out!r} is a folder; name the file to write in it '
                          f'(e.g. {osp.join(out, "task" + (osp.splitext(out)[1] or ".pth"))!r})')
    parent = nearest_existing_parent(out)
    if not osp.isdir(parent):
        raise OutputError(f'{option} {out!r} would go under {parent}, which is a file, not '
                          'a folder; choose another path')


def check_output(out: str, inputs: Mapping[str, Optional[str]], option: str = 'OUT') -> None:
    """Raise :class:`OutputError` if writing ``out`` would replace an input.

    Args:
        out: The file to write.
        inputs: ``{what: path}`` of what the export reads (``'the config'``: its file,
            ...); None values are skipped. A folder (a hub folder) protects every file
            in it.
        option: How the user named ``out``, for the message.
    """
    check_output_folder(out, option)
    for what, path in inputs.items():
        if not path or '://' in str(path):
            continue
        path = str(path)
        hit = same_file(out, path) or (
            osp.isdir(path) and osp.lexists(out)
            and same_file(osp.dirname(osp.abspath(out)), path))
        if hit:
            raise OutputError(
                f'{option} {out!r} is {what} ({path}), which this export reads; writing '
                'it would replace that file. Choose another output path.')


@contextlib.contextmanager
def atomic_write(path: str, suffix: str = '') -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; when the block ends without an
    error, the file written there is flushed to disk, given the usual mode
    (:func:`file_mode`) and renamed to ``path``. On an error (or a kill) ``path`` is
    left as it was and the temporary file removed.

    Args:
        path: The file to write; its folder must exist.
        suffix: The temporary file's ending, for writers that look at it (a config
            read back must end in ``.py``).
    """
    folder = osp.dirname(osp.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{osp.basename(path)}.',
                               suffix=suffix or '.part')
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if osp.lexists(tmp):
            os.unlink(tmp)
