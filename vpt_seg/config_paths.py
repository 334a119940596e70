"""Where the project's configs and tools are, and config names resolved against them.

Standard library only: the command-line tools call :func:`resolve_config` before
anything is loaded, and the library itself takes configs already resolved.
"""
import os.path as osp

__all__ = ['config_dirs', 'tools_dir', 'resolve_config']

_PACKAGE = osp.dirname(osp.abspath(__file__))
_SCOPE = 'vpt_seg::'


def _shipped(name: str) -> str:
    """``vpt_seg/.mim/<name>`` in an installed package, else ``<repo>/<name>``."""
    mim = osp.join(_PACKAGE, '.mim', name)
    return mim if osp.isdir(mim) else osp.join(osp.dirname(_PACKAGE), name)


def config_dirs() -> str:
    """The project's ``configs/`` folder (shipped as ``vpt_seg/.mim/configs`` when installed)."""
    return _shipped('configs')


def tools_dir() -> str:
    """The project's ``tools/`` folder (shipped as ``vpt_seg/.mim/tools`` when installed)."""
    return _shipped('tools')


def resolve_config(path: str) -> str:
    """A config file path: ``path`` itself if it exists, else the project's own config of
    that name, as OpenMMLab's ``.mim`` packaging resolves ``package::`` names.

    ``configs/demo/x.py``, ``demo/x.py`` and ``vpt_seg::demo/x.py`` all name
    ``<configs>/demo/x.py``, so the tools work from any folder with an installed package.

    Raises:
        FileNotFoundError: neither ``path`` nor a shipped config of that name exists.
    """
    if osp.isfile(path):
        return path
    rel = path[len(_SCOPE):] if path.startswith(_SCOPE) else path
    rel = rel[len('configs/'):] if rel.startswith('configs/') else rel
    shipped = osp.join(config_dirs(), rel)
    if not osp.isabs(rel) and osp.isfile(shipped):
        return shipped
    raise FileNotFoundError(f'config not found: {path!r} (neither a file here nor one of '
                            f"vpt-seg's configs under {config_dirs()})")
