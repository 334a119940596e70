"""Task files (safetensors): every Table 3 row round-trips through export and load.

Each row of configs/study (tiny ViT, SETR-PUP) gets random tuned weights, is saved as a
training-style checkpoint, exported with :func:`vpt_seg.export_task`, and loaded back
with only the pretrained backbone file beside the task file (the path in the config is
gone): through MMSeg's ``init_model`` (which drops ``init_cfg``) and through
:func:`vpt_seg.load_task_model` with no config (the one stored in the file). Outputs
must be bit-identical to the original model's.
"""
import copy
import json
import os
import os.path as osp
import shutil
import struct

import pytest
import torch
from helpers import ROOT, tool, trained_like
from mmengine.config import Config
from mmseg.apis import init_model
from mmseg.registry import MODELS

from vpt_seg import export_task, load_task_model
from vpt_seg.formats.task_file import (
    FORMAT_VERSION,
    TASK_FORMAT,
    read_task_config,
    read_task_file,
    read_task_metadata,
)
from vpt_seg.models.prompted_vit import SIGNATURE_FIELDS

STUDY = osp.join(ROOT, 'configs', 'study')
ROWS = ('head', 'bias', 'vpt-shallow', 'vpt-deep', 'vpt-bias', 'full')
LORA = dict(rank=2, alpha=4, targets=('q', 'v', 'proj', 'fc1', 'fc2'))
# LoRA and AdaptFormer tasks beside them: a row's config with the option set
TUNERS = {'lora': ('head', dict(lora=LORA)),
          'adaptformer': ('head', dict(adapter=dict(width=8, scale=0.5))),
          'lora-vpt': ('vpt-deep', dict(lora=LORA))}
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


def _row_config(row, vit_path):
    base, options = TUNERS.get(row, (row, {}))
    cfg = Config.fromfile(osp.join(STUDY, f'{base}.py'))
    cfg.model.backbone.update(options)
    cfg.model.backbone.init_cfg.checkpoint = str(vit_path)
    return cfg


@pytest.mark.parametrize('row', ROWS + tuple(TUNERS))
def test_every_table3_row_round_trips_through_a_task_file(pretrained, row):
    tmp, vit_path = pretrained
    cfg = _row_config(row, vit_path)
    # a trained task: every tuned weight and BN statistic moved
    model = trained_like(cfg.model, seed=1, batchnorm=True)
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
    options = TUNERS.get(row, (row, {}))[1]
    for part in ('lora', 'adapter'):  # the tuners' tensors, and only where set
        assert any(k.startswith(f'backbone.{part}.') for k in header) == (part in options)
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


@pytest.fixture(scope='module')
def tuner_files(pretrained):
    """Task files of the LoRA, AdaptFormer and head-only rows (random tuned weights)."""
    tmp, vit_path = pretrained
    files = {}
    for seed, row in enumerate(('lora', 'adaptformer', 'head')):
        cfg = _row_config(row, vit_path)
        model = trained_like(cfg.model, seed=10 + seed)
        torch.save({'state_dict': model.state_dict()}, tmp / f'{row}_tuner.pth')
        files[row] = str(tmp / f'{row}_tuner.safetensors')
        export_task(cfg, str(tmp / f'{row}_tuner.pth'), files[row])
    return files


@pytest.mark.parametrize('row,change,match', [
    ('lora', dict(lora=None), r'holds lora weights .* this backbone has lora=None: '
     r'set model\.backbone\.lora'),
    ('lora', dict(lora=dict(LORA, targets=('q', 'v'))),
     r'holds lora weights \(lora\.layers\.0\.fc1\.A.*without these layers: '
     r'set model\.backbone\.lora'),
    ('lora', dict(lora=dict(LORA, targets=LORA['targets'] + ('k', ))),
     r'lack.*lora.*set model\.backbone\.lora'),
    ('lora', dict(lora=dict(LORA, rank=4)),
     r'lora weights of other shapes .*another rank.*lora\.layers\.0\.fc1\.A: \(2, 64\) in the '
     r'checkpoint, \(4, 64\) here.*set model\.backbone\.lora'),
    ('adaptformer', dict(adapter=None), r'holds adapter weights .* this backbone has '
     r'adapter=None: set model\.backbone\.adapter'),
    ('adaptformer', dict(adapter=dict(width=4)),
     r'adapter weights of other shapes .*another width.*set model\.backbone\.adapter'),
    ('head', dict(lora=LORA), r'lack.*lora.*set model\.backbone\.lora.*or lora=None'),
])
def test_a_tuner_task_file_refuses_a_config_with_other_tuner_options(
        pretrained, tuner_files, row, change, match):
    """Nothing is loaded silently: every loader (vpt-seg's strict one, MMSeg's non-strict
    init_model) refuses, naming the option."""
    cfg = _row_config(row, pretrained[1])
    cfg.model.backbone.update(change)
    with pytest.raises(ValueError, match=match):
        load_task_model(copy.deepcopy(cfg), tuner_files[row])
    with pytest.raises(ValueError, match=match):
        init_model(copy.deepcopy(cfg), tuner_files[row], device='cpu')


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


