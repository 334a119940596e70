"""Task files (safetensors): every Table 3 row round-trips through export and load.

Each row of configs/study (tiny ViT, SETR-PUP) gets random tuned weights, is saved as a
training-style checkpoint, exported with :func:`vpt_seg.export_task`, and loaded back
with only the pretrained backbone file beside the task file (the path in the config is
gone): through MMSeg's ``init_model`` (which drops ``init_cfg``) and through
:func:`vpt_seg.load_task_model` with no config (the one stored in the file). Outputs
must be bit-identical to the original model's.
"""
import json
import os
import os.path as osp
import shutil
import struct

import pytest
import torch
from mmengine.config import Config
from mmseg.apis import init_model
from mmseg.registry import MODELS

from vpt_seg import export_task, load_task_model
from vpt_seg.models.prompted_vit import SIGNATURE_FIELDS
from vpt_seg.task_file import TASK_FORMAT, read_task_file

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
STUDY = osp.join(ROOT, 'configs', 'study')
ROWS = ('head', 'bias', 'vpt-shallow', 'vpt-deep', 'vpt-bias', 'full')
PALETTE = [[i * 30, 255 - i * 30, i * 7] for i in range(8)]


def _header(path):
    with open(path, 'rb') as f:
        (n, ) = struct.unpack('<Q', f.read(8))
        return json.loads(f.read(n))


def _outputs(model, x):
    shape = tuple(x.shape[2:])
    metas = [dict(img_shape=shape, pad_shape=shape, ori_shape=shape)] * len(x)
    with torch.no_grad():
        return model.encode_decode(x, metas)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('task_file')
    cfg = Config.fromfile(osp.join(STUDY, 'head.py'))
    torch.manual_seed(0)
    vit = MODELS.build(dict(cfg.model.backbone, num_prompts=0, save_frozen=True, init_cfg=None))
    vit.init_weights()
    path = tmp / 'train' / 'vit-tiny_source.pth'
    path.parent.mkdir()
    torch.save(vit.state_dict(), path)
    return tmp, path


@pytest.mark.parametrize('row', ROWS)
def test_every_table3_row_round_trips_through_a_task_file(pretrained, row):
    tmp, vit_path = pretrained
    cfg = Config.fromfile(osp.join(STUDY, f'{row}.py'))
    cfg.model.backbone.init_cfg.checkpoint = str(vit_path)
    torch.manual_seed(1)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():  # a trained task: every tuned weight and BN statistic moved
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    model.eval()
    ckpt = tmp / f'{row}.pth'
    classes = list(cfg.classes)
    torch.save({'state_dict': model.state_dict(), 'optimizer': {'state': {}},
                'meta': {'dataset_meta': {'classes': classes, 'palette': PALETTE}}}, ckpt)

    # Publish: the task file and the pretrained file, nothing else.
    pub = tmp / 'published' / row
    pub.mkdir(parents=True)
    out = str(pub / f'{row}.safetensors')
    meta = export_task(cfg, str(ckpt), out)
    shutil.copy(vit_path, pub / vit_path.name)

    header = _header(out)  # safetensors: a JSON header and raw tensors, no pickle
    stored = header.pop('__metadata__')
    assert stored == meta
    assert stored['format'] == TASK_FORMAT and stored['pretrained'] == vit_path.name
    assert ('frozen_sha256' in stored) == (row != 'full')
    assert json.loads(stored['signature_fields']) == list(SIGNATURE_FIELDS)
    assert json.loads(stored['signature']) == model.backbone.signature.tolist()
    assert json.loads(stored['dataset_meta']) == {'classes': classes, 'palette': PALETTE}
    assert set(header) == set(model.state_dict())  # the tuned tensors (+ signature, BN stats)
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    assert tuned <= set(header)
    if row != 'full':  # a frozen backbone stays out of the file
        assert 'backbone.layers.0.attn.attn.in_proj_weight' not in header
        assert osp.getsize(out) < osp.getsize(vit_path)

    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 64)
    expected = _outputs(model, x)
    moved = vit_path.with_suffix('.away')
    vit_path.rename(moved)  # the config's path is gone: only the file beside is left
    try:
        api = init_model(cfg, out, device='cpu')
        assert torch.equal(_outputs(api, x), expected)
        assert api.dataset_meta['classes'] == classes
        alone = load_task_model(None, out)  # the config stored in the file
        assert torch.equal(_outputs(alone, x), expected)
        assert alone.dataset_meta['classes'] == classes
    finally:
        moved.rename(vit_path)


def test_pretrained_file_is_checked_by_its_weights_or_named_when_missing(pretrained):
    tmp, vit_path = pretrained
    cfg = Config.fromfile(osp.join(STUDY, 'vpt-deep.py'))
    cfg.model.backbone.init_cfg.checkpoint = str(vit_path)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict()}, tmp / 'deep.pth')
    out = str(tmp / 'lonely' / 'deep.safetensors')
    (tmp / 'lonely').mkdir()
    export_task(cfg, str(tmp / 'deep.pth'), out)
    state, _ = read_task_file(out)
    beside = osp.join(osp.dirname(out), vit_path.name)
    assert state._metadata['backbone']['pretrained'] == [beside, str(vit_path)]
    impostor = torch.load(vit_path, weights_only=True)  # same architecture, other values
    impostor['layers.0.ln1.weight'] = impostor['layers.0.ln1.weight'] + 1e-3
    torch.save(impostor, beside)
    init_model(cfg, out, device='cpu')  # skips it for the recorded path, whose weights match
    moved = vit_path.with_suffix('.away')
    vit_path.rename(moved)
    try:
        with pytest.raises(ValueError, match='holds the frozen weights this task was trained'):
            init_model(cfg, out, device='cpu')
        os.remove(beside)
        with pytest.raises(FileNotFoundError, match='none exists') as err:
            init_model(cfg, out, device='cpu')
        assert beside in str(err.value) and str(vit_path) in str(err.value)
    finally:
        moved.rename(vit_path)
    with pytest.raises(ValueError, match='must end in .safetensors'):
        export_task(cfg, str(tmp / 'deep.pth'), str(tmp / 'deep.pth2'))
