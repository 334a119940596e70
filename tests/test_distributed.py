"""2-process DDP on CPU through tools/dist_train.sh equals 1 process with the same total batch.

The tiny demo config, made deterministic so the two runs are comparable: no random
augmentation (every image resized to the crop), no prompt dropout, GroupNorm instead of
BatchNorm in the head (per-sample statistics), no auxiliary heads. Then 1 process x batch 4
and 2 processes x batch 2 see the same images each step (MMEngine's InfiniteSampler deals
a seeded order round-robin), the loss is a mean over equally many pixels per image, and
DDP averages the gradients: the tuned weights must agree after every step, and each
step's loss must be the mean of the two ranks' losses. About a minute on 2 CPU cores.
"""
import os
import os.path as osp
import re
import socket
import subprocess
import sys

import pytest
import torch
from helpers import ROOT
from mmengine.config import Config
from mmseg.registry import MODELS

from vpt_seg.datasets.synthetic import make_ade20k
from vpt_seg.engine import distributed as vpt_runner

CONFIG = osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_ade20k.py')
ITERS = 4
TOTAL_BATCH = 4

DETERMINISTIC = '''
_base_ = [{base!r}]
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', scale=(32, 32), keep_ratio=False),
    dict(type='PackSegInputs'),
]
model = dict(
    backbone=dict(prompt_dropout=0.0, init_cfg=dict(checkpoint={vit!r})),
    decode_head=dict(norm_cfg=dict(type='GN', num_groups=4, requires_grad=True)),
    auxiliary_head=None)
train_dataloader = dict(batch_size={batch}, dataset=dict(data_root={data!r}, pipeline=pipeline))
val_dataloader = dict(dataset=dict(data_root={data!r}))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={iters}, val_interval=1000)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={iters}))
log_processor = dict(window_size=1)
log_level = 'DEBUG'  # MMEngine then writes one log per rank
env_cfg = dict(dist_cfg=dict(backend='nccl'))  # MMSeg's default: gloo is picked without CUDA
'''


@pytest.mark.parametrize('configured, cuda, expected', [
    ('nccl', True, 'nccl'), ('nccl', False, 'gloo'), ('gloo', True, 'gloo'),
    ('gloo', False, 'gloo'), ('mpi', False, 'mpi')])
def test_backend_follows_the_device(configured, cuda, expected):
    assert vpt_runner.dist_backend(configured, cuda) == expected


@pytest.mark.parametrize('dist_cfg, logged', [
    (dict(backend='nccl'), True), (dict(), True), (dict(backend='gloo'), False)])
def test_cpu_launch_of_an_nccl_config_uses_gloo_and_says_so(monkeypatch, dist_cfg, logged):
    started, lines = [], []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: False)
    monkeypatch.setattr(torch.distributed, 'init_process_group',
                        lambda **kw: started.append(kw))
    monkeypatch.setattr(vpt_runner, 'print_log', lambda msg, **kw: lines.append(msg))
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '2')
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dist_cfg)))
    vpt_runner.setup_distributed(cfg)
    assert [kw['backend'] for kw in started] == ['gloo']
    assert cfg.model_wrapper_cfg.device_ids is None
    if logged:
        assert cfg.env_cfg.dist_cfg.backend == 'gloo'
        assert lines == ["no CUDA device: the process group uses the gloo backend instead "
                         "of the config's nccl (env_cfg.dist_cfg.backend)"]
    else:
        assert lines == []


def test_cpu_launch_refuses_a_backend_other_than_nccl_or_gloo(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='mpi'))))
    with pytest.raises(ValueError, match="backend='mpi'.*backend=gloo"):
        vpt_runner.setup_distributed(cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _losses(log_path):
    text = open(log_path).read()
    found = re.findall(r'Iter\(train\) \[\s*(\d+)/\d+\].*?\sloss: ([\d.]+)', text)
    return {int(i): float(v) for i, v in found}


def _log_files(work_dir):
    return sorted(osp.join(d, f) for d, _, files in os.walk(work_dir) for f in files
                  if f.endswith('.log'))


def test_two_cpu_processes_equal_one_with_the_same_total_batch(tmp_path):
    data = make_ade20k(str(tmp_path / 'data'), num_train=16, num_val=2, size=(48, 48), seed=0)
    cfg = Config.fromfile(CONFIG)
    vit = MODELS.build(dict(cfg.model.backbone, num_prompts=0, save_frozen=True, init_cfg=None))
    vit.init_weights()
    torch.save(vit.state_dict(), tmp_path / 'vit.pth')
    configs = {}
    for procs in (1, 2):
        path = tmp_path / f'ddp{procs}.py'
        path.write_text(DETERMINISTIC.format(base=CONFIG, vit=str(tmp_path / 'vit.pth'),
                                             data=data, batch=TOTAL_BATCH // procs,
                                             iters=ITERS))
        configs[procs] = str(path)

    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PORT=str(_free_port()),
               CUDA_VISIBLE_DEVICES='')
    single = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), configs[1],
                             '--work-dir', str(tmp_path / 'one')],
                            capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    dist = subprocess.run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), configs[2], '2',
                           '--work-dir', str(tmp_path / 'two')],
                          capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert dist.returncode == 0, (dist.stdout[-3000:], dist.stderr[-3000:])
    assert 'Distributed training: True' in dist.stdout
    assert "gloo backend instead of the config's nccl" in dist.stdout + dist.stderr

    # The same tuned weights, step for step: compare the final checkpoints.
    one = torch.load(tmp_path / 'one' / f'iter_{ITERS}.pth', weights_only=True)['state_dict']
    two = torch.load(tmp_path / 'two' / f'iter_{ITERS}.pth', weights_only=True)['state_dict']
    assert set(one) == set(two)
    assert {k for k in one if k.startswith('backbone.')} == {'backbone.prompt.embeddings',
                                                            'backbone.signature'}
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)

    # Every step's loss: 1 process == the mean of the 2 ranks' losses (each rank logs its own).
    (single_log, ) = [f for f in _log_files(tmp_path / 'one')]
    rank_logs = [f for f in _log_files(tmp_path / 'two') if re.search(r'rank\d\.log$', f)]
    assert len(rank_logs) == 2, _log_files(tmp_path / 'two')
    ref = _losses(single_log)
    ranks = [_losses(f) for f in rank_logs]
    assert sorted(ref) == list(range(1, ITERS + 1)) and all(r.keys() == ref.keys() for r in ranks)
    assert ranks[0] != ranks[1]  # each rank saw its own half of the batch
    for it in ref:
        mean = (ranks[0][it] + ranks[1][it]) / 2
        assert abs(mean - ref[it]) < 2e-4, (it, ref[it], ranks[0][it], ranks[1][it])
