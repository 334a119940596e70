"""Open class lists and folding of CoOp tasks (vpt_seg/tuners/class_list.py,
vpt_seg/engine/class_list.py, vpt_seg/formats/fold.py, TextClsHead's folded mode):
a class list at test time through the Python API, tools/test.py --classes and
tools/serve.py --classes, the refusals (linear head, class-specific context, bad files),
the folded checkpoint against the task, and the class names of a task file."""
import json
import os
import os.path as osp
import re
import shutil
import sys

import pytest
import torch
from helpers import ROOT, tool
from mmengine.config import Config
from safetensors.torch import save_file
from test_text_cls_head import VISUAL, build, clip_cfg, images
from test_text_encoder import NAMES

from vpt_seg.datasets.synthetic_cls import make_cls_folder
from vpt_seg.formats.export import export_task
from vpt_seg.formats.fold import fold_task
from vpt_seg.formats.loading import load_task_model
from vpt_seg.formats.task_file import read_task_metadata
from vpt_seg.formats.weight_files import load_torch_file
from vpt_seg.models.tiny_clip import write_tiny_clip
from vpt_seg.tuners.class_list import read_class_file, set_task_classes, text_heads

NEW = ['dog', 'red car']
DEMO = osp.join(ROOT, 'configs', 'demo', 'coop_cls_tiny.py')


def trained(path, **kw):
    """A CoOp classifier whose context is not its initial one."""
    model = build(clip_cfg(path, n_ctx=4, **kw))
    with torch.no_grad():
        model.head.text_encoder.ctx.normal_(std=0.3, generator=torch.Generator().manual_seed(1))
    return model


def write(tmp_path, text, name='names.txt'):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


