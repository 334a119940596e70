"""Fault injection on the tiny demo config: kill -9 mid-run and mid-save, NaN at
iteration k, wrong and unreadable checkpoint files. Each case asserts the files on disk,
the exit code and the error text (vpt_seg/engine/hooks.py, vpt_seg/formats/weights.py).

The faults come from tests/fault_hooks.py, added to a run by a small config that
inherits configs/demo/setr_vpt_tiny_ade20k.py. The tools run as commands in forked children of
this process (:func:`helpers.run_tool`: exit code, stdout, stderr; SIGKILL kills the child);
the reference run, the first of two runs at once and one tools/test.py refusal start a
new interpreter.
"""
import os
import os.path as osp
import re
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from fault_hooks import finite
from helpers import ROOT, run_tool
from mmengine.config import Config
from mmengine.logging import MessageHub, MMLogger
from mmseg.registry import MODELS

from vpt_seg.datasets.synthetic import make_ade20k
from vpt_seg.engine.hooks import (
    NonFiniteCheckHook,
    NonFiniteError,
    SafeCheckpointHook,
    find_resumable_checkpoint,
)
from vpt_seg.formats.frozen_weights import check_task_state_dict
from vpt_seg.formats.loading import load_task_model
from vpt_seg.formats.weight_files import UnreadableCheckpointError, load_torch_file

TESTS = osp.join(ROOT, 'tests')
CONFIG = osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_ade20k.py')
ITERS, INTERVAL = 30, 10


