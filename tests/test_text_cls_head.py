"""TextClsHead in VPTClassifier: CoOp's and zero-shot CLIP's logits against open_clip on
one tiny CLIP file, what is tuned, task checkpoints and files, new class names, errors."""
import copy
import json
import os
import shutil

import open_clip
import pytest
import torch
from mmengine.config import Config
from safetensors.torch import save_file

import vpt_seg  # noqa: F401  (before mmseg)

# isort: split
from mmengine.registry import init_default_scope
from mmengine.structures import BaseDataElement
from mmseg.registry import MODELS
from test_text_encoder import CLASSES, NAMES, TOWER, official

from vpt_seg.engine.optim import tuned_summary
from vpt_seg.formats.export import export_task
from vpt_seg.formats.loading import load_task_model
from vpt_seg.tuners.tuning import parameter_report

init_default_scope('mmseg')
VISUAL = dict(embed_dim=64, depth=1, num_heads=1, num_classes=32)  # num_classes: projection


def clip_cfg(path, n_ctx=16, ctx_init=None, csc=False, class_position='end', vocabulary=CLASSES,
             backbone=None, **text):
    """The issue's config, tiny through model_kwargs and the tower's shape arguments."""
    return dict(
        type='VPTClassifier',
        backbone=dict(type='PromptedTimmViT', model_name='vit_base_patch16_clip_quickgelu_224',
                      checkpoint=path, img_size=(32, 32), model_kwargs=dict(VISUAL),
                      **(backbone or {})),
        head=dict(type='TextClsHead', text_encoder=dict(
            type='CoOpTextEncoder', vocabulary=vocabulary, checkpoint=path, n_ctx=n_ctx,
            ctx_init=ctx_init, csc=csc, class_position=class_position, **TOWER, **text)))


def build(cfg):
    model = MODELS.build(cfg)
    model.init_weights()
    return model.eval()


def images(n=3):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_zero_shot_matches_open_clip(clip_file):
    path, clip = clip_file
    model = build(clip_cfg(path, n_ctx=0, templates=['a photo of a {}.']))
    x = images()
    tok = open_clip.get_tokenizer('ViT-B-16')
    with torch.no_grad():
        text = clip.encode_text(tok([f'a photo of a {n}.' for n in NAMES]), normalize=True)
        ref = clip.logit_scale.exp() * clip.encode_image(x, normalize=True) @ text.t()
        ours = model(x, mode='tensor')
    assert ours.shape == (3, len(NAMES))
    assert torch.allclose(ours, ref, atol=1e-5)
    assert model.num_classes == len(NAMES)


@pytest.mark.parametrize('position,csc', [('end', False), ('front', True)])
def test_coop_logits_and_what_is_tuned(clip_file, position, csc):
    """The official logits; gradients reach the context, and with VPT-deep and bias tuning
    on the image tower its prompts and biases, nothing else."""
    path, clip = clip_file
    cfg = clip_cfg(path, n_ctx=4, csc=csc, class_position=position,
                   backbone=dict(num_prompts=2, deep=True, tune_bias=True))
    model = build(cfg)
    x = images()
    plain = build(clip_cfg(path, n_ctx=4, csc=csc, class_position=position))
    with torch.no_grad():
        model.head.text_encoder.ctx.normal_(std=0.1)
        plain.head.text_encoder.load_state_dict(model.head.text_encoder.state_dict())
        _, text, _ = official(clip, NAMES, model.head.text_encoder.ctx, 4, position, None)
        ref = clip.logit_scale.exp() * clip.encode_image(x, normalize=True) @ text.t()
        assert torch.allclose(plain(x, mode='tensor'), ref, atol=1e-5)
    model.train()
    samples = [BaseDataElement(gt_label=torch.tensor(i % len(NAMES))) for i in range(3)]
    losses = model(x, samples, mode='loss')
    assert set(losses) == {'loss_cls', 'acc'}
    losses['loss_cls'].backward()
    grads = {n for n, p in model.named_parameters()
             if p.grad is not None and p.grad.abs().sum() > 0}
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grads == tuned
    assert 'head.text_encoder.prompt.ctx' in tuned
    assert any(n.startswith('backbone.prompt.') for n in tuned)
    assert any(n.endswith('.bias') and n.startswith('backbone.vit.blocks') for n in tuned)
    assert not any(n.startswith('head.text_encoder.text.') or n.startswith('backbone.vit.head')
                   or n.endswith('logit_scale') for n in tuned)
    report = parameter_report(model, model.backbone, model.backbone.prompt)
    ctx_size = model.head.text_encoder.ctx.numel()
    assert report['context'] == dict(tuned=ctx_size, total=ctx_size)
    assert report['text tower']['tuned'] == 0 and report['text tower']['total'] > 3_000_000
    assert report['heads'] == dict(tuned=0, total=0)
    assert 'context ' in tuned_summary(model)
    model.eval()
    preds = model(x, samples, mode='predict')
    assert preds[0].pred_score.shape == (len(NAMES),)