# ------------------------------------------------------------- the Python API
def test_a_new_class_list_changes_the_names_and_the_logits_class_count(clip_file):
    path, _ = clip_file
    model = trained(path)
    x = images()
    with torch.no_grad():
        before = model(x, mode='tensor')
    assert before.shape == (3, len(NAMES))
    assert set_task_classes(model, ['dog', 'red_car ']) == NEW     # cleaned as prompts are
    assert model.head.class_names == NEW and model.dataset_meta == dict(classes=tuple(NEW))
    with torch.no_grad():
        after = model(x, mode='tensor')
    assert after.shape == (3, 2)
    # the same as a task built with that vocabulary and the same context
    ref = build(clip_cfg(path, n_ctx=4, vocabulary=NEW))
    ref.head.text_encoder.load_state_dict(model.head.text_encoder.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(after, ref(x, mode='tensor'), rtol=0, atol=1e-6)
        # 'dog' is not a class of the trained list: its logit is new
        assert not torch.allclose(after[:, 0], before[:, 0])
    assert [n for n, _ in text_heads(model)] == ['head']


def test_read_class_file(tmp_path):
    assert read_class_file(write(tmp_path, 'cat\r\nsea_lion\n  traffic light \n')) == [
        'cat', 'sea lion', 'traffic light']
    assert read_class_file(write(tmp_path, '\ufeffcat\ndog')) == ['cat', 'dog']


@pytest.mark.parametrize('text,match', [
    ('cat\n\ndog\n', r"names\.txt: class name\(s\) at line\(s\) \[2\] are empty.*remove the "
                     r'empty lines'),
    ('cat\n  \ndog\n\n', r'at line\(s\) \[2, 4\] are empty'),
    ('cat\ndog\ncat\nsea lion\nsea_lion\n',
     r"names\.txt: duplicate class name\(s\) \['cat', 'sea lion'\] \('cat' at line\(s\) 1, 3; "
     r"'sea lion' at line\(s\) 4, 5"),
    ('', r'names\.txt: no class names'),
    (b'cat\n\xff\xfe\n', r'names\.txt: not UTF-8 text'),
])
def test_a_bad_class_file_is_refused_naming_the_lines(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        read_class_file(write(tmp_path, text))


def test_a_name_too_long_for_the_context_is_named_with_its_line(clip_file, tmp_path):
    path, _ = clip_file
    model = trained(path)
    long = ' '.join(['word'] * 72)
    source = write(tmp_path, f'cat\n{long}\ndog\n')
    with pytest.raises(ValueError, match=r"names\.txt: line 2: class 'word word .*': its prompt "
                                         r'is 79 tokens \(72 for the name, 4 context.*context '
                                         r'length 77'):
        set_task_classes(model, read_class_file(source), source)
    assert model.head.class_names == NAMES  # nothing changed


def test_a_class_specific_context_refuses_another_list(clip_file):
    path, _ = clip_file
    model = trained(path, csc=True)
    for names in (NEW, list(reversed(NAMES))):  # another count, or the same count
        with pytest.raises(ValueError, match=r'names\.txt: this task has class-specific '
                                             r'context \(csc=True\).*tied to those classes'):
            set_task_classes(model, names, 'names.txt')
    assert model.head.class_names == NAMES
    assert set_task_classes(model, NAMES) == NAMES  # its own list is fine


def linear_cfg(path):
    """The same image tower with a linear head: its classes are learned weights."""
    cfg = clip_cfg(path)
    cfg['backbone']['model_kwargs'].pop('num_classes')  # the projection's width: none kept
    cfg['head'] = dict(type='LinearClsHead', in_channels=VISUAL['embed_dim'], num_classes=3)
    return cfg


def test_a_linear_head_refuses_a_class_list(clip_file):
    path, _ = clip_file
    model = build(linear_cfg(path))
    with pytest.raises(ValueError, match=r"names\.txt: this task's head, head "
                                         r'\(LinearClsHead\), has no text classifier: its '
                                         r'classes are learned weights'):
        set_task_classes(model, NEW, 'names.txt')


# ------------------------------------------------------------- tools/test.py
@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """The CoOp demo's config on a tiny CLIP and 6 x 1 validation images, a CoOp task
    checkpoint and a linear-head one."""
    tmp = tmp_path_factory.mktemp('demo')
    write_tiny_clip(str(tmp / 'clip'))
    clip = str(tmp / 'clip' / 'open_clip_model.safetensors')
    data = make_cls_folder(str(tmp / 'data'), num_train=1, num_val=1, seed=0)
    options = {'model.backbone.checkpoint': clip, 'model.head.text_encoder.checkpoint': clip,
               **{f'{k}_dataloader.dataset.data_root': data for k in ('train', 'val', 'test')}}
    from mmseg.registry import MODELS
    cfg = Config.fromfile(DEMO)
    cfg.merge_from_dict(options)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict(), meta={}), str(tmp / 'coop.pth'))
    linear = tmp / 'linear.py'
    linear.write_text(f'_base_ = [{DEMO!r}]\nmodel = dict(backbone=dict(model_kwargs=dict('
                      '_delete_=True, embed_dim=64, depth=2, num_heads=2)), head=dict('
                      "_delete_=True, type='LinearClsHead', in_channels=64, num_classes=6))\n")
    lin = Config.fromfile(str(linear))
    lin.merge_from_dict({k: v for k, v in options.items() if 'text_encoder' not in k})
    model = MODELS.build(lin.model)
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict(), meta={}), str(tmp / 'linear.pth'))
    return dict(tmp=tmp, clip=clip, options=options, linear=str(linear))


def run_test_tool(monkeypatch, demo, config, ckpt, *args, options=None):
    """tools/test.py's main() in this process; the SystemExit message, or None."""
    opts = options if options is not None else demo['options']
    argv = ['test.py', config, ckpt, *args, '--cfg-options',
            *[f'{k}={v}' for k, v in opts.items()]]
    monkeypatch.setattr(sys, 'argv', argv)
    try:
        tool('test').main()
    except SystemExit as exit_:
        return str(exit_.code)
    return None


@pytest.mark.parametrize('case,match', [
    ('empty', r"test\.py: --classes .*names\.txt: class name\(s\) at line\(s\) \[2\] are "
              r'empty'),
    ('count', r'test\.py: --classes .*names\.txt: 2 class names, but the test data '
              r'\(ImageFolderDataset\) has 6 classes'),
    ('linear', r"test\.py: --classes .*names\.txt: this task's head, head \(LinearClsHead\), "
               r'has no text classifier'),
])
def test_test_tool_refuses_a_class_list_naming_why(demo, monkeypatch, case, match):
    tmp = demo['tmp']
    names = write(tmp, 'cat\n\ndog\n' if case == 'empty' else 'cat\ndog\n')
    config, ckpt, options = DEMO, str(tmp / 'coop.pth'), demo['options']
    if case == 'linear':
        config, ckpt = demo['linear'], str(tmp / 'linear.pth')
        options = {k: v for k, v in options.items() if 'text_encoder' not in k}
    message = run_test_tool(monkeypatch, demo, config, ckpt, '--classes', names, '--work-dir',
                            str(tmp / f'work_{case}'), options=options)
    assert message is not None and re.search(match, message), message


