"""``pip install`` into a new virtual environment gives a working package.

A copy of the project is installed, non-editable, with the ``[lite]`` extra, into a new
venv whose ``site-packages`` lists this interpreter's through a plain path line (which
adds the folder but runs none of its ``.pth`` files, so no other vpt-seg install and no
other start-up hook takes part). pip resolves every declared requirement, with its
version, against what it finds there, and installs only what is missing; installing torch
and the rest anew would take minutes and prove only that the index serves them. That the
declared requirements are enough is checked instead on what actually runs: every module
that vpt_seg or MMSeg (whose undeclared imports vpt-seg declares) imports, when the whole
package and MMSeg's APIs are imported, must come from a distribution in the closure of
vpt-seg[lite]'s requirements (or the standard library). Then, from another
folder and without this checkout on the path: ``from mmseg.apis import ...`` before
``import vpt_seg`` (the start-up hook), a config resolved from the installed package, and
the demo (``vpt-seg demo``: generate data, train, test). About a minute on 2 CPU cores.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys
import textwrap

from helpers import ROOT

from vpt_seg.patches import MMCV_FULL

IGNORE = shutil.ignore_patterns('.git', 'data', 'work_dirs', 'pretrain', 'build', 'outputs',
                                '*.egg-info', '__pycache__', '*.pyc', '.pytest_cache', '.whl')

#: Run in the venv: import all of the package and MMSeg's APIs, then name every module that
#: vpt_seg or mmseg imports (and so loaded) whose distribution is outside the requirement
#: closure of vpt-seg[lite]. (Optional imports deeper down, which succeed only because
#: this interpreter happens to have a package, are the dependencies' own business.)
UNDECLARED = '''
import importlib, pkgutil, sys
import mmseg.apis
import vpt_seg
for found in pkgutil.walk_packages(vpt_seg.__path__, 'vpt_seg.'):
    importlib.import_module(found.name)
loaded = {name.split('.')[0] for name in sys.modules}

import ast
direct = set()  # what vpt_seg and mmseg (whose undeclared imports we declare) import
for name, module in list(sys.modules.items()):
    path = getattr(module, '__file__', None) or ''
    if name.split('.')[0] in ('vpt_seg', 'mmseg') and path.endswith('.py'):
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                direct.update(alias.name.split('.')[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                direct.add(node.module.split('.')[0])

import importlib.metadata as md
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

closure, todo = {}, [('vpt-seg', {'lite'})]
while todo:
    name, extras = todo.pop()
    key = canonicalize_name(name)
    if key in closure and extras <= closure[key]:
        continue
    closure.setdefault(key, set()).update(extras)
    for line in md.distribution(name).requires or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({'extra': e})
                                     for e in extras | {''}):
            todo.append((req.name, set(req.extras)))
owners = md.packages_distributions()
undeclared = sorted(f'{top} ({", ".join(owners[top])})' for top in direct & loaded
                    if top not in sys.stdlib_module_names and top in owners
                    and not any(canonicalize_name(d) in closure for d in owners[top]))
print('checked', sorted(direct & loaded - set(sys.stdlib_module_names)))
print('closure', len(closure), 'undeclared', undeclared)
'''


def _run(cmd, cwd, env, timeout=900):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f'{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc


def _venv_seeing_these_packages(tmp_path, env):
    """A new venv that finds this interpreter's packages through a plain path line; its
    python and its site-packages."""
    import site
    import sysconfig
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    py = str(venv / 'bin' / 'python')
    venv_site = _run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                     str(tmp_path), env).stdout.strip()
    system_site = sysconfig.get_paths()['purelib']
    assert system_site in site.getsitepackages()
    with open(osp.join(venv_site, 'system_packages.pth'), 'w') as f:
        f.write(system_site + '\n')
    return py, venv_site


def test_pip_install_in_a_new_venv_runs_the_demo_from_another_folder(tmp_path):
    src = tmp_path / 'src'
    shutil.copytree(ROOT, src, ignore=IGNORE)
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV', 'VPT_SEG_NO_MMCV_HOOK')}
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    py, venv_site = _venv_seeing_these_packages(tmp_path, env)
    bindir = osp.dirname(py)
    env['PATH'] = bindir + os.pathsep + env.get('PATH', '')
    _run([py, '-m', 'pip', 'install', '-q', '--no-compile', f'{src}[lite]'], str(tmp_path),
         env)
    assert osp.isfile(osp.join(venv_site, 'vpt_seg_mmcv_lite.pth'))
    assert osp.isdir(osp.join(venv_site, 'vpt_seg', '.mim', 'configs'))

    work = tmp_path / 'elsewhere'
    work.mkdir()
    where = _run([py, '-c', 'import vpt_seg, sys; print(vpt_seg.__file__)'], str(work), env)
    assert where.stdout.strip() == osp.join(venv_site, 'vpt_seg', '__init__.py')

    found = _run([py, '-c', UNDECLARED], str(work), env).stdout
    assert 'undeclared []' in found, found
    checked = found.split('checked ')[1].split('\n')[0]
    for name in ('torch', 'mmengine', 'timm', 'ftfy', 'regex'):  # with mmseg's own
        assert repr(name) in checked, found  # undeclared ones among them

    # mmseg first: the installed .pth hook stands in for mmcv's compiled ops.
    _run([py, '-c', 'from mmseg.apis import init_model, MMSegInferencer\n'
                    'import mmseg.models, vpt_seg\n'
                    'from vpt_seg import patches as compat\n'
                    f'assert compat.MMCV_FULL is {MMCV_FULL}, compat.MMCV_FULL'],
         str(work), env)

    # Configs resolve against the installed package (OpenMMLab's .mim layout).
    count = _run([osp.join(bindir, 'vpt-seg'), 'count_params', 'configs/setr_vpt_ade20k.py'],
                 str(work), env)
    assert 'task file' in count.stdout, count.stdout

    study = _run([osp.join(bindir, 'vpt-seg'), 'study', '--help'], str(work), env)
    assert 'usage: study.py' in study.stdout and 'vpt-deep' in study.stdout, study.stdout

    demo = _run([osp.join(bindir, 'vpt-seg'), 'demo', '--iters', '4'], str(work), env)
    assert 'mIoU' in demo.stdout + demo.stderr
    assert osp.isfile(work / 'work_dirs' / 'demo' / 'iter_4.pth')
    assert osp.isfile(work / 'pretrain' / 'tiny_vit.pth')
    assert not osp.exists(src / 'work_dirs')  # everything happened in the other folder


def test_clone_install_lets_mmseg_be_imported_before_vpt_seg(tmp_path):
    """The README's clone install (``pip install -r requirements.txt``: an editable install
    of the clone) ships the start-up hook too: ``from mmseg.apis import init_model``
    before ``import vpt_seg`` works, from another folder, with a clean environment (the
    venv reaches this interpreter's packages as above)."""
    src = tmp_path / 'src'
    shutil.copytree(ROOT, src, ignore=IGNORE)
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV', 'VPT_SEG_NO_MMCV_HOOK')}
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    py, venv_site = _venv_seeing_these_packages(tmp_path, env)
    _run([py, '-m', 'pip', 'install', '-q', '--no-deps', '-e', str(src)], str(tmp_path), env)
    assert osp.isfile(osp.join(venv_site, 'vpt_seg_mmcv_lite.pth'))
    work = tmp_path / 'elsewhere'
    work.mkdir()
    out = _run([py, '-c', textwrap.dedent('''
        import sys
        from mmseg.apis import init_model, MMSegInferencer
        import mmseg.models
        import vpt_seg
        from vpt_seg import patches
        hooks = [f for f in sys.meta_path if type(f).__name__ == 'MmcvOpsFinder']
        print(vpt_seg.__file__, patches.MMCV_FULL,
              [type(f).find_spec.__code__.co_filename for f in hooks])
    ''')], str(work), env)
    where, full, hooks = out.stdout.split(' ', 2)
    assert where == str(src / 'vpt_seg' / '__init__.py')  # the clone, editable
    assert full == str(MMCV_FULL)  # on mmcv-lite: the stand-in served mmseg's imports
    assert hooks.strip() == repr([str(src / 'vpt_seg' / 'mmcv_lite.py')])  # the clone's hook