def test_task_checkpoint_round_trip(clip_file, tmp_path):
    """What a task saves is the context (and the image tower's tuned tensors); loading
    restores it and takes the frozen text tower from the CLIP file, checked by sha256."""
    path, _ = clip_file
    folder = tmp_path / 'clip'
    folder.mkdir()
    local = str(folder / 'open_clip_model.safetensors')
    shutil.copy(path, local)
    cfg = clip_cfg(local, n_ctx=4, ctx_init='a photo of a')
    model = build(cfg)
    with torch.no_grad():
        model.head.text_encoder.ctx.add_(0.1)
    state = model.state_dict()
    assert set(state) == {'backbone.signature', 'head.text_encoder.signature',
                          'head.text_encoder.prompt.ctx'}
    meta = state._metadata['head.text_encoder']
    assert len(meta['frozen_sha256']) == 64 and local in meta['pretrained']
    ckpt = tmp_path / 'task.pth'
    torch.save(dict(state_dict=state, meta={}), str(ckpt))
    x = images()
    with torch.no_grad():
        expected = model(x, mode='tensor')
    config = Config(dict(model=cfg))
    loaded = load_task_model(config, str(ckpt))
    assert torch.equal(loaded.head.text_encoder.ctx, model.head.text_encoder.ctx)
    with torch.no_grad():
        assert torch.allclose(loaded(x, mode='tensor'), expected, atol=1e-6)

    # A portable task file (safetensors, the config as data) loads without the config.
    task_file = str(tmp_path / 'task.safetensors')
    header = export_task(config, str(ckpt), task_file)
    recorded = json.loads(header['frozen_modules'])['head.text_encoder.']
    assert recorded == dict(pretrained='open_clip_model.safetensors', pretrained_path=local,
                            frozen_sha256=meta['frozen_sha256'])
    again = load_task_model(None, task_file)
    with torch.no_grad():
        assert torch.allclose(again(x, mode='tensor'), expected, atol=1e-6)

    # New class names at test time (a config override): the unified context moves.
    other = copy.deepcopy(cfg)
    other['head']['text_encoder']['vocabulary'] = ['dog', 'red car']
    moved = load_task_model(Config(dict(model=other)), str(ckpt))
    assert moved(x, mode='tensor').shape == (3, 2)
    assert moved.head.class_names == ['dog', 'red car']
    assert moved.dataset_meta['classes'] == ('dog', 'red car')

    # Other text-tower weights in the file the task records: refused by sha256.
    weights = dict(__import__('safetensors.torch', fromlist=['load_file']).load_file(local))
    weights['token_embedding.weight'] = weights['token_embedding.weight'] + 0.01
    save_file(weights, local)
    with pytest.raises(ValueError, match=r'none of the candidates holds the frozen weights.*'
                                         r'sha256.*model.head.text_encoder.checkpoint'):
        load_task_model(config, str(ckpt))
    with pytest.raises(ValueError, match=r'none of the candidates holds the frozen weights.*'
                                         r'sha256.*model.head.text_encoder.checkpoint'):
        load_task_model(None, task_file)


def test_csc_task_with_another_class_list(clip_file, tmp_path):
    path, _ = clip_file
    cfg = clip_cfg(path, n_ctx=4, csc=True)
    ckpt = tmp_path / 'task.pth'
    torch.save(dict(state_dict=build(cfg).state_dict(), meta={}), str(ckpt))
    other = copy.deepcopy(cfg)
    other['head']['text_encoder']['vocabulary'] = ['dog', 'red car']
    with pytest.raises(ValueError, match=r'class-specific context \(csc=True\) for 5 classes, '
                                         r'and the config names 2'):
        load_task_model(Config(dict(model=other)), str(ckpt))


def test_backbone_without_projection_refused(clip_file):
    path, _ = clip_file
    cfg = clip_cfg(path)
    cfg['backbone'].update(model_name='vit_base_patch16_224',
                           model_kwargs=dict(embed_dim=64, depth=1, num_heads=1))
    with pytest.raises(ValueError, match=r"'vit_base_patch16_224' is not a CLIP image tower: "
                                         r'it has no visual projection'):
        MODELS.build(cfg)
    cfg['backbone'] = dict(type='PromptedVisionTransformer', img_size=(32, 32), patch_size=16,
                           embed_dims=64, num_layers=1, num_heads=1)
    with pytest.raises(ValueError, match=r'backbone PromptedVisionTransformer has none'):
        MODELS.build(cfg)


def test_projection_width_must_match(clip_file):
    path, _ = clip_file
    cfg = clip_cfg(path)
    cfg['backbone']['model_kwargs']['num_classes'] = 16
    with pytest.raises(ValueError, match=r'text tower embeds into 32 dimensions.*projection '
                                         r'into 16'):
        MODELS.build(cfg)


@pytest.mark.parametrize('value,match', [
    ('{"../x.": {}}', r"'\.\./x\.': expected a module prefix"),
    ('{"head.text_encoder.": {"frozen_sha256": "zz"}}',
     r"head.text_encoder.: 'zz' is not a sha256"),
    ('[1]', r'expected \{"prefix\.":'),
])
def test_task_file_frozen_modules_header_checked(tmp_path, value, match):
    from vpt_seg.formats.task_file import read_task_file
    path = str(tmp_path / 'task.safetensors')
    save_file({'x': torch.zeros(1)}, path, metadata=dict(
        format='vpt-seg-task', format_version='2', frozen_modules=value))
    with pytest.raises(ValueError, match=r"task\.safetensors: header key 'frozen_modules': "
                                         + match):
        read_task_file(path)