# ------------------------------------------------- a task file is data, read safely
def _rewrite(src, dst, **changes):
    """Copy a task file with header keys changed (None: removed)."""
    from safetensors.torch import load_file, save_file
    meta = dict(read_task_metadata(str(src)))
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return str(dst)


_tool = tool  # tools/NAME.py as a module (tests/helpers.py)


@pytest.fixture(scope='module')
def deep(pretrained):
    """A VPT-deep task file with the pretrained file beside it, its config and outputs."""
    tmp, vit_path = pretrained
    cfg = Config.fromfile(osp.join(STUDY, 'vpt-deep.py'))
    cfg.model.backbone.init_cfg.checkpoint = str(vit_path)
    torch.manual_seed(3)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    ckpt = tmp / 'deep_task.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': {
        'classes': list(cfg.classes), 'palette': PALETTE}}}, ckpt)
    pub = tmp / 'deep_pub'
    pub.mkdir()
    out = pub / 'deep.safetensors'
    export_task(cfg, str(ckpt), str(out))
    shutil.copy(vit_path, pub / vit_path.name)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    return dict(cfg=cfg, file=out, ckpt=ckpt, vit=vit_path, x=x, expected=_outputs(model, x))


def test_a_task_file_stores_its_config_as_data_that_builds_the_same_model(deep):
    header = _header(deep['file'])['__metadata__']
    assert header['format_version'] == FORMAT_VERSION == '2'
    assert 'config' not in header  # no Python text
    stored = json.loads(header['config_json'])
    assert stored['model']['backbone']['type'] == 'PromptedVisionTransformer'
    cfg = read_task_config(str(deep['file']))
    # Read into the header schema: the model as trained (tuples come back as tuples) and
    # the test pipeline; the training settings stored beside them are not read.
    assert cfg.to_dict()['model'] == deep['cfg'].to_dict()['model']
    assert cfg.test_dataloader.dataset.pipeline == deep['cfg'].test_dataloader.dataset.pipeline
    assert set(cfg) == {'model', 'default_scope', 'test_dataloader', 'visualizer'}
    assert set(cfg.test_dataloader) == {'dataset'}
    assert torch.equal(_outputs(load_task_model(None, str(deep['file'])), deep['x']),
                       deep['expected'])


PAYLOAD = "_x = __import__('pathlib').Path({marker!r}).write_text('ran')\n"


@pytest.mark.parametrize('where', ['load_task_model', 'serve', 'MMSegInferencer'])
def test_a_payload_in_the_header_runs_nowhere(deep, tmp_path, where):
    """Python text under the old key, and a config whose 'type' names a function (MMEngine
    would import and call it by name): neither runs, whoever loads the file."""
    from mmseg.apis import MMSegInferencer
    marker = str(tmp_path / 'marker')
    data = json.loads(read_task_metadata(str(deep['file']))['config_json'])
    data['model']['data_preprocessor'] = {'type': 'os.system', 'command': f'touch {marker}'}
    text = PAYLOAD.format(marker=marker) + deep['cfg'].pretty_text
    bad = _rewrite(deep['file'], tmp_path / 'bad.safetensors', config=text,
                   config_json=json.dumps(data))
    load = {'load_task_model': lambda: load_task_model(None, bad),
            'serve': lambda: _tool('serve').task_config(None, bad),
            'MMSegInferencer': lambda: MMSegInferencer(model=None, weights=bad,
                                                       device='cpu')}[where]
    with pytest.raises(ValueError, match=r"header key 'config_json': model.data_preprocessor."
                       r"type: 'os.system' is not a data_preprocessor kind a task file may "
                       r"name \(SegDataPreProcessor, ImgDataPreprocessor\)"):
        load()
    assert not osp.exists(marker)


