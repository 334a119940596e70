"""The task-file header schema (vpt_seg/formats/task_schema.py): what a hostile header
can no longer make vpt-seg do.

Each case is a finding of the hostile-input review: a header that ran code, fetched a
URL, allocated memory from a number or ended in a raw traceback. Payloads only write a
marker in the test's folder, servers listen on 127.0.0.1 and are stopped by the test;
each case asserts the marker is absent, the server got no request and the refusal names
the header key. The tiny VPT-deep task file comes from tests/test_task_file.py.
"""
import glob
import json
import os.path as osp

import pytest
import test_task_file
import torch
from mmengine.config import Config
from test_task_file import ROOT, _rewrite, _tool

from vpt_seg import load_task_model
from vpt_seg.formats.config_data import config_to_json
from vpt_seg.formats.fold import fold_task
from vpt_seg.formats.pretrained_key import FLAG_NAMES
from vpt_seg.formats.task_file import read_task_config, read_task_metadata
from vpt_seg.formats.task_schema import (
    TABLE,
    HeaderSchemaError,
    Int,
    check_header_shapes,
    read_header_config,
    register,
)

# test_task_file's module fixtures: a tiny pretrained file and a task trained on it
pretrained, deep = test_task_file.pretrained, test_task_file.deep


def _with_config(deep, tmp_path, change, name='bad.safetensors', text=None):
    """The VPT-deep task file with its header config changed by ``change(data)``."""
    data = json.loads(read_task_metadata(str(deep['file']))['config_json'])
    change(data)
    return _rewrite(deep['file'], tmp_path / name,
                    config_json=text(json.dumps(data)) if text else json.dumps(data))


def _serve(path):
    """What tools/serve.py does with NAME=TASK.safetensors: its config, then its model."""
    from vpt_seg.formats.loading import load_task_model as serve_load
    return serve_load(_tool('serve').task_config(None, path), path)


def _inferencer(path):
    from mmseg.apis import MMSegInferencer
    return MMSegInferencer(model=None, weights=path, device='cpu')


ENTRY_POINTS = {'load_task_model': lambda path: load_task_model(None, path),
                'serve': _serve, 'MMSegInferencer': _inferencer}


def _refused(load, path, key):
    with pytest.raises(ValueError, match=rf"task file {path}: header key 'config_json': "
                       rf"{key}"):
        load(path)


# ------------------------------------------------------------- code execution
@pytest.mark.parametrize('where', list(ENTRY_POINTS))
@pytest.mark.parametrize('payload', ['pickle', 'yaml', 'url'])
def test_a_loss_class_weight_file_is_never_read(deep, tmp_path, file_server, where,
                                                payload):
    """MMSeg's CrossEntropyLoss reads class_weight='FILE' with mmengine.load (unpickling,
    unsafe YAML, over http too): the schema takes class weights as numbers only."""
    from conftest import payload_pickle
    marker = tmp_path / 'marker'
    if payload == 'pickle':
        value = str(payload_pickle(tmp_path / 'w.pkl', marker))
    elif payload == 'yaml':
        value = str(tmp_path / 'w.yaml')
        with open(value, 'w') as f:
            f.write(f"!!python/object/apply:os.system ['touch {marker}']\n")
    else:
        payload_pickle(file_server.root / 'w.pkl', marker)
        value = file_server.url('w.pkl')
    bad = _with_config(deep, tmp_path, lambda d: d['model']['decode_head']['loss_decode']
                       .update(class_weight=value))
    _refused(ENTRY_POINTS[where], bad, r'model.decode_head.loss_decode.class_weight: .* is '
             r'not a list of 1 to 65535 items, each a number')
    assert not marker.exists()
    assert file_server.requests == []


def test_class_weights_as_numbers_are_read(deep, tmp_path):
    good = _with_config(deep, tmp_path, lambda d: d['model']['decode_head']['loss_decode']
                        .update(class_weight=[1.0] * 8))
    cfg = read_task_config(good)
    assert cfg.model.decode_head.loss_decode.class_weight == [1.0] * 8


