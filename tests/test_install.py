"""``pip install`` into a fresh virtual environment gives a working package.

A copy of the project is installed, non-editable, with the ``[lite]`` extra into a new
venv that does not see this interpreter's packages; then, from another folder and
without this checkout on the path: ``from mmseg.apis import ...`` before ``import
vpt_seg`` (the start-up hook), a config resolved from the installed package, and the
demo (``vpt-seg demo``: generate data, train, test). Installing torch dominates the
time: where pip's find-links folder holds a CPU build of torch (as on this project's
machines) that one is installed first, which skips the CUDA libraries; otherwise pip
resolves torch itself. A few minutes on 2 CPU cores.
"""
import glob
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


def _cpu_torch_wheel():
    for folder in os.environ.get('PIP_FIND_LINKS', '/opt/wheels').split():
        wheels = sorted(glob.glob(osp.join(folder, 'torch-*+cpu-*.whl')))
        if wheels:
            return wheels[-1]
    return None


def _run(cmd, cwd, env, timeout=900):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f'{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc


def test_pip_install_in_a_fresh_venv_runs_the_demo_from_another_folder(tmp_path):
    src = tmp_path / 'src'
    shutil.copytree(ROOT, src, ignore=IGNORE)
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    py, bindir = str(venv / 'bin' / 'python'), str(venv / 'bin')
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}
    env.update(PATH=bindir + os.pathsep + env.get('PATH', ''), OMP_NUM_THREADS='1',
               MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    pip = [py, '-m', 'pip', 'install', '-q', '--no-compile']
    wheel = _cpu_torch_wheel()
    if wheel:
        _run(pip + [wheel], str(tmp_path), env)
    _run(pip + [f'{src}[lite]'], str(tmp_path), env)

    work = tmp_path / 'elsewhere'
    work.mkdir()
    where = _run([py, '-c', 'import vpt_seg, sys; print(vpt_seg.__file__)'], str(work), env)
    assert where.stdout.strip().startswith(str(venv)), where.stdout  # not this checkout

    # mmseg first: the installed .pth hook stands in for mmcv's compiled ops.
    _run([py, '-c', 'from mmseg.apis import init_model, MMSegInferencer\n'
                    'import mmseg.models, vpt_seg\n'
                    'from vpt_seg import patches as compat\n'
                    'assert compat.MMCV_FULL is False, compat.MMCV_FULL'], str(work), env)

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
    before ``import vpt_seg`` works, from another folder, with a clean environment.

    The venv reaches this interpreter's packages (torch, mmseg, mmcv) through a plain
    path line, which adds the folder but runs none of its ``.pth`` files (so no other
    vpt-seg install and no other start-up hook takes part)."""
    import site
    import sysconfig
    src = tmp_path / 'src'
    shutil.copytree(ROOT, src, ignore=IGNORE)
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    py = str(venv / 'bin' / 'python')
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV', 'VPT_SEG_NO_MMCV_HOOK')}
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    venv_site = _run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                     str(tmp_path), env).stdout.strip()
    system_site = sysconfig.get_paths()['purelib']
    assert system_site in site.getsitepackages()
    with open(osp.join(venv_site, 'system_packages.pth'), 'w') as f:
        f.write(system_site + '\n')
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