# ------------------------------------------------------------- tools/serve.py
def test_serve_tool_classes_options(tmp_path, monkeypatch, capsys):
    """``--classes [TASK=]FILE``: a file for one task or every task, read and checked
    before anything is built (serving CoOp tasks end to end is tests/test_serve.py's)."""
    serve = tool('serve')
    names = write(tmp_path, 'cat\ndog\nsea_lion\n')
    other = write(tmp_path, 'red car\n', 'other.txt')
    lists = serve.class_lists([f'a={names}', other], ['a', 'b'])
    assert lists == {'a': (['cat', 'dog', 'sea lion'], names), 'b': (['red car'], other)}
    assert serve.class_lists([names], ['a', 'b'])['b'] == (['cat', 'dog', 'sea lion'], names)
    with pytest.raises(ValueError, match=r"other\.txt: task 'a' already has a class list"):
        serve.class_lists([f'a={names}', f'a={other}'], ['a'])
    with pytest.raises(ValueError, match=r"other\.txt: .*names\.txt is already every task's "
                                         r'class list; name the task'):
        serve.class_lists([names, other], ['a'])
    bad = write(tmp_path, 'cat\ncat\n', 'dup.txt')
    pics = tmp_path / 'pics'
    pics.mkdir()
    monkeypatch.setattr(sys, 'argv', ['serve.py', 'clip.safetensors', 'a=task.safetensors',
                                      '--images', str(pics), '--out-dir', str(tmp_path / 'o'),
                                      '--classes', f'a={bad}'])
    with pytest.raises(SystemExit):
        serve.main()
    assert re.search(r"--classes .*dup\.txt: duplicate class name\(s\) \['cat'\] \('cat' at "
                     r'line\(s\) 1, 2', capsys.readouterr().err)