def test_a_task_file_with_its_config_builds_in_mmseg_inferencer(deep):
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=None, weights=str(deep['file']), device='cpu')
    assert torch.equal(_outputs(inferencer.model, deep['x']), deep['expected'])
    assert inferencer.model.dataset_meta['classes'] == list(deep['cfg'].classes)


def test_a_version_1_file_loads_with_its_config_named_and_is_never_parsed(deep, tmp_path):
    from mmseg.apis import MMSegInferencer

    from vpt_seg.formats.task_file import load_from_safetensors
    marker = str(tmp_path / 'marker')
    old = _rewrite(deep['file'], deep['file'].parent / 'old.safetensors', format_version='1',
                   config_json=None,
                   config=PAYLOAD.format(marker=marker) + deep['cfg'].pretty_text)
    try:
        assert 'cfg' not in load_from_safetensors(old)['meta']  # never handed to MMEngine
        assert torch.equal(_outputs(load_task_model(deep['cfg'], old), deep['x']),
                           deep['expected'])
        assert torch.equal(_outputs(init_model(copy.deepcopy(deep['cfg']), old, device='cpu'),
                                    deep['x']), deep['expected'])
        with pytest.raises(ValueError, match=r'format version 1.*python tools/export_task.py '
                           rf'CONFIG {old} NEW.safetensors'):
            load_task_model(None, old)
        with pytest.raises(ValueError, match='format version 1'):
            _tool('serve').task_config(None, old)
        with pytest.raises(ValueError, match='Cannot find the config'):
            MMSegInferencer(model=None, weights=old, device='cpu')
        # Re-exported as version 2, it loads alone again.
        new = str(tmp_path / 'new.safetensors')
        export_task(deep['cfg'], old, new)
        shutil.copy(deep['vit'], tmp_path / deep['vit'].name)
        assert read_task_metadata(new)['format_version'] == '2'
        assert torch.equal(_outputs(load_task_model(None, new), deep['x']), deep['expected'])
    finally:
        os.remove(old)
    assert not osp.exists(marker)


@pytest.fixture
def notes(monkeypatch):
    from vpt_seg.formats import frozen_weights, loading, task_file
    from vpt_seg.models import prompted_vit
    lines = []
    monkeypatch.setattr(task_file, 'print_log', lambda msg, **kw: lines.append(msg))
    monkeypatch.setattr(loading, 'print_log', lambda msg, **kw: lines.append(msg))
    monkeypatch.setattr(frozen_weights, 'print_log', lambda msg, **kw: lines.append(msg))
    monkeypatch.setattr(prompted_vit, 'print_log', lambda msg, **kw: lines.append(msg))
    return lines


@pytest.mark.parametrize('name', ['../vit.pth', '/ABS/vit.pth', 'sub/vit.pth', '..'])
def test_pretrained_must_be_a_bare_name_next_to_the_task_file(deep, tmp_path, notes, name):
    pub = tmp_path / 'pub' / 'inner'
    pub.mkdir(parents=True)
    (tmp_path / 'pub' / 'vit.pth').write_text('not weights')  # what '../vit.pth' reaches
    (pub / 'sub').mkdir()
    (pub / 'sub' / 'vit.pth').write_text('not weights')
    name = name.replace('/ABS', str(tmp_path / 'pub'))
    bad = _rewrite(deep['file'], pub / 'task.safetensors', pretrained=name,
                   pretrained_path=str(deep['vit']))
    model = load_task_model(None, bad)  # the matching file is still found
    assert torch.equal(_outputs(model, deep['x']), deep['expected'])
    assert any(f"header key 'pretrained' ({name!r}) is not a bare file name" in n and bad in n
               for n in notes), notes
    assert not any(': skipped, ' in n for n in notes), notes  # never read