def subprocess_env():
    """This environment with the repository and tests/ (fault_hooks) on PYTHONPATH."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT, TESTS] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))


def run_subprocess(tool, *args):
    """``python tools/TOOL ARGS`` in a new interpreter (what a user runs). Most cases use
    :func:`helpers.run_tool` instead: the same command in a forked child of this process,
    without the start-up time; a few keep the real process, so the two stay one."""
    return subprocess.run([sys.executable, osp.join(ROOT, 'tools', tool), *args],
                          capture_output=True, text=True, cwd=ROOT, env=subprocess_env())


def losses(path):
    """``{iteration: loss}``; a resumed run appends, so later lines win."""
    with open(path) as f:
        return {int(i): float(v) for i, v in (line.split() for line in f)}


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('faults')
    data = make_ade20k(str(tmp / 'data'), num_train=16, num_val=4, size=(64, 64), seed=0)
    cfg = Config.fromfile(CONFIG)
    vit = MODELS.build(dict(cfg.model.backbone, num_prompts=0, save_frozen=True, init_cfg=None))
    vit.init_weights()
    torch.save(vit.state_dict(), tmp / 'vit.pth')
    options = ['--cfg-options', f'model.backbone.init_cfg.checkpoint={tmp / "vit.pth"}'] + [
        f'{loader}.dataset.data_root={data}'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]

    def config(name, fault=None, at=0, **fault_args):
        """A config for run ``name``: the demo, 30 iterations, a checkpoint every 10
        (only the newest kept, as the study and classification configs do), losses
        recorded to ``name.txt``, and the fault."""
        hooks = [dict(type='RecordLossHook', path=str(tmp / f'{name}.txt'))]
        if fault:
            hooks.append(dict(type='FaultHook', at=at, fault=fault, **fault_args))
        path = tmp / f'{name}.py'
        path.write_text(
            f'_base_ = [{CONFIG!r}]\n'
            "custom_imports = dict(imports=['vpt_seg', 'fault_hooks'], "
            'allow_failed_imports=False)\n'
            f'custom_hooks = {hooks!r}\n'
            f'train_cfg = dict(max_iters={ITERS}, val_interval=1000)\n'
            f'default_hooks = dict(checkpoint=dict(interval={INTERVAL}, max_keep_ckpts=1))\n')
        return str(path)

    work = tmp / 'reference'
    proc = run_subprocess('train.py', config('reference'), '--work-dir', str(work), *options)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(tmp=tmp, options=options, config=config, reference=losses(tmp / 'reference.txt'),
                reference_work=work, vit=str(tmp / 'vit.pth'), data=data)


def pointer(work):
    return (work / 'last_checkpoint').read_text().strip()


def test_kill_mid_run_then_resume_continues_exactly(setup):
    work, cfg = setup['tmp'] / 'kill', setup['config']('kill', 'kill', at=25)
    proc = run_tool('train.py', cfg, '--work-dir', str(work), *setup['options'])
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in work.glob('iter_*')) == ['iter_20.pth']
    assert pointer(work) == str(work / 'iter_20.pth')

    assert (work / 'train.lock').exists()  # left behind by the killed run

    proc = run_tool('train.py', cfg, '--work-dir', str(work), '--resume', *setup['options'],
                    'custom_hooks.1.at=0')
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The stale lock is taken over with a note naming the run that left it.
    assert re.search(rf'{re.escape(str(work))}: taking over the lock of an earlier run that '
                     rf"is gone \(pid \d+ on host '{re.escape(socket.gethostname())}'",
                     proc.stdout), proc.stdout[-3000:]
    assert 'resumed epoch: 0, iter: 20' in proc.stdout
    got = losses(setup['tmp'] / 'kill.txt')
    # Exactly the uninterrupted run: data order, augmentation and dropout RNG restored.
    assert [got[i] for i in range(21, ITERS + 1)] == \
        [setup['reference'][i] for i in range(21, ITERS + 1)]
    assert sorted(p.name for p in work.glob('iter_*')) == ['iter_30.pth']


def test_kill_while_saving_keeps_the_previous_checkpoint_and_resume_skips_a_broken_one(setup):
    work, cfg = setup['tmp'] / 'saving', setup['config']('saving', 'kill_saving', at=20)
    proc = run_tool('train.py', cfg, '--work-dir', str(work), *setup['options'])
    assert proc.returncode == -signal.SIGKILL
    # The half-written file is the temporary one; the previous checkpoint and the
    # pointer to it are intact (MMEngine's hook had deleted iter_10.pth first).
    assert sorted(p.name for p in work.glob('iter_*')) == ['iter_10.pth', 'iter_20.pth.tmp']
    assert pointer(work) == str(work / 'iter_10.pth')
    assert load_torch_file(str(work / 'iter_10.pth'))['meta']['iter'] == 10
    with pytest.raises(UnreadableCheckpointError, match='iter_20.pth.tmp'):
        load_torch_file(str(work / 'iter_20.pth.tmp'))

    # What a non-atomic writer leaves: the broken file under its final name, named by
    # last_checkpoint. --resume skips it, says so, and resumes from the newest good one.
    os.replace(work / 'iter_20.pth.tmp', work / 'iter_20.pth')
    (work / 'last_checkpoint').write_text(str(work / 'iter_20.pth'))
    proc = run_tool('train.py', cfg, '--work-dir', str(work), '--resume', *setup['options'],
                    'custom_hooks.1.at=0')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'--resume skipped {work / "iter_20.pth"} (not a complete torch file' in proc.stdout
    assert f'resuming from {work / "iter_10.pth"}' in proc.stdout
    assert 'resumed epoch: 0, iter: 10' in proc.stdout
    got = losses(setup['tmp'] / 'saving.txt')
    assert [got[i] for i in range(11, ITERS + 1)] == \
        [setup['reference'][i] for i in range(11, ITERS + 1)]
    assert sorted(p.name for p in work.glob('iter_*')) == ['iter_30.pth']


def test_a_second_run_into_a_busy_work_dir_refuses_and_the_first_is_unharmed(setup):
    work, tmp = setup['tmp'] / 'busy', setup['tmp']
    marker = tmp / 'busy.paused'
    env = subprocess_env()
    first = subprocess.Popen(
        [sys.executable, osp.join(ROOT, 'tools', 'train.py'),
         setup['config']('busy', 'pause', at=5, marker=str(marker)), '--work-dir', str(work),
         *setup['options']], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), 'the first run never reached iteration 5'
        for resume in ([], ['--resume']):
            proc = run_tool('train.py', setup['config']('second'), '--work-dir', str(work),
                            *resume, *setup['options'])
            assert proc.returncode == 1
            assert (f'WorkDirLockedError: work dir {work} is in use by another training run '
                    f"(pid {first.pid} on host {socket.gethostname()!r}, started ") \
                in proc.stderr, proc.stderr[-3000:]
            assert 'Use another --work-dir, or wait for that run to end.' in proc.stderr
            assert not (tmp / 'second.txt').exists()  # it never trained
        marker.unlink()
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err[-3000:]
    # The first run computed and kept exactly what it would have alone.
    assert losses(tmp / 'busy.txt') == setup['reference']
    assert sorted(p.name for p in work.glob('iter_*')) == ['iter_30.pth']
    assert not (work / 'train.lock').exists()


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    from vpt_seg.engine import WorkDirLock, WorkDirLockedError
    (tmp_path / 'train.lock').write_text(
        '{"pid": 1234, "host": "node-7", "started": "2026-01-01T00:00:00"}')
    with pytest.raises(WorkDirLockedError) as err:
        WorkDirLock(str(tmp_path)).acquire()
    assert (f"work dir {tmp_path} is in use by another training run (pid 1234 on host "
            f"'node-7', started 2026-01-01T00:00:00)") in str(err.value)
    assert f'delete {tmp_path / "train.lock"}' in str(err.value)


def test_stale_lock_of_a_dead_process_is_taken_over_and_released(tmp_path):
    from vpt_seg.engine import WorkDirLock
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (tmp_path / 'train.lock').write_text(
        f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}", "started": "x"}}')
    lock = WorkDirLock(str(tmp_path))
    note = lock.acquire()
    assert note.startswith(f'{tmp_path}: taking over the lock of an earlier run that is gone '
                           f'(pid {dead.pid} on host')
    assert f'"pid": {os.getpid()}' in (tmp_path / 'train.lock').read_text()
    again = WorkDirLock(str(tmp_path))
    assert again.acquire() is None  # this process again (an earlier run that raised)
    assert not lock.held and again.held
    again.release()
    assert not (tmp_path / 'train.lock').exists()


def test_find_resumable_checkpoint_names_what_it_skips(tmp_path):
    torch.save({'meta': {}}, tmp_path / 'iter_10.pth')
    (tmp_path / 'iter_20.pth').write_bytes(b'garbage')
    assert find_resumable_checkpoint(str(tmp_path)) == (str(tmp_path / 'iter_10.pth'),
                                                        [f'{tmp_path / "iter_20.pth"} (not '
                                                         'a complete torch file (File is not '
                                                         'a zip file))'])
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_30.pth'))  # deleted
    path, skipped = find_resumable_checkpoint(str(tmp_path))
    assert path == str(tmp_path / 'iter_10.pth')
    assert skipped[0] == f'{tmp_path / "iter_30.pth"} (missing)'
    (tmp_path / 'iter_10.pth').unlink()
    assert find_resumable_checkpoint(str(tmp_path))[0] is None


def test_nan_at_iteration_k_stops_there_and_keeps_the_last_good_checkpoint(setup):
    work, cfg = setup['tmp'] / 'nan', setup['config']('nan', 'nan', at=15)
    proc = run_tool('train.py', cfg, '--work-dir', str(work), *setup['options'])
    assert proc.returncode == 1
    assert 'NonFiniteError: iteration 15: non-finite loss (decode.loss_ce=nan' in proc.stderr
    assert f'the last good checkpoint is {work / "iter_10.pth"}' in proc.stderr
    assert max(losses(setup['tmp'] / 'nan.txt')) == 14  # iteration 15 never finished
    assert sorted(p.name for p in work.glob('iter_*')) == ['iter_10.pth']
    assert pointer(work) == str(work / 'iter_10.pth') and finite(work / 'iter_10.pth')
    assert not (work / 'train.lock').exists()  # released when the failed run exited


def test_huge_lr_stops_and_a_rerun_without_resume_warns_and_loses_nothing(setup):
    work = setup['reference_work']
    before = (work / 'iter_30.pth').read_bytes()
    proc = run_tool('train.py', CONFIG, '--work-dir', str(work), *setup['options'],
                    'optim_wrapper.optimizer.lr=1e30', 'train_cfg.max_iters=5')
    assert proc.returncode == 1
    assert re.search(r'NonFiniteError: iteration [2-5]: non-finite (loss|gradient)',
                     proc.stderr), proc.stderr[-2000:]
    assert f'{work} already holds a run (last checkpoint: {work / "iter_30.pth"})' \
        in proc.stdout
    assert 'pass --resume' in proc.stdout
    assert (work / 'iter_30.pth').read_bytes() == before
    assert pointer(work) == str(work / 'iter_30.pth')


def test_non_finite_gradient_is_named_before_the_step():
    hook = NonFiniteCheckHook()
    hub = SimpleNamespace(get_info=lambda key: 'work/iter_10.pth')
    hook._runner = SimpleNamespace(iter=6, message_hub=hub)
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.tensor([1.0, float('inf'), 0.0])
    hook._names = {id(weight): 'decode_head.conv_seg.weight'}
    optimizer = torch.optim.SGD([weight], lr=0.1)
    optimizer.register_step_pre_hook(hook._check_grads)
    with pytest.raises(NonFiniteError, match=r'iteration 7: non-finite gradient of '
                       r'decode_head.conv_seg.weight .*last good checkpoint is '
                       r'work/iter_10.pth'):
        optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(3))  # the step never ran


def test_a_non_finite_model_is_never_saved(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float('nan')
    hub = SimpleNamespace(get_info=lambda key: str(tmp_path / 'iter_10.pth'))
    runner = SimpleNamespace(model=model, message_hub=hub)
    with pytest.raises(NonFiniteError, match=r'refusing to save iter_20.pth: non-finite values '
                       r'in weight. The last good checkpoint is .*iter_10.pth'):
        SafeCheckpointHook()._atomic_save(runner, None, str(tmp_path), 'iter_20.pth')
    assert not list(tmp_path.iterdir())


def test_a_new_best_checkpoint_is_complete_before_the_old_one_goes(tmp_path):
    seen = []

    def save_checkpoint(out_dir, filename, *args, **kwargs):
        seen.append((filename, sorted(os.listdir(out_dir))))
        torch.save({'meta': {}}, osp.join(out_dir, filename))

    runner = SimpleNamespace(
        work_dir=str(tmp_path), model=torch.nn.Linear(2, 2), iter=0, epoch=0,
        message_hub=MessageHub.get_instance('test_best_checkpoint'),
        logger=MMLogger.get_current_instance(), save_checkpoint=save_checkpoint)
    hook = SafeCheckpointHook(by_epoch=False, save_best='acc', rule='greater')
    hook.before_train(runner)
    for step, acc in ((5, 0.5), (10, 0.7)):
        runner.iter = step
        hook._save_best_checkpoint(runner, {'acc': acc})
    # The new best was written under a temporary name while the old one still existed,
    # renamed, and only then the old one was deleted.
    assert seen[1] == ('best_acc_iter_10.pth.tmp', ['best_acc_iter_5.pth'])
    assert sorted(os.listdir(tmp_path)) == ['best_acc_iter_10.pth']


def test_test_tool_refuses_a_pretrained_backbone_and_a_truncated_file(setup):
    proc = run_subprocess('test.py', CONFIG, setup['vit'], '--work-dir',
                    str(setup['tmp'] / 't1'), *setup['options'])
    assert proc.returncode == 1
    assert (f'{setup["vit"]} lacks tuned weights this model needs: backbone.prompt '
            '(1 tensors), decode_head (16 tensors), auxiliary_head (48 tensors)') in proc.stderr
    assert 'looks like a pretrained ViT backbone (mmseg format' in proc.stderr
    assert 'Iter(test)' not in proc.stdout  # stopped before evaluating

    truncated = setup['tmp'] / 'truncated.pth'
    truncated.write_bytes((setup['reference_work'] / 'iter_30.pth').read_bytes()[:5000])
    proc = run_tool('test.py', CONFIG, str(truncated), '--work-dir',
                    str(setup['tmp'] / 't2'), *setup['options'])
    assert proc.returncode == 1
    assert f"'{truncated}' is not a readable checkpoint: its zip archive is incomplete " \
        '(the file is truncated)' in proc.stderr
    assert 'weights_only' not in proc.stderr


@pytest.mark.parametrize('resume', [False, True])
def test_load_from_or_resume_from_a_pretrained_backbone_is_refused(setup, resume):
    work = setup['tmp'] / f'w_load_{resume}'
    proc = run_tool('train.py', CONFIG, '--work-dir', str(work), *(['--resume'] * resume),
                    *setup['options'], f'load_from={setup["vit"]}')
    assert proc.returncode == 1
    assert f'{setup["vit"]} lacks tuned weights this model needs' in proc.stderr
    assert 'a pretrained ViT backbone' in proc.stderr
    assert not list(work.glob('iter_*'))


@pytest.mark.parametrize('content,reason', [
    (b'', 'it is empty'),
    (b'not a checkpoint at all', 'it is not a torch file'),
])
def test_garbage_files_are_named_without_unsafe_advice(tmp_path, content, reason):
    path = tmp_path / 'task.pth'
    path.write_bytes(content)
    with pytest.raises(UnreadableCheckpointError) as err:
        load_torch_file(str(path))
    assert str(err.value).startswith(f"'{path}' is not a readable checkpoint: {reason}")
    assert 'weights_only' not in str(err.value)


def test_unsafe_pickle_is_refused_by_name(tmp_path):
    path = tmp_path / 'task.pth'
    torch.save({'state_dict': {}, 'extra': SimpleNamespace(a=1)}, path)
    with pytest.raises(UnreadableCheckpointError,
                       match='stores the Python object types.SimpleNamespace'):
        load_torch_file(str(path))


def test_url_checkpoints_are_read_safely_by_the_tools(setup, tmp_path, file_server):
    """load_from and tools/test.py with http:// checkpoints: a pickle payload is refused
    by name (it only writes a marker), weights load as from a local file."""
    from conftest import payload_pickle
    marker = tmp_path / 'marker'
    url = file_server.url('task.pth')
    payload_pickle(file_server.root / 'task.pth', marker)
    proc = run_tool('train.py', CONFIG, '--work-dir', str(tmp_path / 'w'), *setup['options'],
                    f'load_from={url}')
    assert proc.returncode == 1
    assert f"'{url}' (downloaded to" in proc.stderr and 'Python object' in proc.stderr
    proc = run_tool('test.py', CONFIG, url, '--work-dir', str(tmp_path / 't'),
                    *setup['options'])
    assert proc.returncode == 1 and f"'{url}' (downloaded to" in proc.stderr
    assert not marker.exists()
    (file_server.root / 'good.pth').write_bytes(
        (setup['reference_work'] / 'iter_30.pth').read_bytes())
    proc = run_tool('test.py', CONFIG, file_server.url('good.pth'), '--work-dir',
                    str(tmp_path / 't2'), *setup['options'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'mIoU' in proc.stdout


def test_classification_task_file_is_named_as_such():
    expected = ['backbone.prompt.embeddings', 'decode_head.conv_seg.weight']
    cls_file = {'backbone.prompt.embeddings': 0, 'backbone.signature': 0, 'head.fc.weight': 0}
    with pytest.raises(ValueError, match=r'cls.pth lacks tuned weights this model needs: '
                       r'decode_head \(1 tensors\).*a classification task file'):
        check_task_state_dict(expected, cls_file, 'cls.pth')


def test_serve_loader_names_an_unreadable_task_file(setup, tmp_path):
    path = tmp_path / 'task.pth'
    path.write_bytes((setup['reference_work'] / 'iter_30.pth').read_bytes()[:3000])
    cfg = Config.fromfile(CONFIG)
    with pytest.raises(UnreadableCheckpointError, match=f"'{path}' is not a readable task "
                       'checkpoint: its zip archive is incomplete'):
        load_task_model(cfg, str(path), pretrained=setup['vit'])
    with pytest.raises(ValueError, match='lacks tuned weights.*pretrained ViT backbone'):
        load_task_model(cfg, setup['vit'], pretrained=setup['vit'])


def test_task_file_with_a_leaked_frozen_key_names_it(setup):
    cfg = Config.fromfile(CONFIG)
    backbone = dict(cfg.model.backbone, init_cfg=dict(type='Pretrained', checkpoint=setup['vit']))
    state = MODELS.build(backbone).state_dict()
    state['layers.1.ln2.weight'] = torch.ones(32)
    with pytest.raises(ValueError, match=r'looks like a task file \(1 tuned tensors, 51 of '
                       r'the 52 frozen backbone weights absent\) but holds frozen weights '
                       r'that should not be there: layers.1.ln2.weight'):
        MODELS.build(backbone).load_state_dict(state)


def test_img_size_not_a_multiple_of_the_patch_size_is_refused():
    cfg = Config.fromfile(CONFIG)
    with pytest.raises(ValueError, match=r'img_size 30x30 is not a multiple of patch_size 8'
                       r'.*Use img_size=\(24, 24\)'):
        MODELS.build(dict(cfg.model.backbone, img_size=30, init_cfg=None))


def _other_dataset_checkpoint(setup, classes=8):
    """The reference checkpoint as if trained on a dataset of ``classes`` classes: every
    head's classifier cut to its first ``classes`` outputs."""
    path = setup['tmp'] / f'classes{classes}.pth'
    if not path.exists():
        ckpt = torch.load(setup['reference_work'] / 'iter_30.pth', weights_only=False)
        for key, value in ckpt['state_dict'].items():
            if '.conv_seg.' in key:
                ckpt['state_dict'][key] = value[:classes].clone()
        torch.save(ckpt, path)
    return path