# ------------------------------------------------------------- folding
def coop_task(path, tmp_path, **kw):
    model = trained(path, **kw)
    cfg = Config(dict(model=clip_cfg(path, n_ctx=4, **kw)))
    ckpt = str(tmp_path / 'task.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    return model, cfg, ckpt


def test_fold_a_coop_task_no_text_tower_left(clip_file, tmp_path):
    path, _ = clip_file
    local = str(tmp_path / 'clip' / 'open_clip_model.safetensors')
    os.makedirs(osp.dirname(local))
    shutil.copy(path, local)
    model, cfg, ckpt = coop_task(local, tmp_path)
    out = str(tmp_path / 'deploy' / 'coop.pth')
    os.makedirs(osp.dirname(out))
    done = fold_task(cfg, ckpt, out)
    assert any('text classifier of head (5 class embeddings' in f for f in done['folded'])
    os.rename(osp.dirname(local), str(tmp_path / 'moved'))  # no CLIP file anywhere now

    saved = load_torch_file(out, what='folded checkpoint')
    state = saved['state_dict']
    assert not any('text_encoder' in k or 'logit_scale' in k for k in state)
    assert state['head.classifier.weight'].shape == (5, 32)
    assert saved['meta']['dataset_meta']['classes'] == NAMES
    text = open(done['config']).read()
    assert 'CoOpTextEncoder' not in text and 'open_clip_model' not in text
    folded_cfg = Config.fromfile(done['config'])
    assert folded_cfg.model.head == dict(type='TextClsHead', text_encoder=None,
                                         class_names=NAMES, in_channels=32)
    from mmseg.registry import MODELS
    folded = MODELS.build(folded_cfg.model)
    folded.load_state_dict(state, strict=True)
    folded.eval()
    assert folded.head.text_encoder is None  # no text tower in the model either
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(folded(x, mode='tensor'), model(x, mode='tensor'),
                                   rtol=1e-5, atol=1e-5)
        assert torch.equal(folded.predict(x)[0].pred_label, model.predict(x)[0].pred_label)
    # A folded head holds its classes' embeddings: another list is refused, naming why.
    with pytest.raises(ValueError, match=r'names\.txt: this head is folded: its classifier '
                                         r'holds the embeddings of its 5 classes'):
        set_task_classes(folded, NEW, 'names.txt')


def test_fold_with_a_new_class_list_and_a_failed_check_writes_nothing(clip_file, tmp_path,
                                                                      monkeypatch):
    path, _ = clip_file
    model, cfg, ckpt = coop_task(path, tmp_path)
    cfg.model.head.text_encoder.vocabulary = NEW  # the list to deploy with
    out = str(tmp_path / 'coop.pth')
    fold_task(cfg, ckpt, out)
    assert load_torch_file(out)['state_dict']['head.classifier.weight'].shape == (2, 32)
    before = open(out, 'rb').read()

    from vpt_seg.models.text_cls_head import TextClsHead
    fold_text = TextClsHead.fold_text

    def wrong(head):  # a fold that changes the classifier: the check must catch it
        folded = fold_text(head)
        head.classifier.weight.data.mul_(1.01)
        return folded
    monkeypatch.setattr(TextClsHead, 'fold_text', wrong)
    with pytest.raises(ValueError, match=r'coop\.pth: the folded model differs from the task '
                                         r'by .* nothing was written'):
        fold_task(cfg, ckpt, out)
    assert open(out, 'rb').read() == before  # the earlier fold's pair stays
    assert sorted(os.listdir(tmp_path)) == ['coop.pth', 'coop.py', 'task.pth']


# ------------------------------------------------------------- task files
def test_task_file_round_trips_the_class_names(clip_file, tmp_path):
    path, _ = clip_file
    local = str(tmp_path / 'open_clip_model.safetensors')
    shutil.copy(path, local)
    _, cfg, ckpt = coop_task(local, tmp_path)
    cfg.model.head.text_encoder.vocabulary = ['dog', 'red_car']
    task = str(tmp_path / 'coop.safetensors')
    export_task(cfg, ckpt, task)
    meta = read_task_metadata(task)
    assert json.loads(meta['dataset_meta'])['classes'] == NEW
    stored = json.loads(meta['config_json'])['model']['head']
    assert stored['text_encoder']['vocabulary'] == ['dog', 'red_car']
    loaded = load_task_model(None, task)
    assert loaded.head.class_names == NEW and list(loaded.dataset_meta['classes']) == NEW
    assert loaded(images(), mode='tensor').shape == (3, 2)

    # On another CLIP file (other text-tower weights, the same image tower) beside it,
    # the one it was made with gone: refused by the text tower's sha256.
    other = tmp_path / 'other'
    other.mkdir()
    from safetensors.torch import load_file
    weights = load_file(local)
    weights['ln_final.weight'] = weights['ln_final.weight'] * 1.5
    save_file(weights, str(other / 'open_clip_model.safetensors'))
    shutil.copy(task, other / 'coop.safetensors')
    os.remove(local)
    with pytest.raises(ValueError, match=r'none of the candidates holds the frozen weights.*'
                                         r'sha256.*model\.head\.text_encoder\.checkpoint'):
        load_task_model(None, str(other / 'coop.safetensors'))


# ------------------------------------------------------------- segmentation
SEG_DEMO = osp.join(ROOT, 'configs', 'demo', 'coop_seg_tiny_ade20k.py')


@pytest.fixture(scope='module')
def seg(tmp_path_factory):
    """The CoOp segmentation demo's config on the tiny CLIP and two generated ADE20k-layout
    images, and a task checkpoint of it (a context that is not its initial one)."""
    from mmseg.registry import MODELS

    from vpt_seg.datasets.synthetic import make_ade20k
    tmp = tmp_path_factory.mktemp('seg')
    write_tiny_clip(str(tmp / 'clip'))
    clip = str(tmp / 'clip' / 'open_clip_model.safetensors')
    data = make_ade20k(str(tmp / 'ade'), num_train=1, num_val=2, size=(48, 48))
    cfg = Config.fromfile(SEG_DEMO)
    cfg.merge_from_dict({'model.backbone.checkpoint': clip,
                         'model.decode_head.text_encoder.checkpoint': clip,
                         **{f'{k}_dataloader.dataset.data_root': data
                            for k in ('train', 'val', 'test')}})
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():
        model.decode_head.text_encoder.ctx.normal_(
            std=0.3, generator=torch.Generator().manual_seed(2))
    ckpt = str(tmp / 'task.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    image = osp.join(data, 'images', 'validation', sorted(
        os.listdir(osp.join(data, 'images', 'validation')))[0])
    return dict(tmp=tmp, cfg=cfg, ckpt=ckpt, clip=clip, image=image)


