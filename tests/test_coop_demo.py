"""The CoOp demo end to end on a tiny random CLIP file in open_clip's layout:
tools/train.py, a task file written and loaded back, tools/test.py on it, and a new class
list at test time (configs/demo/coop_cls_tiny.py, docs/coop.md)."""
import os.path as osp
import re

import torch
from helpers import ROOT, run_tool
from mmengine.config import Config

from vpt_seg.datasets.synthetic_cls import make_cls_folder
from vpt_seg.formats.export import export_task
from vpt_seg.formats.loading import load_task_model
from vpt_seg.models.tiny_clip import write_tiny_clip

DEMO = osp.join(ROOT, 'configs', 'demo', 'coop_cls_tiny.py')
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
NEW = ['red circle', 'green box', 'blue wedge', 'yellow hoop', 'magenta plus', 'cyan bars']


def run(tool, *args):  # the command, in a forked child (tests/helpers.py)
    proc = run_tool(tool, *args)
    assert proc.returncode == 0, f'{tool}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc.stdout + proc.stderr


def top1(log):
    found = re.findall(r'accuracy/top1: ([\d.]+)', log)
    assert found, log[-2000:]
    return float(found[-1])


def test_coop_demo_trains_exports_loads_and_tests_new_class_names(tmp_path):
    ref = write_tiny_clip(str(tmp_path / 'tiny_clip'))
    clip = str(tmp_path / 'tiny_clip' / 'open_clip_model.safetensors')
    data = make_cls_folder(str(tmp_path / 'data'), num_train=4, num_val=2, seed=0)
    overrides = {'model.backbone.checkpoint': clip, 'model.head.text_encoder.checkpoint': clip,
                 **{f'{loader}.dataset.data_root': data for loader in LOADERS}}
    options = ['--cfg-options'] + [f'{k}={v}' for k, v in overrides.items()]
    work = tmp_path / 'work'
    train = run('train.py', DEMO, '--work-dir', str(work), *options, 'train_cfg.max_iters=4',
                'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=4',
                'param_scheduler.0.end=4', 'train_dataloader.batch_size=8')
    assert 'tuned 1.0K of' in train and 'context 1.0K' in train  # 16 x 64: the context only

    # The task checkpoint holds the context (and the towers' signatures), nothing frozen.
    ckpt = str(work / 'iter_4.pth')
    state = torch.load(ckpt, weights_only=True)['state_dict']
    assert set(state) == {'backbone.signature', 'head.text_encoder.signature',
                          'head.text_encoder.prompt.ctx'}
    assert state['head.text_encoder.prompt.ctx'].shape == (16, 64)

    # A task file, written and loaded back: the same context, the same logits.
    cfg = Config.fromfile(DEMO)
    cfg.merge_from_dict(overrides)
    task = str(tmp_path / 'coop.safetensors')
    export_task(cfg, ckpt, task)
    from_ckpt, from_task = load_task_model(cfg, ckpt), load_task_model(cfg, task)
    assert torch.equal(from_task.head.text_encoder.ctx, state['head.text_encoder.prompt.ctx'])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = from_task(x)
        torch.testing.assert_close(logits, from_ckpt(x), rtol=0, atol=0)
        # the image side is CLIP's: f(x) is open_clip's encode_image of the same file
        torch.testing.assert_close(from_task.extract_feat(x), ref.encode_image(x),
                                   rtol=0, atol=1e-5)

    # tools/test.py on the task file: the numbers of the last validation (same weights).
    log = run('test.py', DEMO, task, '--work-dir', str(tmp_path / 't'), *options)
    assert top1(log) == top1(train)
    # A new class list at test time, as --cfg-options gives it (a unified context fits
    # any list; MMEngine's --cfg-options drops spaces inside lists, hence the underscores).
    cfg.merge_from_dict({'model.head.text_encoder.vocabulary':
                         [n.replace(' ', '_') for n in NEW]})
    renamed = load_task_model(cfg, task)
    assert renamed.head.class_names == NEW
    with torch.no_grad():
        assert not torch.allclose(renamed(x), logits)  # other names, other text embeddings
        from_task.head.set_classes(NEW)                 # the Python API gives the same
        torch.testing.assert_close(from_task(x), renamed(x), rtol=0, atol=1e-6)