def test_pretrained_path_is_never_fetched(deep, tmp_path, notes, file_server):
    url = file_server.url('vit.pth')
    shutil.copy(deep['vit'], file_server.root / 'vit.pth')
    pub = tmp_path / 'pub'
    pub.mkdir()
    bad = _rewrite(deep['file'], pub / 'task.safetensors', pretrained='missing.pth',
                   pretrained_path=url)
    cfg = copy.deepcopy(deep['cfg'])
    cfg.model.backbone.init_cfg.checkpoint = str(deep['vit'])
    assert torch.equal(_outputs(load_task_model(cfg, bad), deep['x']), deep['expected'])
    assert any(f"header key 'pretrained_path' ({url!r}) is a URL, which is never fetched"
               in n for n in notes), notes
    alone = copy.deepcopy(deep['cfg'])
    alone.model.backbone.init_cfg = None
    with pytest.raises(FileNotFoundError, match='none exists'):
        init_model(alone, bad, device='cpu')  # no init_cfg: nothing else to try
    # The stored config's init_cfg is header data too: a URL there is dropped.
    data = json.loads(read_task_metadata(str(deep['file']))['config_json'])
    data['model']['backbone']['init_cfg']['checkpoint'] = url
    shutil.copy(deep['vit'], pub / 'vit.pth')
    bad = _rewrite(deep['file'], pub / 'task2.safetensors', pretrained='vit.pth',
                   pretrained_path=url, config_json=json.dumps(data))
    assert torch.equal(_outputs(load_task_model(None, bad), deep['x']), deep['expected'])
    assert any('init_cfg.checkpoint' in n and 'never fetched: dropped' in n for n in notes)
    assert file_server.requests == []


@pytest.mark.parametrize('beside', ['missing', 'garbage', 'other weights', 'other ViT'])
def test_a_bad_candidate_is_skipped_and_the_next_one_used(deep, tmp_path, notes, beside):
    pub = tmp_path / 'pub'
    pub.mkdir()
    task = _rewrite(deep['file'], pub / 'task.safetensors', pretrained='vit.pth',
                    pretrained_path=str(deep['vit']))
    sd = torch.load(deep['vit'], weights_only=True)
    if beside == 'garbage':
        (pub / 'vit.pth').write_bytes(b'\x00garbage')
    elif beside == 'other weights':
        sd['layers.0.ln1.weight'] = sd['layers.0.ln1.weight'] + 1e-3
        torch.save(sd, pub / 'vit.pth')
    elif beside == 'other ViT':
        torch.save({k: v for k, v in sd.items() if not k.startswith('layers.2.')},
                   pub / 'vit.pth')
    assert torch.equal(_outputs(init_model(copy.deepcopy(deep['cfg']), task, device='cpu'),
                                deep['x']), deep['expected'])
    if beside != 'missing':
        assert any(n.startswith(f'{pub / "vit.pth"}: skipped') for n in notes), notes


def test_dataset_meta_is_checked(deep, tmp_path):
    bad = _rewrite(deep['file'], tmp_path / 'bad.safetensors', dataset_meta='{"classes": [')
    for load in (lambda: load_task_model(None, bad),
                 lambda: init_model(copy.deepcopy(deep['cfg']), bad, device='cpu')):
        with pytest.raises(ValueError, match=rf"task file {bad}: header key 'dataset_meta': "
                           'not valid JSON'):
            load()
    one = _rewrite(deep['file'], tmp_path / 'one.safetensors',
                   dataset_meta=json.dumps({'classes': ['wall'], 'palette': [[1, 2, 3]]}))
    for load in (lambda: load_task_model(None, one),
                 lambda: load_task_model(deep['cfg'], one),
                 lambda: init_model(copy.deepcopy(deep['cfg']), one, device='cpu')):
        with pytest.raises(ValueError, match=rf"task file {one}: header key 'dataset_meta': 1 "
                           r'classes, but the head has 8 \(model.decode_head.num_classes\)'):
            load()


def _with_tensor(src, dst, key, change):
    """Copy a task file with one tensor replaced by ``change(tensor)``."""
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(src))
    tensors[key] = change(tensors[key])
    save_file(tensors, str(dst), metadata=read_task_metadata(str(src)))
    return str(dst)


