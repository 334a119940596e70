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

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
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

    demo = _run([osp.join(bindir, 'vpt-seg'), 'demo', '--iters', '4'], str(work), env)
    assert 'mIoU' in demo.stdout + demo.stderr
    assert osp.isfile(work / 'work_dirs' / 'demo' / 'iter_4.pth')
    assert osp.isfile(work / 'pretrain' / 'tiny_vit.pth')
    assert not osp.exists(src / 'work_dirs')  # everything happened in the other folder
