"""tools/serve.py gives what each task model's ``predict`` (what tools/test.py runs) gives,
for every head kind: single-label linear and MLP heads (softmax), a multi-label head
(image tags: sigmoid, every class above 0.5) and a segmentation head (label maps)."""
import csv
import json
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import vpt_seg  # noqa: F401  (before mmseg)
from mmengine.registry import init_default_scope
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from vpt_seg.multitask import load_task_model

init_default_scope('mmseg')
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ARCH = dict(img_size=(32, 32), patch_size=8, embed_dims=32, num_layers=4, num_heads=4,
            patch_bias=True, norm_cfg=dict(type='LN', eps=1e-6))
CLASSES = ('cat', 'dog', 'car', 'tree', 'sky', 'road')


def _backbone(**kw):
    return dict(type='PromptedVisionTransformer', **ARCH, **kw)


def _cls(head, **kw):
    return dict(type='VPTClassifier', backbone=_backbone(num_prompts=3, **kw),
                head=dict(in_channels=32, num_classes=len(CLASSES), **head))


# name -> model config (no init_cfg: serve gives every task the shared pretrained file)
TASKS = {
    'single': _cls(dict(type='LinearClsHead'), deep=True),
    'mlp': _cls(dict(type='MLPClsHead'), deep=False, tune_bias=True),
    'tags': _cls(dict(type='LinearClsHead', multi_label=True), deep=True),
    'seg': dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[100., 110., 120.],
                               std=[50., 60., 70.], bgr_to_rgb=True),
        backbone=_backbone(num_prompts=2, deep=True),
        decode_head=dict(type='SETRUPHead', in_channels=32, channels=8, in_index=-1,
                         num_classes=5, num_convs=2, up_scale=2, kernel_size=3,
                         norm_cfg=dict(type='BN'), align_corners=False, dropout_ratio=0,
                         loss_decode=dict(type='CrossEntropyLoss')),
        test_cfg=dict(mode='whole')),
}


@pytest.fixture(scope='module')
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('serve')
    torch.manual_seed(0)
    vit = VisionTransformer(final_norm=True, **ARCH)
    vit.init_weights()
    pretrained = str(tmp / 'vit.pth')
    torch.save(vit.state_dict(), pretrained)
    specs = {}
    for seed, (name, model_cfg) in enumerate(TASKS.items()):
        cfg_path = str(tmp / f'{name}.py')
        with open(cfg_path, 'w') as f:
            f.write(f"custom_imports = dict(imports=['vpt_seg'], allow_failed_imports=False)\n"
                    f"default_scope = 'mmseg'\nmodel = {model_cfg!r}\n"
                    f"test_dataloader = dict(dataset=dict(classes={list(CLASSES)!r}))\n")
        torch.manual_seed(seed)  # a trained-like task: random tuned weights
        model = MODELS.build(dict(model_cfg, backbone=dict(
            model_cfg['backbone'], init_cfg=dict(type='Pretrained', checkpoint=pretrained))))
        model.init_weights()
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.5 * torch.randn_like(p))
        ckpt = str(tmp / f'{name}.pth')
        torch.save(dict(state_dict=model.state_dict()), ckpt)
        specs[name] = (cfg_path, ckpt)
    images = tmp / 'images'
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(images / f'img{i}.png'), rng.integers(0, 256, (32, 32, 3), np.uint8))
    out = tmp / 'out'
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'serve.py'), pretrained,
         *[f'{n}={c}:{k}' for n, (c, k) in specs.items()], '--images', str(images),
         '--out-dir', str(out), '--batch-size', '6'],
        capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(out=out, images=images, specs=specs, pretrained=pretrained)


def _predict(served, name, image):
    """What tools/test.py computes for one image: the task model's own predict."""
    cfg_path, ckpt = served['specs'][name]
    model = load_task_model(cfg_path, ckpt, pretrained=served['pretrained'])
    img = cv2.imread(str(served['images'] / image), cv2.IMREAD_COLOR)  # BGR, as serve reads
    data = model.data_preprocessor(
        dict(inputs=[torch.from_numpy(img.transpose(2, 0, 1).copy())]), False)
    samples = None
    if name == 'seg':
        samples = [SegDataSample(metainfo=dict(img_shape=(32, 32), ori_shape=(32, 32),
                                               pad_shape=(32, 32)))]
    with torch.no_grad():
        return model.predict(data['inputs'], samples)[0]


@pytest.mark.parametrize('task', ['single', 'mlp', 'tags'])
def test_class_predictions_are_the_models_predict(served, task):
    with open(served['out'] / 'predictions.json') as f:
        rows = [r for r in json.load(f) if r['task'] == task]
    assert len(rows) == 5
    present = []
    for row in rows:
        ref = _predict(served, task, row['image'])
        torch.testing.assert_close(torch.tensor(row['pred_score']), ref.pred_score,
                                   atol=1e-5, rtol=1e-4)
        assert row['pred_label'] == ref.pred_label.tolist(), row['image']
        assert row['multi_label'] == (task == 'tags')
        top = ref.pred_score.argsort(descending=True)[:5].tolist()
        assert [name for name, _ in row['top5']] == [CLASSES[i] for i in top]
        if task == 'tags':  # sigmoid per class, every class above 0.5 named
            assert row['labels'] == ref.pred_label.nonzero().flatten().tolist()
            assert row['names'] == [CLASSES[i] for i in row['labels']]
            assert all(s > 0.5 for s in row['scores'])
            present += ref.pred_label.tolist()
        else:  # softmax, the argmax
            assert abs(sum(row['pred_score']) - 1) < 1e-5
            assert row['label'] == int(ref.pred_label)
            assert row['name'] == CLASSES[row['label']]
    if task == 'tags':  # the case is not degenerate: tags both present and absent
        assert 0 < sum(present) < len(present)


def test_csv_lists_the_present_tags_of_a_multi_label_task(served):
    with open(served['out'] / 'predictions.json') as f:
        rows = {(r['image'], r['task']): r for r in json.load(f)}
    with open(served['out'] / 'predictions.csv') as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) == 5 * 3
    for line in table:
        row = rows[line['image'], line['task']]
        if line['task'] == 'tags':
            assert line['name'] == ';'.join(row['names'])
            assert line['label'] == ';'.join(map(str, row['labels']))
        else:
            assert int(line['label']) == row['label'] and line['name'] == row['name']


def test_label_maps_are_the_segmentors_predict(served):
    for i in range(5):
        ref = _predict(served, 'seg', f'img{i}.png')
        label = cv2.imread(str(served['out'] / 'seg' / f'img{i}.png'), cv2.IMREAD_UNCHANGED)
        expected = ref.pred_sem_seg.data[0].numpy()
        assert label.shape == expected.shape == (32, 32)
        # equal, except where the reference's two best classes tie within float rounding
        top2 = ref.seg_logits.data.topk(2, dim=0).values
        near_tie = (top2[0] - top2[1]).numpy() < 1e-4
        assert ((label == expected) | near_tie).all(), f'img{i}'
        assert len(np.unique(expected)) > 1  # not a constant map