@pytest.mark.parametrize('key,change,match', [
    ('backbone.prompt.embeddings', lambda t: t.index_fill(-1, torch.tensor([0]), float('nan')),
     r'holds \d+ NaN or infinite values'),
    ('decode_head.conv_seg.weight', lambda t: t.clone().fill_(float('inf')),
     r'holds \d+ NaN or infinite values'),
    ('decode_head.conv_seg.bias', lambda t: t.to(torch.int32), 'is torch.int32, it should '
     r'be floating point \(a weight\)'),
    ('decode_head.conv_seg.bias', lambda t: t > 0, 'is torch.bool, it should be floating'),
    ('backbone.signature', lambda t: t.float(), 'is torch.float32, it should be integers'),
])
def test_tensors_that_are_not_finite_weights_are_refused_by_name(deep, tmp_path, key,
                                                                  change, match):
    """The finding: NaN prompts loaded without a word and served all-zero label maps;
    integer tensors were cast silently."""
    from vpt_seg.formats.task_file import read_task_file as read
    assert key in read(str(deep['file']))[0]
    bad = _with_tensor(deep['file'], tmp_path / 'bad.safetensors', key, change)
    full = rf"task file {bad}: tensor '{key}' {match}.*export the task again"
    for load in (lambda: read(bad), lambda: load_task_model(None, bad),
                 lambda: init_model(copy.deepcopy(deep['cfg']), bad, device='cpu')):
        with pytest.raises(ValueError, match=full):
            load()


# ------------------------------------- training checkpoints guard their frozen weights
def test_a_training_checkpoint_refuses_other_frozen_weights(pretrained, tmp_path, notes,
                                                            monkeypatch):
    """A checkpoint records the pretrained path as the config named it (relative) and
    absolute, and the frozen weights' sha256: a different file at the relative path in
    another folder is skipped, a named one with other weights is refused."""
    _, vit_path = pretrained
    run, elsewhere = tmp_path / 'run', tmp_path / 'elsewhere'
    for folder in (run, elsewhere):
        (folder / 'pretrain').mkdir(parents=True)
    shutil.copy(vit_path, run / 'pretrain' / 'vit.pth')
    impostor = torch.load(vit_path, weights_only=True)  # same architecture, other values
    impostor['layers.0.ln1.weight'] = impostor['layers.0.ln1.weight'] + 1e-3
    torch.save(impostor, elsewhere / 'pretrain' / 'vit.pth')
    cfg = Config.fromfile(osp.join(STUDY, 'vpt-deep.py'))
    cfg.model.backbone.init_cfg.checkpoint = 'pretrain/vit.pth'
    monkeypatch.chdir(run)
    torch.manual_seed(4)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    state = model.state_dict()
    recorded = state._metadata['backbone']
    assert recorded['pretrained'] == ['pretrain/vit.pth', str(run / 'pretrain' / 'vit.pth')]
    digest = recorded['frozen_sha256']
    assert digest == model.backbone.frozen_digest()
    ckpt = str(tmp_path / 'iter_1.pth')
    torch.save({'state_dict': state, 'meta': {}}, ckpt)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    expected = _outputs(model, x)

    monkeypatch.chdir(elsewhere)  # 'pretrain/vit.pth' is the impostor here
    assert torch.equal(_outputs(load_task_model(cfg, ckpt), x), expected)
    assert any(n.startswith('pretrain/vit.pth: skipped, not the frozen weights') for n in notes)
    assert torch.equal(_outputs(init_model(copy.deepcopy(cfg), ckpt, device='cpu'), x),
                       expected)
    # Named by the user: that file is used, and its weights are still checked.
    with pytest.raises(ValueError, match=r'elsewhere/pretrain/vit.pth \(named by init_cfg.'
                       r'checkpoint\) holds other frozen weights than this checkpoint was '
                       'trained on'):
        load_task_model(cfg, ckpt, pretrained=str(elsewhere / 'pretrain' / 'vit.pth'))
    named = copy.deepcopy(cfg)
    named.model.backbone.init_cfg.checkpoint = str(vit_path)
    named.model.backbone.prefer_configured = True
    notes.clear()
    assert torch.equal(_outputs(load_task_model(named, ckpt), x), expected)
    assert any(f'loading the frozen backbone from {vit_path}' in n for n in notes)
    # Training's init_weights loaded the config's file (load_from, --resume), and it
    # holds other weights: the recorded file replaces them before the task weights load.
    resumed = MODELS.build(cfg.model)
    resumed.init_weights()  # 'pretrain/vit.pth' here: the impostor
    resumed.load_state_dict(torch.load(ckpt, weights_only=True)['state_dict'])
    assert resumed.backbone.frozen_digest() == digest
    assert torch.equal(_outputs(resumed.eval(), x), expected)
    # Older checkpoints without a sha256 load as before.
    state._metadata['backbone'].pop('frozen_sha256')
    torch.save({'state_dict': state, 'meta': {}}, ckpt)
    monkeypatch.chdir(run)
    assert torch.equal(_outputs(load_task_model(cfg, ckpt), x), expected)
    (run / 'pretrain' / 'vit.pth').unlink()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ValueError, match='none of the candidates holds the frozen weights'):
        state._metadata['backbone']['frozen_sha256'] = digest
        torch.save({'state_dict': state, 'meta': {}}, ckpt)
        load_task_model(cfg, ckpt)