@pytest.mark.parametrize('where', ['load_task_model', 'MMSegInferencer'])
def test_a_folded_config_key_cannot_carry_code(deep, tmp_path, where):
    """MMEngine's pretty_text writes nested non-identifier keys quoted, unescaped: a key
    ending its own quotes ran inside fold_task and on every read of OUT.py."""
    marker = tmp_path / 'M'
    key = f"x': __import__('os').system('touch {marker}'), 'y"
    bad = _with_config(deep, tmp_path, lambda d: d.update(notes={key: 1}))
    with pytest.raises(ValueError, match=r"header key 'config_json': notes.*not an "
                       'identifier'):
        if where == 'load_task_model':
            fold_task(None, bad, str(tmp_path / 'out.pth'))
        else:
            _inferencer(bad)
    assert not marker.exists()
    assert not (tmp_path / 'out.py').exists()


def test_a_folded_config_is_literals_that_read_back_the_same(deep, tmp_path):
    """A user's own config with such a key (the config, not the file, is trusted) is
    written escaped: OUT.py and meta['cfg'] read back as the same data, nothing runs."""
    marker = tmp_path / 'M'
    key = f"x': __import__('os').system('touch {marker}'), 'y"
    cfg = Config(deep['cfg'].to_dict())
    cfg.notes = {key: "'\"\n)"}
    out = str(tmp_path / 'folded.pth')
    done = fold_task(cfg, str(deep['ckpt']), out)
    back = Config.fromfile(done['config'])
    assert back.notes == {key: "'\"\n)"}
    assert not marker.exists()
    meta_cfg = torch.load(out, weights_only=True)['meta']['cfg']
    assert Config.fromstring(meta_cfg, '.py').to_dict() == back.to_dict()
    assert not marker.exists()


# ------------------------------------------------------------- network fetches
@pytest.mark.parametrize('change, key', [
    (lambda d, url: d['model'].update(backbone=dict(
        type='TIMMBackbone', model_name='vit_tiny_patch16_224', pretrained=True,
        pretrained_cfg_overlay=dict(url=url))), 'model.backbone.type'),
    (lambda d, url: d['model']['backbone'].update(pretrained=url), 'model.backbone.pretrained'),
    (lambda d, url: d['model'].update(pretrained=url), 'model.pretrained'),
], ids=['TIMMBackbone', 'backbone.pretrained', 'model.pretrained'])
@pytest.mark.parametrize('where', list(ENTRY_POINTS))
def test_a_header_url_is_never_fetched(deep, tmp_path, file_server, change, key, where):
    url = file_server.url('vit.pth')
    bad = _with_config(deep, tmp_path, lambda d: change(d, url))
    _refused(ENTRY_POINTS[where], bad, key)
    assert file_server.requests == []


# ------------------------------------------------------------- memory from a number
def test_declared_sizes_are_checked_before_anything_is_built(deep, tmp_path, monkeypatch):
    from mmseg.registry import MODELS

    def build(*args, **kwargs):
        raise AssertionError('a module was built before the header was checked')

    bad = _with_config(deep, tmp_path, lambda d: d['model']['backbone'].update(
        num_prompts=2000000))
    wide = _with_config(deep, tmp_path, lambda d: d['model']['backbone'].update(
        embed_dims=128), name='wide.safetensors')
    rank = _with_config(deep, tmp_path, lambda d: d['model']['backbone'].update(
        num_prompts=5), name='five.safetensors')
    classes = _with_config(deep, tmp_path, lambda d: d['model']['decode_head'].update(
        num_classes=9), name='classes.safetensors')
    huge = _with_config(deep, tmp_path, lambda d: d['model']['backbone'].update(
        img_size=[8192, 8192]), name='huge.safetensors')
    monkeypatch.setattr(MODELS, 'build', build)
    _refused(ENTRY_POINTS['load_task_model'], huge, r'model.backbone.img_size\[0\]: 8192 is out of '
             r'range \(an integer in \[1, 4096\]\)')
    big = read_header_config(json.dumps(dict(model=dict(type='EncoderDecoder', backbone=dict(
        type='PromptedVisionTransformer', embed_dims=8192, num_layers=128, num_heads=64),
        decode_head=dict(type='FCNHead', in_channels=8192, channels=8, num_classes=2)))))
    with pytest.raises(HeaderSchemaError, match=r'model.backbone: declares a ViT of about '
                       r'1.03e\+11 parameters'):
        check_header_shapes(big['model'], {})
    _refused(ENTRY_POINTS['load_task_model'], bad,
             r'model.backbone.num_prompts: 2000000 is out of range')
    _refused(ENTRY_POINTS['load_task_model'], wide,
             r"model.backbone.embed_dims: 128 in the header, but the file's signature "
             r'\(embed_dims\) says 64')
    _refused(ENTRY_POINTS['load_task_model'], rank,
             r"model.backbone.num_prompts: 5 in the header, but the file's prompt.embeddings")
    _refused(ENTRY_POINTS['load_task_model'], classes, r'model.decode_head.num_classes: 9 in '
             r"the header, but the file's decode_head.conv_seg.weight")