@pytest.mark.parametrize('num_classes', [10, 200])
def test_head_of_another_class_count_than_the_dataset_fails_at_start_up(setup, num_classes):
    work = setup['tmp'] / f'classes_{num_classes}'
    proc = run_tool('train.py', CONFIG, '--work-dir', str(work), *setup['options'],
                    f'model.decode_head.num_classes={num_classes}')
    assert proc.returncode == 1
    assert (f'ClassCountError: decode_head.num_classes={num_classes}, but the dataset of '
            f'train_dataloader (ADE20KDataset, {setup["data"]}/images/training) has 150 '
            'classes') in proc.stderr, proc.stderr[-3000:]
    assert 'Set num_classes=150 in model.decode_head and every auxiliary head' in proc.stderr
    assert 'Iter(train)' not in proc.stdout and not work.joinpath('train.lock').exists()


def test_mmseg_tools_get_the_class_count_check_from_the_hook(setup, tmp_path):
    """MMSeg's own tools/train.py builds the Runner straight from the config: the
    checkpoint hook's before_run refuses, before the first iteration."""
    from mmengine.runner import Runner

    from vpt_seg.datasets.checks import ClassCountError
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict({'model.backbone.init_cfg.checkpoint': setup['vit'],
                         'model.auxiliary_head': None, 'work_dir': str(tmp_path),
                         'train_dataloader.dataset.data_root': setup['data'],
                         'val_dataloader.dataset.data_root': setup['data'],
                         'model.decode_head.num_classes': 10})
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ClassCountError, match=r'decode_head.num_classes=10, but the dataset '
                       r'of train_dataloader \(ADE20KDataset\) has 150 classes'):
        runner.train()
    assert not list(tmp_path.glob('iter_*'))