def test_mmseg_apis_read_url_checkpoints_safely(deep, tmp_path, file_server):
    from conftest import payload_pickle
    from mmseg.apis import MMSegInferencer

    from vpt_seg.formats.weight_files import UnreadableCheckpointError
    marker = tmp_path / 'marker'
    url = file_server.url('task.pth')
    payload_pickle(file_server.root / 'task.pth', marker)
    with pytest.raises(UnreadableCheckpointError, match=f"'{url}' .*Python object"):
        init_model(copy.deepcopy(deep['cfg']), url, device='cpu')
    with pytest.raises(UnreadableCheckpointError, match=f"'{url}' .*Python object"):
        MMSegInferencer(model=copy.deepcopy(deep['cfg']), weights=url, device='cpu')
    assert not marker.exists()
    shutil.copy(deep['ckpt'], file_server.root / 'good.pth')
    model = init_model(copy.deepcopy(deep['cfg']), file_server.url('good.pth'), device='cpu')
    assert torch.equal(_outputs(model, deep['x']), deep['expected'])


def test_serving_on_a_url_backbone_reads_it_safely(deep, tmp_path, file_server):
    """serve.py BACKBONE=http://.../vit.pth: the shared backbone (and its final-norm
    check) and every task's frozen weights come through the safe http loader."""
    from conftest import payload_pickle

    from vpt_seg.formats.weight_files import UnreadableCheckpointError
    from vpt_seg.serving.multitask import MultiTaskViT, build_shared_backbone
    cfg = read_task_config(str(deep['file']))
    shutil.copy(deep['vit'], file_server.root / 'vit.pth')
    url = file_server.url('vit.pth')
    shared = build_shared_backbone(cfg.model.backbone, pretrained=url)
    assert not shared.final_norm  # the file has none: found in the downloaded file
    mt = MultiTaskViT(shared)
    model = mt.add_task('seg', load_task_model(cfg, str(deep['file']), pretrained=url))
    assert torch.equal(_outputs(model, deep['x']), deep['expected'])
    marker = tmp_path / 'marker'
    payload_pickle(file_server.root / 'bad.pth', marker)
    with pytest.raises(UnreadableCheckpointError, match='bad.pth.*Python object'):
        build_shared_backbone(cfg.model.backbone, pretrained=file_server.url('bad.pth'))
    assert not marker.exists()


# ------------------------------------------------------- a timm (DINOv2) task
DINO = osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_dinov2_ade20k.py')
MMSEG_TASK = osp.join(STUDY, 'vpt-deep.py')  # the MMSeg-layout tiny ViT


@pytest.fixture(scope='module')
def dinov2(tmp_path_factory):
    """A tiny DINOv2-with-registers task (the demo config, timm's own class) trained on
    a stand-in hub folder, saved as a training checkpoint, and its outputs."""
    import timm

    from vpt_seg.models.timm_vit import write_hub_folder
    tmp = tmp_path_factory.mktemp('dinov2_task')
    cfg = Config.fromfile(DINO)
    b = cfg.model.backbone
    torch.manual_seed(0)
    ref = timm.create_model(b.model_name, pretrained=False, num_classes=0, img_size=56,
                            **b.model_kwargs)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hub = write_hub_folder(ref, str(tmp / 'train' / 'tiny_dinov2_reg4'), b.model_name)
    cfg.model.backbone.checkpoint = hub
    model = trained_like(cfg.model, seed=1)
    model.eval()
    ckpt = tmp / 'iter_4.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    return dict(tmp=tmp, cfg=cfg, hub=hub, ref=ref, model=model, ckpt=str(ckpt), x=x,
                expected=_outputs(model, x))