# ------------------------------------------------------------- refusals, not tracebacks
def _put_float(d):
    d['model']['decode_head']['dropout_ratio'] = 12345.5


def _timm(**options):
    def change(d):
        d['model']['backbone'] = dict(dict(
            type='PromptedTimmViT', model_name='vit_small_patch14_reg4_dinov2',
            model_kwargs=dict(embed_dim=64, depth=6, num_heads=4)), **options)
    return change


@pytest.mark.parametrize('change, text, message', [
    (lambda d: d['model'].update(_scope_=['mmseg']), None,
     r"model._scope_: \['mmseg'\] is not one of 'mmseg'"),
    (lambda d: None, lambda t: '{"model":' + '[' * 100000 + ']' * 100000 + '}',
     'config: nested deeper than 32 levels'),
    (lambda d: None, lambda t: '{"model":' + '[' * 40 + ']' * 40 + '}',
     r'model(\[0\])+: nested deeper than 32 levels'),
    (_put_float, lambda t: t.replace('12345.5', '1e400'),
     r'config: not valid JSON of finite numbers \(1e400 is not a finite number'),
    (lambda d: d.update(model=[1, 2]), None, r'model: \[1, 2\] is not a mapping with a type'),
    (_timm(patch_size=0), None, r'model.backbone.patch_size: 0 is out of range'),
    (_timm(model_kwargs=[1, 2]), None, r'model.backbone.model_kwargs: \[1, 2\] is not a '
     'mapping'),
    (lambda d: d['model']['backbone'].update({'a-b': 1}), None,
     r"model.backbone.'a-b': not an identifier"),
    (lambda d: d['model']['decode_head'].update(type='ASPPHead'), None,
     'model.decode_head.type: .ASPPHead. is not a decode_head kind a task file may name'),
    (lambda d: d['model']['backbone'].update(num_layers='6'), None,
     r"model.backbone.num_layers: '6' is not an integer in \[1, 128\]"),
    (lambda d: d['model']['backbone'].update(lora=dict(rank=2, file='x')), None,
     'model.backbone.lora.file: not a field this schema has'),
], ids=['scope-list', 'deep-json', 'deep-33', 'inf', 'model-list', 'patch-size-0',
        'model-kwargs-list', 'key-not-identifier', 'unlisted-head', 'string-int',
        'unknown-option'])
def test_a_bad_header_is_refused_naming_the_key(deep, tmp_path, change, text, message):
    bad = _with_config(deep, tmp_path, change, text=text)
    for load in ENTRY_POINTS.values():
        _refused(load, bad, message)


def test_a_state_dict_that_does_not_fit_names_the_stored_config(deep, tmp_path):
    from safetensors.torch import load_file, save_file
    state = load_file(str(deep['file']))
    state['decode_head.extra'] = torch.zeros(1)
    bad = str(tmp_path / 'extra.safetensors')
    save_file(state, bad, metadata=read_task_metadata(str(deep['file'])))
    with pytest.raises(ValueError, match=rf'(?s){bad} does not fit the config stored in it: .*'
                       'decode_head.extra'):
        load_task_model(None, bad)


# ------------------------------------------------------------- the table
def _configs():
    return sorted(f for f in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                                       recursive=True) if '_base_' not in f)