def test_seg_a_new_class_list_changes_the_names_and_the_logits_class_count(seg):
    model = load_task_model(seg['cfg'], seg['ckpt'])
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model(x, mode='tensor').shape[1] == 150
    assert [n for n, _ in text_heads(model)] == ['decode_head', 'auxiliary_head.0']
    set_task_classes(model, ['wall', 'sky', 'red_car'])
    assert model.decode_head.class_names == ['wall', 'sky', 'red car']
    assert model.num_classes == model.auxiliary_head[0].num_classes == 3  # shared encoder
    assert model.dataset_meta == dict(classes=('wall', 'sky', 'red car'))
    with torch.no_grad():
        assert model(x, mode='tensor').shape[1] == 3


def test_seg_fold_equals_the_task_through_init_model_with_no_text_tower(seg):
    from mmseg.apis import inference_model, init_model
    task = init_model(seg['cfg'], seg['ckpt'], device='cpu')
    expected = inference_model(task, seg['image'])
    out = str(seg['tmp'] / 'deploy' / 'seg.pth')
    os.makedirs(osp.dirname(out))
    done = fold_task(seg['cfg'], seg['ckpt'], out)
    assert done['folded'] == ['the text classifier of decode_head (150 class embeddings, '
                              'computed once)']
    folded_cfg = Config.fromfile(done['config'])
    head = folded_cfg.model.decode_head
    assert head.text_encoder is None and head.num_classes == 150 and head.embed_dims == 32
    assert head.class_names[7] == 'bed'
    assert folded_cfg.model.auxiliary_head[0].text_encoder == 'shared'
    state = load_torch_file(out)['state_dict']
    assert not any('text_encoder' in k for k in state)
    assert state['decode_head.conv_seg.weight'].shape == (150, 32, 1, 1)
    moved = str(seg['tmp'] / 'moved')
    os.rename(osp.dirname(seg['clip']), moved)  # no CLIP file anywhere
    try:
        folded = init_model(done['config'], out, device='cpu')
        assert folded.decode_head.text_encoder is None
        assert folded.dataset_meta['classes'][7] == 'bed'
        got = inference_model(folded, seg['image'])
    finally:
        os.rename(moved, osp.dirname(seg['clip']))
    torch.testing.assert_close(got.seg_logits.data, expected.seg_logits.data, rtol=1e-5,
                               atol=1e-4)
    assert torch.equal(got.pred_sem_seg.data, expected.pred_sem_seg.data)


def test_seg_test_tool_classes_beside_the_label_maps(seg, monkeypatch):
    """tools/test.py --classes on a segmentation task: 150 other words for the data's
    classes; classes.txt in --out beside the label maps and in the log folder."""
    from mmseg.utils import get_classes
    tmp, cfg = seg['tmp'], seg['cfg']
    words = [f'a {name.strip()}' for name in get_classes('ade20k')]
    names = write(tmp, ''.join(f'{w}\n' for w in words), 'seg_names.txt')
    options = {'model.backbone.checkpoint': seg['clip'],
               'model.decode_head.text_encoder.checkpoint': seg['clip'],
               **{f'{k}_dataloader.dataset.data_root': cfg.test_dataloader.dataset.data_root
                  for k in ('train', 'val', 'test')}}
    work, out = tmp / 'seg_work', tmp / 'seg_preds'
    assert run_test_tool(monkeypatch, None, SEG_DEMO, seg['ckpt'], '--classes', names,
                         '--work-dir', str(work), '--out', str(out), options=options) is None
    (log_dir, ) = [d for d in work.iterdir() if d.is_dir()]
    assert len(list(out.glob('*.png'))) == 2  # the label maps
    for folder in (log_dir, out):
        assert (folder / 'classes.txt').read_text().splitlines() == words
