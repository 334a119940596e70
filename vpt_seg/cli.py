"""``vpt-seg TOOL [ARGS]``: run one of the project's tools from an installed package.

    vpt-seg demo                      # tools/demo.py, in the current folder
    vpt-seg train demo/setr_vpt_tiny_ade20k.py
    vpt-seg test demo/setr_vpt_tiny_ade20k.py work_dirs/.../iter_40.pth

The tools ship with the package under ``vpt_seg/.mim/tools`` (as OpenMMLab's MIM ships
them) and configs under ``vpt_seg/.mim/configs``; config arguments resolve against those
when they are not files here (``vpt_seg.config_paths.resolve_config``).
"""
import os
import os.path as osp
import runpy
import sys

from .config_paths import tools_dir


def available_tools():
    return sorted(f[:-3] for f in os.listdir(tools_dir()) if f.endswith('.py'))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    tools = available_tools()
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__.strip() + '\n\ntools: ' + ', '.join(tools))
        return 0
    tool = argv[0][:-3] if argv[0].endswith('.py') else argv[0]
    if tool not in tools:
        print(f'vpt-seg: unknown tool {argv[0]!r}; tools: {", ".join(tools)}', file=sys.stderr)
        return 2
    path = osp.join(tools_dir(), tool + '.py')
    sys.argv = [path] + argv[1:]
    runpy.run_path(path, run_name='__main__')
    return 0


if __name__ == '__main__':
    sys.exit(main())
