"""Serving CoOp tasks (text classifiers over a frozen CLIP: TextClsHead for images,
TextSegHead for pixels) beside VPT, LoRA and AdaptFormer tasks in one batch on one frozen
CLIP image tower: each task equals its own model alone, and each task's class embeddings
are computed once, not per batch (vpt_seg/serving/multitask.py, tools/serve.py,
docs/serving.md)."""
import json
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

import vpt_seg  # noqa: F401  (before mmseg)

# isort: split
from helpers import tool, trained_like
from mmengine.config import Config
from mmengine.registry import init_default_scope

from vpt_seg.formats.export import export_task
from vpt_seg.formats.loading import load_task_model
from vpt_seg.models.tiny_clip import write_tiny_clip
from vpt_seg.serving.multitask import MultiTaskViT, build_shared_backbone
from vpt_seg.serving.serve import task_input
from vpt_seg.tuners.class_list import text_heads

init_default_scope('mmseg')

CLIP_NAME = 'vit_base_patch16_clip_quickgelu_224'
SHAPES = ['red disc', 'green square', 'blue triangle', 'yellow ring']
PETS = ['cat', 'dog', 'sea lion']
#: fp32 tolerance of a served output against its model alone (the same float ops, in
#: another batch composition: rounding only, as tests/test_multitask.py)
ATOL, RTOL = 1e-5, 1e-4


def clip_backbone(clip, projection=False, **kw):
    """The tiny CLIP's image tower (vpt_seg/models/tiny_clip.py); ``projection``: its
    width for CLIP's visual projection (a text head's)."""
    kwargs = dict(embed_dim=64, depth=2, num_heads=2, **(dict(num_classes=32) if projection
                                                          else {}))
    return dict(type='PromptedTimmViT', model_name=CLIP_NAME, checkpoint=clip,
                img_size=(32, 32), patch_size=8, model_kwargs=kwargs, **kw)


def coop_cls(clip, classes, encoder=None, **bb):
    text = dict(type='CoOpTextEncoder', vocabulary=classes, checkpoint=clip, embed_dims=64,
                num_layers=2, num_heads=2, output_dims=32, **dict(dict(n_ctx=4), **(encoder or {})))
    return dict(type='VPTClassifier', backbone=clip_backbone(clip, True, **bb),
                head=dict(type='TextClsHead', text_encoder=text))


def seg(clip, **bb):
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[122.8, 116.7, 104.1],
                               std=[68.5, 66.6, 70.3], bgr_to_rgb=True),
        backbone=clip_backbone(clip, out_indices=(1, ), **bb),
        decode_head=dict(type='SETRUPHead', in_channels=64, channels=8, in_index=-1,
                         num_classes=5, num_convs=2, up_scale=2, kernel_size=3,
                         norm_cfg=dict(type='BN'), align_corners=False, dropout_ratio=0,
                         loss_decode=dict(type='CrossEntropyLoss')),
        test_cfg=dict(mode='whole'))


def coop_seg(clip, classes, **bb):
    """CoOp for segmentation (TextSegHead on CLIP's projected patch tokens, an auxiliary
    text head on layer 0 sharing its text encoder), configs/demo/coop_seg_tiny_ade20k.py
    as a dict."""
    text = dict(type='CoOpTextEncoder', vocabulary=classes, checkpoint=clip, embed_dims=64,
                num_layers=2, num_heads=2, output_dims=32, n_ctx=4)
    bn = dict(type='BN', requires_grad=True)
    return dict(
        type='BoundedEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[122.8, 116.7, 104.1],
                               std=[68.5, 66.6, 70.3], bgr_to_rgb=True),
        backbone=clip_backbone(clip, True, out_indices=(0, 1), **bb),
        decode_head=dict(type='TextSegHead', in_channels=32, channels=16, in_index=-1,
                         num_convs=2, norm_cfg=bn, text_encoder=text,
                         loss_decode=dict(type='CrossEntropyLoss')),
        auxiliary_head=[dict(type='TextSegHead', in_channels=64, channels=16, in_index=0,
                             text_encoder='shared', residual=False, num_convs=2, norm_cfg=bn,
                             loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4))],
        test_cfg=dict(mode='whole'))


# name -> model config on the tiny CLIP: CoOp, VPT + CoOp (another class list), zero-shot
# CLIP (templates, nothing learned), and VPT, LoRA and AdaptFormer tasks beside them
TASKS = {
    'coop': lambda c: coop_cls(c, SHAPES),
    'vpt_coop': lambda c: coop_cls(c, PETS, num_prompts=2, deep=True),
    'zero_shot': lambda c: coop_cls(c, PETS, dict(n_ctx=0, templates='a photo of a {}.')),
    'coop_seg': lambda c: coop_seg(c, SHAPES + ['sky']),
    'vpt_coop_seg': lambda c: coop_seg(c, PETS, num_prompts=3, deep=True),
    'vpt_cls': lambda c: dict(type='VPTClassifier', backbone=clip_backbone(c, num_prompts=3),
                              head=dict(type='LinearClsHead', in_channels=64, num_classes=4)),
    'lora_seg': lambda c: seg(c, lora=dict(rank=2, targets=('q', 'v', 'fc1'))),
    'adapter_seg': lambda c: seg(c, num_prompts=2, adapter=dict(width=4, scale=0.5)),
}
TEXT_TASKS = ('coop', 'vpt_coop', 'zero_shot', 'coop_seg', 'vpt_coop_seg')