def test_every_shipped_config_fits_the_schema_as_it_is():
    """Every model, head and loss kind configs/** use (study, demo, classification) is
    in the table with its arguments: a config's model reads back unchanged."""
    assert len(_configs()) > 20
    for path in _configs():
        cfg = Config.fromfile(path)
        for key in FLAG_NAMES:
            cfg.model.backbone.pop(key, None)
        data = read_header_config(config_to_json(cfg))
        assert data['model'] == cfg.to_dict()['model'], path
        pipeline = cfg.get('test_dataloader', {}).get('dataset', {}).get('pipeline')
        if pipeline:
            assert data['test_dataloader']['dataset']['pipeline'] == list(pipeline), path


def test_a_module_type_is_one_entry(monkeypatch):
    data = dict(model=dict(type='VPTClassifier', backbone=dict(
        type='PromptedVisionTransformer'), head=dict(type='ToyHead', width=3)))
    with pytest.raises(HeaderSchemaError, match='model.head.type: .ToyHead. is not a '
                       'cls_head kind'):
        read_header_config(json.dumps(data))
    monkeypatch.setitem(TABLE, 'cls_head', dict(TABLE['cls_head']))
    register('cls_head', 'ToyHead', dict(width=Int(1, 4)))
    assert read_header_config(json.dumps(data))['model']['head'] == dict(type='ToyHead',
                                                                           width=3)
    data['model']['head']['width'] = 5
    with pytest.raises(HeaderSchemaError, match=r'model.head.width: 5 is out of range'):
        read_header_config(json.dumps(data))


def test_an_entry_checks_its_sizes_against_the_file(monkeypatch):
    def shapes(cfg, key, tensors):
        if tensors['proj.weight'][0] != cfg['width']:
            raise HeaderSchemaError(f'{key}.width', f"{cfg['width']} in the header, "
                                    f"{tensors['proj.weight'][0]} in the file")

    monkeypatch.setitem(TABLE, 'cls_head', dict(TABLE['cls_head']))
    register('cls_head', 'ToyHead', dict(width=Int(1, 4)), shapes=shapes)
    model = read_header_config(json.dumps(dict(model=dict(
        type='VPTClassifier', backbone=dict(type='PromptedVisionTransformer'),
        head=dict(type='ToyHead', width=3)))))['model']
    check_header_shapes(model, {'head.proj.weight': (3, 8)})
    with pytest.raises(HeaderSchemaError, match='model.head.width: 3 in the header, 2 in '
                       'the file'):
        check_header_shapes(model, {'head.proj.weight': (2, 8)})


def test_export_refuses_a_config_the_schema_does_not_take(deep, tmp_path):
    from vpt_seg import export_task
    cfg = Config(deep['cfg'].to_dict())
    cfg.model.test_cfg = dict(mode='whole', extra=1)
    out = tmp_path / 'task.safetensors'
    with pytest.raises(ValueError, match=r'does not fit the task-file header schema.*'
                       r'model.test_cfg.extra: not a field this schema has'):
        export_task(cfg, str(deep['ckpt']), str(out))
    assert not out.exists()


def test_a_header_pixel_limit_never_exceeds_the_loaders_default():
    # formats/ sits below datasets/ and cannot import the default, so the two literals
    # are held equal here: a header may lower the limit, never raise it.
    from vpt_seg.datasets.checks import DEFAULT_MAX_PIXELS
    from vpt_seg.formats.task_schema import HEADER_MAX_PIXELS
    assert HEADER_MAX_PIXELS == DEFAULT_MAX_PIXELS
    model = dict(type='VPTClassifier', backbone=dict(type='PromptedVisionTransformer'),
                 head=dict(type='LinearClsHead', in_channels=8, num_classes=2))
    pipeline = [dict(type='CheckedLoadImageFromFile', max_pixels=DEFAULT_MAX_PIXELS + 1)]
    header = dict(model=model, test_dataloader=dict(dataset=dict(pipeline=pipeline)))
    with pytest.raises(HeaderSchemaError, match='max_pixels'):
        read_header_config(json.dumps(header))
    pipeline[0]['max_pixels'] = DEFAULT_MAX_PIXELS // 2
    assert read_header_config(json.dumps(header))['test_dataloader']['dataset']['pipeline'][
        0]['max_pixels'] == DEFAULT_MAX_PIXELS // 2