def test_a_dinov2_task_file_loads_with_only_its_hub_folder_beside_it(dinov2):
    from vpt_seg.models.timm_vit import TIMM_SIGNATURE_FIELDS
    d = dinov2
    pub = d['tmp'] / 'published'
    pub.mkdir()
    out = str(pub / 'dinov2.safetensors')
    meta = export_task(d['cfg'], d['ckpt'], out)
    backbone = d['model'].backbone
    assert json.loads(meta['signature_fields']) == list(TIMM_SIGNATURE_FIELDS)
    assert json.loads(meta['signature']) == backbone.signature.tolist()
    assert meta['pretrained'] == 'tiny_dinov2_reg4'  # the hub folder's name
    assert meta['pretrained_path'] == d['hub']       # as checkpoint= names it
    assert meta['frozen_sha256'] == backbone.frozen_digest()
    tensors = set(_header(out)) - {'__metadata__'}
    assert tensors == set(d['model'].state_dict())
    assert not any(k.startswith('backbone.vit.') for k in tensors)  # frozen: left out
    shutil.copytree(d['hub'], pub / 'tiny_dinov2_reg4')
    moved = d['hub'] + '.away'
    os.rename(d['hub'], moved)  # the path the config names is gone
    try:
        for config in (None, copy.deepcopy(d['cfg'])):
            model = load_task_model(config, out)
            assert model.backbone.pretrained_file == str(pub / 'tiny_dinov2_reg4')
            assert torch.equal(_outputs(model, d['x']), d['expected'])
        assert torch.equal(_outputs(init_model(copy.deepcopy(d['cfg']), out, device='cpu'),
                                    d['x']), d['expected'])
    finally:
        os.rename(moved, d['hub'])


def test_a_task_of_one_backbone_kind_is_refused_by_another_by_name(dinov2, pretrained):
    d = dinov2
    out = str(d['tmp'] / 'kind.safetensors')
    export_task(d['cfg'], d['ckpt'], out)
    mmseg_cfg = Config.fromfile(MMSEG_TASK)
    mmseg_cfg.model.backbone.init_cfg.checkpoint = str(pretrained[1])
    for checkpoint in (out, d['ckpt']):  # a task file and a .pth task checkpoint
        with pytest.raises(ValueError, match=r'7 signature fields in the checkpoint, 6 here '
                           r'\(PromptedVisionTransformer: .*\): a checkpoint of another kind '
                           r'of backbone \(PromptedTimmViT\)'):
            load_task_model(mmseg_cfg, checkpoint)
    # The reverse: an MMSeg-layout task onto the DINOv2 config.
    torch.manual_seed(4)
    model = MODELS.build(mmseg_cfg.model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, d['tmp'] / 'mmseg.pth')
    mmseg_file = str(d['tmp'] / 'mmseg.safetensors')
    export_task(mmseg_cfg, str(d['tmp'] / 'mmseg.pth'), mmseg_file)
    for checkpoint in (mmseg_file, str(d['tmp'] / 'mmseg.pth')):
        with pytest.raises(ValueError, match=r'6 signature fields in the checkpoint, 7 here '
                           r'\(PromptedTimmViT: .*num_prefix_tokens\): a checkpoint of another '
                           r'kind of backbone \(PromptedVisionTransformer\)'):
            load_task_model(copy.deepcopy(d['cfg']), checkpoint)


def test_a_dinov2_task_checkpoint_refuses_other_frozen_weights_at_its_recorded_path(dinov2):
    import timm

    from vpt_seg.models.timm_vit import write_hub_folder
    d = dinov2
    recorded = torch.load(d['ckpt'], weights_only=True)['state_dict']._metadata['backbone']
    assert d['hub'] in recorded['pretrained'] and 'frozen_sha256' in recorded
    b = d['cfg'].model.backbone
    torch.manual_seed(5)  # same architecture, other values
    impostor = timm.create_model(b.model_name, pretrained=False, num_classes=0, img_size=56,
                                 **b.model_kwargs)
    kept = d['hub'] + '.kept'
    os.rename(d['hub'], kept)
    write_hub_folder(impostor, d['hub'], b.model_name)
    try:
        with pytest.raises(ValueError, match='none of the candidates holds the frozen weights '
                           r'this task was trained on .*sha256 differs') as err:
            load_task_model(copy.deepcopy(d['cfg']), d['ckpt'])
        assert d['hub'] in str(err.value)
        with pytest.raises(ValueError, match=r'\(named by checkpoint\) holds other frozen '
                           'weights'):
            load_task_model(copy.deepcopy(d['cfg']), d['ckpt'], pretrained=d['hub'])
    finally:
        shutil.rmtree(d['hub'])
        os.rename(kept, d['hub'])
    assert torch.equal(_outputs(load_task_model(copy.deepcopy(d['cfg']), d['ckpt']), d['x']),
                       d['expected'])