def _count_text_passes(model, name, calls: Counter):
    """Count the text tower passes of a task's text heads (``CoOpTextEncoder._features``)."""
    for _, head in text_heads(model):
        encoder = head.text_encoder
        if encoder is None:  # an auxiliary head that uses the decode head's
            continue
        inner = encoder._features

        def counted(inner=inner):
            calls[name] += 1
            return inner()
        encoder._features = counted


@pytest.fixture(scope='module')
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('coop_serve')
    write_tiny_clip(str(tmp / 'clip'))
    clip = str(tmp / 'clip' / 'open_clip_model.safetensors')
    # the shared tower from a CoOp config's backbone (its projection width dropped)
    mt = MultiTaskViT(build_shared_backbone(TASKS['coop'](clip)['backbone']))
    calls, paths = Counter(), {}
    for seed, (name, make) in enumerate(TASKS.items()):
        cfg = Config(dict(custom_imports=dict(imports=['vpt_seg'], allow_failed_imports=False),
                          default_scope='mmseg', model=make(clip)))
        model = trained_like(cfg.model, seed=seed, scale=0.3, batchnorm=True)
        paths[name] = (cfg, str(tmp / f'{name}.pth'))
        torch.save(dict(state_dict=model.state_dict()), paths[name][1])
        task = load_task_model(cfg, paths[name][1], pretrained=clip)
        _count_text_passes(task, name, calls)
        mt.add_task(name, task)
    added = dict(calls)
    mt.eval()  # as tools/serve.py does: the cached class embeddings stay
    mt(torch.zeros(len(TEXT_TASKS), 3, 32, 32), list(TEXT_TASKS))
    return dict(mt=mt, clip=clip, tmp=tmp, paths=paths, calls=calls, added=added,
                first_batch=dict(calls))


def _alone(served, name, x):
    """The task's own model, loaded on its own (its own text tower pass), on ``x``."""
    cfg, path = served['paths'][name]
    model = load_task_model(cfg, path, pretrained=served['clip'])
    with torch.no_grad():
        if served['mt'].kinds[name] == 'cls':
            return model(x, mode='tensor')
        shape = tuple(x.shape[2:])
        return model.encode_decode(x, [dict(img_shape=shape, pad_shape=shape,
                                            ori_shape=shape)] * len(x))


def test_coop_tasks_and_other_methods_in_one_batch_equal_each_model_alone(served):
    mt = served['mt']
    names = list(TASKS)
    tasks = [names[i % len(names)] for i in range(2 * len(names) + 1)][::-1]
    torch.manual_seed(0)
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in tasks]
    inputs = mt.preprocess(images, tasks)
    mixed = mt(inputs, tasks)
    served_alone = mt.run_alone(inputs, tasks)
    for name in names:
        idx = [i for i, t in enumerate(tasks) if t == name]
        ref = _alone(served, name, inputs[idx])
        for j, i in enumerate(idx):
            assert mixed[i].shape == ref[j].shape, name
            torch.testing.assert_close(mixed[i], ref[j], atol=ATOL, rtol=RTOL, msg=name)
            torch.testing.assert_close(served_alone[i], ref[j], atol=ATOL, rtol=RTOL, msg=name)
    k = {t: mixed[tasks.index(t)].shape[0] for t in TEXT_TASKS}
    assert k == dict(coop=len(SHAPES), vpt_coop=len(PETS), zero_shot=len(PETS),
                     coop_seg=len(SHAPES) + 1, vpt_coop_seg=len(PETS))
    # the learned context acts: without it (zeroed) the CoOp task's logits change
    encoder = mt.tasks['coop'].head.text_encoder
    keep = encoder.ctx.detach().clone()
    with torch.no_grad():
        encoder.ctx.zero_()
        off = mt(inputs[:1], ['coop'])[0]
        encoder.ctx.copy_(keep)
    assert (off - mt(inputs[:1], ['coop'])[0]).abs().max() > 1e-3