def test_testing_a_checkpoint_of_another_dataset_is_refused(setup):
    path = _other_dataset_checkpoint(setup)
    proc = run_tool('test.py', CONFIG, str(path), '--work-dir', str(setup['tmp'] / 't_cls'),
                    *setup['options'])
    assert proc.returncode == 1
    assert (f'ClassCountError: {path} has heads of 8 classes, this model 150 (the '
            "dataset's): it was trained on another dataset, and its classifiers "
            '(auxiliary_head.0.conv_seg, auxiliary_head.1.conv_seg, auxiliary_head.2.conv_seg, '
            'decode_head.conv_seg) do not fit') in proc.stderr, proc.stderr[-3000:]
    assert 'size mismatch' not in proc.stdout + proc.stderr
    assert 'Iter(test)' not in proc.stdout


def test_fine_tuning_from_another_dataset_names_the_layers_that_start_afresh(setup):
    path = _other_dataset_checkpoint(setup)
    work = setup['tmp'] / 'finetune'
    proc = run_tool('train.py', CONFIG, '--work-dir', str(work), *setup['options'],
                    f'load_from={path}', 'train_cfg.max_iters=2', 'train_cfg.val_interval=100')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f'load_from: {path} has heads of 8 classes, this model 150 (the dataset\'s); '
            'auxiliary_head.0.conv_seg, auxiliary_head.1.conv_seg, auxiliary_head.2.conv_seg, '
            'decode_head.conv_seg start afresh, every other weight is loaded from it.') \
        in proc.stdout
    assert 'size mismatch' not in proc.stdout + proc.stderr
    assert proc.stdout.count('start afresh') == 1


