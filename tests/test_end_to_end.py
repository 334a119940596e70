"""tools/train.py and tools/test.py on generated ADE20k-layout data and a tiny ViT."""
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

from vpt_seg.datasets.synthetic import make_ade20k

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_ade20k.py')


def run_tool(tool, *args, check=True):
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', tool), *args],
                          capture_output=True, text=True, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f'{tool} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return proc


def miou(text):
    found = re.findall(r'mIoU: ([\d.]+)', text)
    assert found, text[-2000:]
    return float(found[-1])


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('e2e')
    data = make_ade20k(str(tmp / 'data'), num_train=16, num_val=4, size=(64, 64), seed=0)
    cfg = Config.fromfile(CONFIG)
    backbone = dict(cfg.model.backbone, num_prompts=0, save_frozen=True, init_cfg=None)
    vit = MODELS.build(backbone)
    vit.init_weights()
    torch.save(vit.state_dict(), tmp / 'vit.pth')
    options = ['--cfg-options', f'model.backbone.init_cfg.checkpoint={tmp / "vit.pth"}'] + [
        f'{loader}.dataset.data_root={data}'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    work = tmp / 'work'
    train = run_tool('train.py', CONFIG, '--work-dir', str(work), *options,
                     'train_cfg.max_iters=20', 'train_cfg.val_interval=20')
    return dict(tmp=tmp, data=data, options=options, work=work, train_log=train.stdout,
                vit=vit)


def test_train_writes_a_task_checkpoint_of_tuned_weights_only(setup):
    ckpt = torch.load(setup['work'] / 'iter_20.pth')
    keys = set(ckpt['state_dict'])
    backbone_keys = {k for k in keys if k.startswith('backbone.')}
    assert backbone_keys == {'backbone.prompt.embeddings', 'backbone.signature'}
    assert any(k.startswith('decode_head.') for k in keys)
    assert any(k.startswith('auxiliary_head.') for k in keys)
    assert 'optimizer' in ckpt and ckpt['meta']['iter'] == 20
    assert 'mIoU' in setup['train_log']


def test_test_tool_reports_miou_single_scale_and_tta(setup):
    ckpt = str(setup['work'] / 'iter_20.pth')
    single = run_tool('test.py', CONFIG, ckpt, '--work-dir', str(setup['tmp'] / 't1'),
                      *setup['options']).stdout
    assert 'loading the frozen backbone' in single
    assert 0 < miou(single) <= 100
    assert miou(single) == miou(setup['train_log'])  # same weights, same numbers
    tta = run_tool('test.py', CONFIG, ckpt, '--tta', '--work-dir', str(setup['tmp'] / 't2'),
                   *setup['options']).stdout
    assert 0 < miou(tta) <= 100


def test_resume_continues_an_interrupted_run(setup):
    log = run_tool('train.py', CONFIG, '--work-dir', str(setup['work']), '--resume',
                   *setup['options'], 'train_cfg.max_iters=30').stdout
    assert 'resumed epoch: 0, iter: 20' in log
    ckpt = torch.load(setup['work'] / 'iter_30.pth')
    assert ckpt['meta']['iter'] == 30
    before = torch.load(setup['work'] / 'iter_20.pth')['state_dict']['backbone.prompt.embeddings']
    assert not torch.equal(before, ckpt['state_dict']['backbone.prompt.embeddings'])


def test_missing_data_root_is_a_clear_error(setup):
    proc = run_tool('train.py', CONFIG, '--work-dir', str(setup['tmp'] / 'w2'),
                    *setup['options'], 'train_dataloader.dataset.data_root=/no/such/ade',
                    check=False)
    assert proc.returncode != 0
    assert "dataset folder '/no/such/ade/images/training'" in proc.stderr


def test_missing_pretrained_file_is_a_clear_error(setup):
    proc = run_tool('train.py', CONFIG, '--work-dir', str(setup['tmp'] / 'w3'),
                    *setup['options'], 'model.backbone.init_cfg.checkpoint=/no/vit.pth',
                    check=False)
    assert proc.returncode != 0
    assert "pretrained backbone weights not found: '/no/vit.pth'" in proc.stderr


def test_checkpoint_of_another_backbone_is_a_clear_error(setup):
    other = str(setup['tmp'] / 'other.pth')
    ckpt = torch.load(setup['work'] / 'iter_20.pth')
    ckpt['state_dict']['backbone.prompt.embeddings'] = torch.zeros(4, 4, 48)
    torch.save(ckpt, other)
    proc = run_tool('test.py', CONFIG, other, '--work-dir', str(setup['tmp'] / 't3'),
                    *setup['options'], check=False)
    assert proc.returncode != 0
    assert 'does not fit this backbone' in proc.stderr
    assert '(4, 4, 48) in the checkpoint, (4, 4, 32) here' in proc.stderr