def test_count_params_names_the_context(tmp_path, monkeypatch, capsys):
    """tools/count_params.py: a 'context' row (the only tuned tensor of CoOp), the frozen
    'text tower' row, and a task file of the context alone."""
    import os.path as osp
    import runpy
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    config = tmp_path / 'coop_tiny.py'
    config.write_text(f"custom_imports = dict(imports=['vpt_seg'], allow_failed_imports=False)\n"
                      f"model = {clip_cfg(None, n_ctx=16)!r}\n")
    tool = osp.join(root, 'tools', 'count_params.py')
    monkeypatch.setattr('sys.argv', [tool, str(config)])
    runpy.run_path(tool, run_name='__main__')
    out = capsys.readouterr().out
    rows = {' '.join(line.split()[:-3]): line.split()[-3:] for line in out.splitlines()
            if line.strip()}
    assert rows['context'][:2] == ['1.0K', '1.0K']  # 16 x 64
    assert rows['text tower'][0] == '0' and rows['text tower'][1] == '3.22M'
    assert rows['total'][0] == '1.0K'
    size = float(out.split('task file (tools/export_task.py, model.state_dict() and header): ')
                 [1].split()[0])
    assert size < 16 and 'KiB;' in out  # the context and two signatures


def _coop_task_file(clip_file, tmp_path):
    """A CoOp task file (context only) of the tiny CLIP, its CLIP file beside it."""
    path, _ = clip_file
    local = str(tmp_path / 'open_clip_model.safetensors')
    shutil.copy(path, local)
    cfg = clip_cfg(local, n_ctx=4)
    ckpt = tmp_path / 'task.pth'
    torch.save(dict(state_dict=build(cfg).state_dict(), meta={}), str(ckpt))
    task_file = str(tmp_path / 'coop.safetensors')
    export_task(Config(dict(model=cfg)), str(ckpt), task_file)
    return task_file


@pytest.mark.parametrize('change,key,message', [
    (dict(n_ctx=8), 'n_ctx', r"8 in the header, but the file's prompt.ctx shape \(4, 64\)"),
    (dict(csc=True), 'csc', r"True in the header, but the file's prompt.ctx shape"),
    (dict(embed_dims=8192, num_layers=128), 'embed_dims', r'a text tower of about 1\.0\d*e\+11'),
    (dict(vocabulary=['cat', '../../etc/passwd']), r'vocabulary\[1\]', 'is not a name'),
    (dict(templates='{}/../x'), 'templates', 'is not'),
    (dict(class_position='back'), 'class_position', "is not one of 'end', 'middle', 'front'"),
])
def test_a_coop_header_is_read_into_the_schema(clip_file, tmp_path, monkeypatch, change, key,
                                               message):
    """A CoOp task file's header is typed like any other (vpt_seg/formats/task_schema.py):
    names are names, the context's declared shape is checked against the file's
    ``prompt.ctx``, and the frozen text tower it implies is bounded, before anything is
    built."""
    from test_task_file import _rewrite

    from vpt_seg.formats.task_file import read_task_metadata
    task_file = _coop_task_file(clip_file, tmp_path)
    data = json.loads(read_task_metadata(task_file)['config_json'])
    data['model']['head']['text_encoder'].update(change)
    bad = _rewrite(task_file, tmp_path / 'bad.safetensors', config_json=json.dumps(data))
    monkeypatch.setattr(MODELS, 'build', lambda *a, **k: pytest.fail('built before refusing'))
    with pytest.raises(ValueError, match=rf"model\.head\.text_encoder\.{key}: .*{message}"):
        load_task_model(None, bad)


def test_export_never_writes_over_the_clip_file(clip_file, tmp_path):
    """The CLIP file the text tower was read from is an input of the export: a task file
    written over it would destroy the frozen weights (formats/outputs.py)."""
    task_file = _coop_task_file(clip_file, tmp_path)
    assert task_file  # the tiny task exports
    local = str(tmp_path / 'open_clip_model.safetensors')
    before = open(local, 'rb').read()
    (tmp_path / 'visual').mkdir()
    visual = str(tmp_path / 'visual' / 'open_clip_model.safetensors')
    shutil.copy(local, visual)
    cfg = clip_cfg(visual, n_ctx=4)
    cfg['head']['text_encoder']['checkpoint'] = local
    bad = str(tmp_path / 'clip.safetensors')
    os.symlink(local, bad)
    with pytest.raises(ValueError, match=r'is the file the frozen head\.text_encoder was '
                                         r'loaded from'):
        ckpt = tmp_path / 'own.pth'
        torch.save(dict(state_dict=build(cfg).state_dict(), meta={}), str(ckpt))
        export_task(Config(dict(model=cfg)), str(ckpt), bad, force=True)
    assert open(local, 'rb').read() == before