def test_class_embeddings_are_computed_once_across_batches(served):
    mt, calls = served['mt'], served['calls']
    assert served['added'] == {t: 1 for t in TEXT_TASKS}  # once each, when added
    assert served['first_batch'] == served['added']      # eval() and a batch: none again
    mt(torch.randn(len(TEXT_TASKS), 3, 32, 32), list(TEXT_TASKS))  # (another test moved a ctx)
    before = dict(calls)
    tasks = ['coop', 'vpt_cls', 'coop_seg', 'vpt_coop', 'lora_seg', 'zero_shot', 'coop',
             'vpt_coop_seg']
    for seed in range(3):
        torch.manual_seed(seed)
        inputs = torch.randn(len(tasks), 3, 32, 32)
        mt(inputs, tasks)
        mt.run_alone(inputs, tasks)   # --verify's reference reuses them too
    with torch.enable_grad():         # serving computes no graph, whatever the caller's mode
        out = mt(torch.randn(1, 3, 32, 32), ['coop'])[0]
    assert not out.requires_grad
    assert calls == before
    # a new class list is embedded once (the cache follows it), then reused
    head = mt.tasks['vpt_coop'].head
    try:
        head.set_classes(['tabby cat', 'puppy', 'seal', 'parrot'])
        for _ in range(2):
            assert mt(torch.randn(2, 3, 32, 32), ['vpt_coop'] * 2)[0].shape == (4, )
        assert calls['vpt_coop'] == before['vpt_coop'] + 1
    finally:
        head.set_classes(PETS)


def test_frozen_towers_are_shared_not_copied(served):
    mt = served['mt']
    shared_qkv = mt.backbone.vit.blocks[0].attn.qkv.weight
    for name, model in mt.tasks.items():
        assert model.backbone.vit.blocks[0].attn.qkv.weight is shared_qkv, name
    coop, other = mt.tasks['coop'], mt.tasks['vpt_coop']
    # one CLIP file: one text tower and one visual projection for every CoOp task
    assert other.head.text_encoder.text.token_embedding.weight is \
        coop.head.text_encoder.text.token_embedding.weight
    assert other.backbone.visual_projection.weight is coop.backbone.visual_projection.weight
    assert other.head.text_encoder.ctx is not coop.head.text_encoder.ctx  # tuned: own
    seg = mt.tasks['coop_seg']
    assert seg.decode_head.text_encoder.text.token_embedding.weight is \
        coop.head.text_encoder.text.token_embedding.weight
    assert seg.backbone.visual_projection.weight is coop.backbone.visual_projection.weight
    assert mt.backbone.visual_projection is None  # applied on each task's side of the pass


def test_serve_tool_mixes_a_coop_task_file_with_coop_seg_lora_and_vpt_coop(
        served, monkeypatch, capsys):
    """tools/serve.py: a CoOp task file (config inside), VPT + CoOp, CoOp segmentation
    and LoRA tasks as config:checkpoint; --verify passes, the CoOp rows name the task's
    classes and the label maps are at the image's size."""
    tmp, clip = served['tmp'], served['clip']
    specs = []
    cfg, ckpt = served['paths']['coop']
    task_file = str(tmp / 'coop.safetensors')
    export_task(cfg, ckpt, task_file)
    specs.append(f'coop={task_file}')
    for name in ('vpt_coop', 'coop_seg', 'lora_seg'):
        cfg, ckpt = served['paths'][name]
        cfg.dump(str(tmp / f'{name}.py'))
        specs.append(f'{name}={tmp / name}.py:{ckpt}')
    images = tmp / 'images'
    images.mkdir()
    rng = np.random.default_rng(1)
    for i, shape in enumerate([(32, 32, 3), (40, 56, 3)]):
        cv2.imwrite(str(images / f'img{i}.png'), rng.integers(0, 256, shape, np.uint8))
    out = tmp / 'out'
    monkeypatch.setattr('sys.argv', ['serve.py', clip, *specs, '--images', str(images),
                                     '--out-dir', str(out), '--batch-size', '4', '--verify'])
    capsys.readouterr()
    tool('serve').main()
    stdout = capsys.readouterr().out
    lines = [ln for ln in stdout.splitlines() if 'largest difference' in ln]
    assert sorted(ln.split(':')[0] for ln in lines) == ['coop', 'coop_seg', 'lora_seg',
                                                        'vpt_coop']
    for ln in lines:
        assert float(ln.rsplit(':', 1)[1]) < 1e-4, ln
    rows = json.loads((out / 'predictions.json').read_text())
    assert [(r['image'], r['task']) for r in rows] == [
        (f'img{i}.png', t) for i in range(2) for t in ('coop', 'vpt_coop')]
    model = load_task_model(None, task_file)  # the task file alone, its own text tower
    for r in rows:
        names = SHAPES if r['task'] == 'coop' else PETS
        assert r['name'] == names[r['label']] and len(r['pred_score']) == len(names)
        if r['task'] == 'coop':
            img = cv2.imread(str(images / r['image']), cv2.IMREAD_COLOR)
            data = model.data_preprocessor(dict(inputs=[task_input(img, (32, 32))]), False)
            with torch.no_grad():
                ref = model.predict(data['inputs'])[0]
            torch.testing.assert_close(torch.tensor(r['pred_score']), ref.pred_score,
                                       atol=ATOL, rtol=RTOL)
    for name in ('coop_seg', 'lora_seg'):
        label = cv2.imread(str(out / name / 'img1.png.png'), cv2.IMREAD_UNCHANGED)
        assert label.shape == (40, 56) and label.max() < 5  # 5 classes each