@pytest.mark.parametrize('bad,message', [
    ('label_200', "has label values outside the 150 classes: 200 (class id 199)"),
    ('rgb', 'has shape (64, 64, 3): expected one channel of class ids'),
])
def test_tta_uses_the_checked_loaders(setup, tmp_path, bad, message):
    import shutil

    import cv2
    data = shutil.copytree(setup['data'], tmp_path / 'data')
    path = data / 'annotations' / 'validation' / 'ADE_val_00000002.png'
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if bad == 'label_200':
        label[3, 3] = 200
    else:
        label = cv2.merge([label, label, label])
    cv2.imwrite(str(path), label)
    ckpt = str(setup['reference_work'] / 'iter_30.pth')
    for config in (CONFIG, setup['config']('tta_mmseg')):
        extra = [] if config == CONFIG else [  # a config with MMSeg's own TTA loaders
            'tta_pipeline.0.type=LoadImageFromFile',
            'tta_pipeline.1.transforms.2.0.type=LoadAnnotations',
            'tta_pipeline.1.transforms.2.0.num_classes=None']
        proc = run_tool('test.py', config, ckpt, '--tta', '--work-dir', str(tmp_path / 'w'),
                        *setup['options'], f'test_dataloader.dataset.data_root={data}', *extra)
        assert proc.returncode == 1
        assert f"DataError: annotation '{path}' {message}" in proc.stderr, proc.stderr[-3000:]
        assert 'IndexError' not in proc.stderr, proc.stderr[-5000:]
        assert 'mIoU:' not in proc.stdout
