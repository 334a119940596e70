"""tools/serve.py gives what each task model's ``predict`` (what tools/test.py runs) gives,
for every head kind: single-label linear and MLP heads (softmax), a multi-label head
(image tags: sigmoid, every class above 0.5) and a segmentation head (label maps), each
at its own input size whatever the order of the tasks; its outputs never collide, never
go through a link or outside --out-dir, and bad arguments are argparse errors. Images are
read as training reads them (a decompression bomb or a truncated JPEG refused before any
work) and no CSV cell is a spreadsheet formula."""
import csv
import json
import math
import os
import os.path as osp
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import vpt_seg  # noqa: F401  (before mmseg)

# isort: split
from helpers import ARCH, ROOT, run_tool, tiny_pretrained, tool, trained_like
from mmengine.registry import init_default_scope
from mmseg.structures import SegDataSample

from vpt_seg.formats.loading import load_task_model
from vpt_seg.models import segmentor
from vpt_seg.serving.multitask import MultiTaskViT, build_shared_backbone
from vpt_seg.serving.serve import (
    input_size,
    label_map,
    output_names,
    plan_batches,
    task_input,
    verify_batch,
)

init_default_scope('mmseg')
CLASSES = ('cat', 'dog', 'car', 'tree', 'sky', 'road')


def _backbone(**kw):
    return dict(type='PromptedVisionTransformer', **dict(ARCH, **kw))


def _cls(head, **kw):
    return dict(type='VPTClassifier', backbone=_backbone(num_prompts=3, **kw),
                head=dict(in_channels=32, num_classes=len(CLASSES), **head))


# name -> model config (no init_cfg: serve gives every task the shared pretrained file)
TASKS = {
    'single': _cls(dict(type='LinearClsHead'), deep=True),
    'mlp': _cls(dict(type='MLPClsHead'), deep=False, tune_bias=True),
    'tags': _cls(dict(type='LinearClsHead', multi_label=True), deep=True),
    # another input size: served at 48x48 (its own), not at the others' 32x32
    'big': _cls(dict(type='LinearClsHead'), deep=True, img_size=(48, 48)),
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
    pretrained = tiny_pretrained(str(tmp / 'vit.pth'), final_norm=True)
    specs = {}
    for seed, (name, model_cfg) in enumerate(TASKS.items()):
        cfg_path = str(tmp / f'{name}.py')
        with open(cfg_path, 'w') as f:
            f.write(f"custom_imports = dict(imports=['vpt_seg'], allow_failed_imports=False)\n"
                    f"default_scope = 'mmseg'\nmodel = {model_cfg!r}\n"
                    f"test_dataloader = dict(dataset=dict(classes={list(CLASSES)!r}))\n")
        model = trained_like(dict(model_cfg, backbone=dict(  # random tuned weights
            model_cfg['backbone'], init_cfg=dict(type='Pretrained', checkpoint=pretrained))),
            seed=seed, scale=0.5)
        ckpt = str(tmp / f'{name}.pth')
        torch.save(dict(state_dict=model.state_dict()), ckpt)
        specs[name] = (cfg_path, ckpt)
    images = tmp / 'images'
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):  # one of another size and aspect: every task resizes it
        shape = (40, 56, 3) if i == 4 else (32, 32, 3)
        cv2.imwrite(str(images / f'img{i}.png'), rng.integers(0, 256, shape, np.uint8))
    out = tmp / 'out'
    proc = _serve(pretrained, specs, images, out, '--batch-size', '6', '--verify')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(tmp=tmp, out=out, images=images, specs=specs, pretrained=pretrained,
                stdout=proc.stdout)


def _serve(backbone, specs, images, out, *args):
    """tools/serve.py with ``specs`` {name: (config, checkpoint)} in their dict order, in a
    forked child (tests/helpers.py; the --help and memory-limit cases start new
    interpreters)."""
    return run_tool('serve.py', str(backbone), *[f'{n}={c}:{k}' for n, (c, k) in specs.items()],
                    '--images', str(images), '--out-dir', str(out), *args)


def _predict(served, name, image, images=None):
    """What the task model alone gives for one image at its own input size: the image
    resized (bilinear) to it, then the model's own predict (tools/test.py's code)."""
    cfg_path, ckpt = served['specs'][name]
    model = load_task_model(cfg_path, ckpt, pretrained=served['pretrained'])
    img = cv2.imread(str((images or served['images']) / image), cv2.IMREAD_COLOR)  # BGR
    own = input_size(model)
    data = model.data_preprocessor(dict(inputs=[task_input(img, own)]), False)
    samples = None
    if name == 'seg':
        samples = [SegDataSample(metainfo=dict(img_shape=own, ori_shape=img.shape[:2],
                                               pad_shape=own))]
    with torch.no_grad():
        return model.predict(data['inputs'], samples)[0]


@pytest.mark.parametrize('task', ['single', 'mlp', 'tags', 'big'])
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
    assert len(table) == len(rows) == 5 * 4
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
        label = cv2.imread(str(served['out'] / 'seg' / f'img{i}.png.png'), cv2.IMREAD_UNCHANGED)
        expected = ref.pred_sem_seg.data[0].numpy()
        assert label.shape == expected.shape == ((40, 56) if i == 4 else (32, 32))
        # equal, except where the reference's two best classes tie within float rounding
        top2 = ref.seg_logits.data.topk(2, dim=0).values
        near_tie = (top2[0] - top2[1]).numpy() < 1e-4
        assert ((label == expected) | near_tie).all(), f'img{i}'
        assert len(np.unique(expected)) > 1  # not a constant map


def _outputs(out):
    """Every file under a serve output folder: {relative path: bytes}."""
    files = {}
    for folder, _, names in os.walk(out):
        for n in names:
            path = osp.join(folder, n)
            with open(path, 'rb') as f:
                files[osp.relpath(path, out)] = f.read()
    return files


def test_the_order_of_the_tasks_changes_nothing(served):
    """The reversed command line (the 48x48 task first) gives the same bytes."""
    out = served['tmp'] / 'reversed'
    specs = dict(reversed(list(served['specs'].items())))
    proc = _serve(served['pretrained'], specs, served['images'], out, '--batch-size', '6')
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = _outputs(served['out']), _outputs(out)
    assert sorted(first) == sorted(second)
    assert len([f for f in first if f.startswith('seg' + os.sep)]) == 10
    for name in first:
        assert first[name] == second[name], name


def test_verify_compares_each_task_with_its_own_model_at_its_own_size(served):
    lines = [ln for ln in served['stdout'].splitlines() if 'largest difference' in ln]
    assert sorted(ln.split(':')[0] for ln in lines) == sorted(served['specs'])
    assert any(ln.startswith('big:') and '48x48' in ln for ln in lines)
    for ln in lines:
        assert float(ln.rsplit(':', 1)[1]) < 1e-4, ln


def test_verify_catches_a_task_served_at_another_tasks_size(served):
    """What serve.py did before: every image at the first task's size. verify_batch,
    whose reference is prepared on its own at each task's size, reports it."""
    mt = MultiTaskViT(build_shared_backbone(TASKS['single']['backbone'],
                                            pretrained=served['pretrained']))
    for name in ('single', 'big'):
        mt.add_task(name, load_task_model(*served['specs'][name],
                                          pretrained=served['pretrained']))
    mt.eval()
    img = cv2.imread(str(served['images'] / 'img4.png'), cv2.IMREAD_COLOR)
    pairs = [('img4.png', 'single'), ('img4.png', 'big')]
    for size, expect_big in [((32, 32), float('inf')), ((48, 48), 0.0)]:
        tasks = [t for _, t in pairs]
        with torch.no_grad():
            outputs = mt(mt.preprocess([task_input(img, size)] * 2, tasks), tasks)
        worst = verify_batch(mt, {'img4.png': img}, pairs, outputs)
        if size == (32, 32):
            assert worst['single'] < 1e-4
        # class logits have the same shape at any size: a real difference, not inf
        assert (worst['big'] > 1e-3) if expect_big else (worst['big'] < 1e-4)


def test_batches_hold_one_input_size_and_same_size_tasks_share_them():
    plan = plan_batches(['a.png', 'b.png'], {'z': (32, 32), 'big': (48, 48), 'a': (32, 32)}, 3)
    assert plan == [((32, 32), [('a.png', 'a'), ('a.png', 'z'), ('b.png', 'a')]),
                    ((32, 32), [('b.png', 'z')]),
                    ((48, 48), [('a.png', 'big'), ('b.png', 'big')])]
    # the order the tasks come in does not change the plan
    assert plan == plan_batches(['a.png', 'b.png'],
                                {'a': (32, 32), 'big': (48, 48), 'z': (32, 32)}, 3)


def test_outputs_of_similar_names_do_not_collide(served):
    """a.jpg / a.png and x.jpg / x_overlay.jpg in one folder: every image keeps its own
    label map and overlay, each that image's prediction."""
    images = served['tmp'] / 'similar'
    images.mkdir()
    rng = np.random.default_rng(1)
    names = ['a.jpg', 'a.png', 'x.jpg', 'x_overlay.jpg']
    for n in names:
        cv2.imwrite(str(images / n), rng.integers(0, 256, (32, 32, 3), np.uint8))
    out = served['tmp'] / 'similar_out'
    proc = _serve(served['pretrained'], {'seg': served['specs']['seg']}, images, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(os.listdir(out / 'seg'))
    assert written == sorted([f'{n}.png' for n in names] + [f'{n}_overlay.png' for n in names])
    maps = {}
    for n in names:
        label = cv2.imread(str(out / 'seg' / f'{n}.png'), cv2.IMREAD_UNCHANGED)
        ref = _predict(served, 'seg', n, images=images)
        tie = ref.seg_logits.data.topk(2, dim=0).values
        near = (tie[0] - tie[1]).numpy() < 1e-4
        assert ((label == ref.pred_sem_seg.data[0].numpy()) | near).all(), n
        maps[n] = label
    assert not np.array_equal(maps['a.jpg'], maps['a.png'])


def test_names_that_differ_in_case_only_are_refused():
    with pytest.raises(ValueError, match=r"'A\.jpg' and 'a\.jpg'"):
        output_names(['A.jpg', 'a.jpg'])


@pytest.mark.parametrize('where', ['file', 'folder'])
def test_a_symbolic_link_in_the_out_dir_is_refused_and_nothing_written_outside(
        served, where):
    outside = served['tmp'] / f'outside_{where}'
    outside.mkdir()
    victim = outside / 'img0.png.png'
    victim.write_bytes(b'precious')
    out = served['tmp'] / f'linked_{where}'
    out.mkdir()
    if where == 'file':
        (out / 'seg').mkdir()
        link = out / 'seg' / 'img0.png.png'
        link.symlink_to(victim)
    else:
        link = out / 'seg'
        link.symlink_to(outside, target_is_directory=True)
    proc = _serve(served['pretrained'], {'seg': served['specs']['seg']}, served['images'], out)
    assert proc.returncode == 1
    assert f'{link} is a symbolic link (to {victim if where == "file" else outside})' \
        in proc.stderr
    assert victim.read_bytes() == b'precious'
    assert sorted(os.listdir(outside)) == ['img0.png.png']


@pytest.mark.parametrize('args,message', [
    (['--batch-size', '0'], 'argument --batch-size: 0 must be >= 1'),
    (['--batch-size', '-2'], 'argument --batch-size: -2 must be >= 1'),
    (['--size', '0', '0'], 'argument --size: 0 must be >= 1'),
    (['--size', '32', '-1'], 'argument --size: -1 must be >= 1'),
    (['--task', '/tmp/abs'], 'task name \'/tmp/abs\''),
    (['--task', 'a.b'], 'task name \'a.b\''),
    (['--task', '../up'], 'task name \'../up\''),
    (['--task', 'seg'], 'task names must be unique: seg'),
])
def test_bad_arguments_are_argparse_errors(served, args, message):
    cfg, ckpt = served['specs']['seg']
    tasks = [f'seg={cfg}:{ckpt}']
    if args[0] == '--task':
        tasks.append(f'{args[1]}={cfg}:{ckpt}')
        args = []
    proc = run_tool('serve.py', served['pretrained'], *tasks, '--images', str(served['images']),
                    '--out-dir', str(served['tmp'] / 'bad'), *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and 'Traceback' not in proc.stderr
    assert 'argument' in proc.stderr or 'unique' in proc.stderr
    assert not (served['tmp'] / 'bad').exists()


def test_label_maps_of_a_big_image_are_made_in_bands(served, monkeypatch):
    """A 2000x1500 image: the labels of the full-resolution resize, from bands of rows
    no larger than the budget."""
    cfg, ckpt = served['specs']['seg']
    model = load_task_model(cfg, ckpt, pretrained=served['pretrained'])
    shapes, resize_rows = [], segmentor.resize_rows

    def recording(*args):
        out = resize_rows(*args)
        shapes.append(tuple(out.shape))                                   # (C, rows, W)
        return out
    monkeypatch.setattr(segmentor, 'resize_rows', recording)
    torch.manual_seed(0)
    logits = torch.randn(5, 32, 32)
    budget = 5 * 1500 * 4 * 100
    labels = label_map(model, logits, (2000, 1500), budget=budget)
    full = torch.nn.functional.interpolate(logits[None], size=(2000, 1500), mode='bilinear',
                                           align_corners=False)[0]
    top2 = full.topk(2, dim=0).values
    near = (top2[0] - top2[1]).numpy() < 1e-4
    assert labels.shape == (2000, 1500)
    assert ((labels == full.argmax(0).numpy()) | near).all()
    assert sum(s[1] for s in shapes) == 2000 and max(s[1] for s in shapes) <= 100


def _serve_here(served, monkeypatch, capsys, names, out):
    """tools/serve.py's main() in this process (to count file reads); its stdout."""
    tool = _tool()
    tasks = [f'{n}={served["specs"][n][0]}:{served["specs"][n][1]}' for n in names]
    monkeypatch.setattr(sys, 'argv', ['serve.py', served['pretrained'], *tasks, '--images',
                                      str(served['images']), '--out-dir', str(out)])
    capsys.readouterr()
    tool.main()
    return capsys.readouterr().out


@pytest.mark.parametrize('names', [('seg', ), ('seg', 'single', 'big')])
def test_the_pretrained_file_is_read_once_and_the_summary_says_what_ran(
        served, monkeypatch, capsys, names):
    from vpt_seg.formats import weight_files as checkpoint
    reads, read = [], checkpoint._read_weights
    monkeypatch.setattr(checkpoint, '_read_weights', lambda p: reads.append(p) or read(p))
    out = served['tmp'] / ('here_' + '_'.join(names))
    stdout = _serve_here(served, monkeypatch, capsys, names, out)
    # the shared backbone, its final-norm check and every task's frozen weights: one read
    assert reads == [served['pretrained']]
    (summary, ) = [ln for ln in stdout.splitlines() if 'served on one backbone' in ln]
    assert f'segmentation maps (0-based class indices) in {out / "seg"}' in summary
    assert ('class predictions in' in summary) == ('single' in names)
    labels = cv2.imread(str(out / 'seg' / 'img0.png.png'), cv2.IMREAD_UNCHANGED)
    assert labels.min() >= 0 and labels.max() < 5  # indices into the task's 5 classes
    assert checkpoint._read_once is None  # the read tensors are let go


def test_help_says_label_maps_are_0_based_class_indices():
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'serve.py'), '--help'],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0
    assert "each pixel is a 0-based index into the task's classes" in proc.stdout


def _seg(**backbone):
    return dict(TASKS['seg'], backbone=_backbone(**backbone))


# LoRA and AdaptFormer tasks beside a VPT one (issue 18): per-sample low-rank and adapter
# terms in the same pass through the shared frozen weights
TUNER_TASKS = {
    'vpt': _seg(num_prompts=2, deep=True),
    'lora': _seg(num_prompts=0, lora=dict(rank=2, alpha=4,
                                          targets=('q', 'v', 'proj', 'fc1', 'fc2'))),
    'adapter': _seg(num_prompts=0, adapter=dict(width=4, scale=0.5)),
    'lora_vpt_cls': _cls(dict(type='LinearClsHead'), deep=True, tune_bias=True,
                         lora=dict(rank=3, targets=('k', 'v'))),
}


def test_lora_adapter_and_vpt_tasks_serve_in_one_batch(served):
    """Task files (LoRA, adapter) and a config:checkpoint task (VPT) in one batch of one
    input size: --verify passes and each label map is its own model's predict."""
    from mmengine.config import Config

    from vpt_seg import export_task
    tmp = served['tmp'] / 'tuners'
    tmp.mkdir()
    specs = {}
    for seed, (name, model_cfg) in enumerate(TUNER_TASKS.items()):
        cfg = Config(dict(custom_imports=dict(imports=['vpt_seg'], allow_failed_imports=False),
                          default_scope='mmseg', model=model_cfg))
        cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=served['pretrained'])
        model = trained_like(cfg.model, seed=20 + seed, scale=0.5)
        ckpt = str(tmp / f'{name}.pth')
        torch.save(dict(state_dict=model.state_dict()), ckpt)
        if name == 'vpt':
            cfg_path = str(tmp / 'vpt.py')
            cfg.dump(cfg_path)
            specs[name] = (cfg_path, ckpt)
        else:  # a task file: its config inside
            export_task(cfg, ckpt, str(tmp / f'{name}.safetensors'))
            specs[name] = (None, str(tmp / f'{name}.safetensors'))
    images = tmp / 'images'
    images.mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        cv2.imwrite(str(images / f'img{i}.png'), rng.integers(0, 256, (32, 32, 3), np.uint8))
    out = tmp / 'out'
    proc = run_tool('serve.py', served['pretrained'],
                    *[f'{n}={c}:{k}' if c else f'{n}={k}' for n, (c, k) in specs.items()],
                    '--images', str(images), '--out-dir', str(out), '--batch-size', '8',
                    '--verify')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if 'largest difference' in ln]
    assert sorted(ln.split(':')[0] for ln in lines) == sorted(TUNER_TASKS)
    for ln in lines:
        assert float(ln.rsplit(':', 1)[1]) < 1e-4, ln
    assert plan_batches(['img0.png', 'img1.png'], {n: (32, 32) for n in specs}, 8) == [
        ((32, 32), [(f, n) for f in ('img0.png', 'img1.png') for n in sorted(specs)])]
    with open(out / 'predictions.json') as f:
        rows = json.load(f)
    refs = {}
    for name, (cfg_path, ckpt) in specs.items():
        model = load_task_model(cfg_path, ckpt, pretrained=served['pretrained'])
        for i in range(2):
            img = cv2.imread(str(images / f'img{i}.png'), cv2.IMREAD_COLOR)
            data = model.data_preprocessor(dict(inputs=[task_input(img, (32, 32))]), False)
            samples = None if name.endswith('cls') else [SegDataSample(metainfo=dict(
                img_shape=(32, 32), ori_shape=(32, 32), pad_shape=(32, 32)))]
            with torch.no_grad():
                refs[name, i] = model.predict(data['inputs'], samples)[0]
    for i in range(2):
        (row, ) = [r for r in rows if r['task'] == 'lora_vpt_cls' and r['image'] == f'img{i}.png']
        torch.testing.assert_close(torch.tensor(row['pred_score']),
                                   refs['lora_vpt_cls', i].pred_score, atol=1e-5, rtol=1e-4)
        maps = {}
        for name in ('vpt', 'lora', 'adapter'):
            label = cv2.imread(str(out / name / f'img{i}.png.png'), cv2.IMREAD_UNCHANGED)
            ref = refs[name, i]
            top2 = ref.seg_logits.data.topk(2, dim=0).values
            near_tie = (top2[0] - top2[1]).numpy() < 1e-4
            assert ((label == ref.pred_sem_seg.data[0].numpy()) | near_tie).all(), name
            maps[name] = label
        # the tasks are not one function: their maps differ
        assert not np.array_equal(maps['lora'], maps['adapter'])


# --- hostile inputs (issue 24): images are bounded and checked as training checks them,
# CSV cells are never formulas, and a file where a folder goes is an argparse error

def _tool():
    return tool('serve')


def _run_here(monkeypatch, capsys, argv):
    """tools/serve.py's main() in this process: (exit code, stdout, stderr)."""
    tool = _tool()
    monkeypatch.setattr(sys, 'argv', ['serve.py', *map(str, argv)])
    capsys.readouterr()
    code = 0
    try:
        tool.main()
    except SystemExit as exit_:
        code = exit_.code or 0
        if isinstance(code, str):  # what Python prints, then exit status 1
            print(code, file=sys.stderr)
            code = 1
    out, err = capsys.readouterr()
    return code, out, err


def _memory_limit():
    """A preexec_fn: address space for the tool's imports (about what this process, which
    made the same imports, maps: 4 GiB on CPU) plus 2 GiB, at least 6 GiB in all; decoding
    the bomb (432 MB, then its label map and overlay: 3.7 GB) would not fit."""
    import resource
    with open('/proc/self/status') as f:
        mapped = [int(ln.split()[1]) << 10 for ln in f if ln.startswith('VmSize:')][0]
    limit = max(6 << 30, mapped + (2 << 30))
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_a_decompression_bomb_is_refused_from_its_header_before_any_work(served):
    """A 140 KB PNG declaring 12000x12000 (144 MP, over the 2**27 default) beside a good
    image: refused in seconds under a memory limit, naming the file, its size, the limit
    and --max-pixels; nothing written. (Before: 3.7 GB and 4.6 minutes, exit 0.)"""
    from bad_images import png_bomb
    images = served['tmp'] / 'bomb'
    images.mkdir()
    cv2.imwrite(str(images / 'a.png'), np.zeros((32, 32, 3), np.uint8))
    assert png_bomb(images / 'bomb.png') < 200_000
    out = served['tmp'] / 'bomb_out'
    cfg, ckpt = served['specs']['seg']
    env = dict(os.environ, MALLOC_ARENA_MAX='2')
    env.pop('VPT_SEG_MAX_PIXELS', None)
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'serve.py'), served['pretrained'],
         f'seg={cfg}:{ckpt}', '--images', str(images), '--out-dir', str(out)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
        preexec_fn=_memory_limit())
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    assert f"image '{images / 'bomb.png'}' declares 12000x12000 pixels (WxH: 144,000,000) " \
        'in its header, over the limit of 134,217,728 pixels' in proc.stderr
    assert 'decompression bomb' in proc.stderr and '--max-pixels N' in proc.stderr
    assert '1 of the 2 images' in proc.stderr and 'nothing was written' in proc.stderr
    assert not out.exists()


def test_max_pixels_sets_the_limit_and_a_bad_one_is_an_argparse_error(
        served, monkeypatch, capsys):
    cfg, ckpt = served['specs']['seg']
    args = [served['pretrained'], f'seg={cfg}:{ckpt}', '--images', served['images'],
            '--out-dir', served['tmp'] / 'limit_out']
    code, _, err = _run_here(monkeypatch, capsys, args + ['--max-pixels', '2000'])
    assert code == 1
    assert f"image '{served['images'] / 'img4.png'}' declares 56x40 pixels (WxH: 2,240) " \
        'in its header, over the limit of 2,000 pixels' in err
    assert '1 of the 5 images' in err
    monkeypatch.setenv('VPT_SEG_MAX_PIXELS', '1000')  # every 32x32 image over it too
    code, _, err = _run_here(monkeypatch, capsys, args)
    assert code == 1 and '5 of the 5 images' in err and 'over the limit of 1,000' in err
    monkeypatch.setenv('VPT_SEG_MAX_PIXELS', 'lots')
    code, _, err = _run_here(monkeypatch, capsys, args)
    assert code == 2
    assert "the environment variable VPT_SEG_MAX_PIXELS='lots': give the largest image" in err
    code, _, err = _run_here(monkeypatch, capsys, args + ['--max-pixels', '0'])
    assert code == 2 and 'argument --max-pixels: 0 must be >= 1' in err
    assert not (served['tmp'] / 'limit_out').exists()


def test_a_truncated_jpeg_is_refused_as_training_refuses_it(served, monkeypatch, capsys):
    """Before: served with a grey fill, exit 0."""
    from bad_images import truncated_jpeg

    from vpt_seg.datasets.checks import DataError, read_image
    images = served['tmp'] / 'truncated'
    images.mkdir()
    cv2.imwrite(str(images / 'a.png'), np.zeros((32, 32, 3), np.uint8))
    truncated_jpeg(images / 'cut.jpg')
    assert cv2.imread(str(images / 'cut.jpg')) is not None  # what OpenCV alone gives
    cfg, ckpt = served['specs']['seg']
    out = served['tmp'] / 'truncated_out'
    code, _, err = _run_here(monkeypatch, capsys, [
        served['pretrained'], f'seg={cfg}:{ckpt}', '--images', images, '--out-dir', out])
    message = f"image '{images / 'cut.jpg'}' is truncated (its last bytes are missing)"
    assert code == 1 and message in err and 'nothing was written' in err
    assert not out.exists()
    with pytest.raises(DataError, match=re.escape(message)):  # the training reader's words
        read_image(str(images / 'cut.jpg'))


HOSTILE = ('=1+2', '+SUM(A1)', '-2+3', '@A1', '=HYPERLINK("http://x")', '\t=1')


def test_class_names_that_spreadsheets_run_are_escaped_in_the_csv(served, monkeypatch, capsys):
    """Class names from a task file's dataset_meta (and image names) beginning with
    =, +, -, @ or a tab get a leading ' in predictions.csv; the JSON keeps them as they
    are. Before: written as they are."""
    from mmengine.config import Config

    from vpt_seg import export_task
    tmp = served['tmp'] / 'csv'
    images = tmp / 'images'
    images.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name in ('@img.png', '-x.png', 'plain.png'):
        cv2.imwrite(str(images / name), rng.integers(0, 256, (32, 32, 3), np.uint8))
    files = {}
    for task in ('single', 'tags'):
        cfg_path, ckpt = served['specs'][task]
        cfg = Config.fromfile(cfg_path)
        cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=served['pretrained'])
        state = torch.load(ckpt, weights_only=True)
        state['meta'] = dict(dataset_meta=dict(classes=list(HOSTILE)))
        torch.save(state, tmp / f'{task}.pth')
        export_task(cfg, str(tmp / f'{task}.pth'), str(tmp / f'{task}.safetensors'))
        files[task] = tmp / f'{task}.safetensors'
    code, _, err = _run_here(monkeypatch, capsys, [
        served['pretrained'], *[f'{t}={f}' for t, f in files.items()], '--images', images,
        '--out-dir', tmp / 'out'])
    assert code == 0, err[-3000:]
    with open(tmp / 'out' / 'predictions.json') as f:
        rows = {(r['image'], r['task']): r for r in json.load(f)}
    with open(tmp / 'out' / 'predictions.csv', newline='') as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6
    tags = []
    for line in table:
        image = line['image'].lstrip("'")
        assert line['image'] == (image if image == 'plain.png' else "'" + image)
        row = rows[image, line['task']]
        names = [row['name']] if line['task'] == 'single' else row['names']
        assert all(n in HOSTILE for n in names)  # the JSON: the names as they are
        assert line['name'] == ';'.join("'" + n for n in names)
        tags += names if line['task'] == 'tags' else []
    assert tags  # the multi-label cells are not all empty


@pytest.mark.parametrize('option,where,message', [
    ('--images', 'file', 'argument --images: {path} is a file, not a folder: pass the folder '
     'that holds the images (e.g. --images {images} to serve every image beside it)'),
    ('--images', 'missing', 'argument --images: no folder {path}: pass the folder of images'),
    ('--out-dir', 'file', 'argument --out-dir: {path} exists and is not a folder: pass a '
     'folder for the results (it is created if missing)'),
    ('--out-dir', 'under a file', 'argument --out-dir: {path} cannot be created: {file} is a '
     'file, not a folder'),
], ids=['images-file', 'images-missing', 'out-dir-file', 'out-dir-under-a-file'])
def test_a_file_where_a_folder_goes_is_an_argparse_error(served, monkeypatch, capsys, option,
                                                         where, message):
    """Before: a raw NotADirectoryError (FileNotFoundError for a missing --images)."""
    file = served['images'] / 'img0.png'
    before = file.read_bytes()
    path = {'file': file, 'missing': served['tmp'] / 'nope',
            'under a file': file / 'out'}[where]
    cfg, ckpt = served['specs']['seg']
    args = {'--images': served['images'], '--out-dir': served['tmp'] / 'folder_out'}
    args[option] = path
    code, _, err = _run_here(monkeypatch, capsys, [
        served['pretrained'], f'seg={cfg}:{ckpt}', *[a for kv in args.items() for a in kv]])
    assert code == 2 and 'Traceback' not in err
    assert message.format(path=path, file=file, images=served['images']) in err
    assert file.read_bytes() == before and not (served['tmp'] / 'folder_out').exists()


def test_verify_counts_a_nan_output_as_a_failure(served, monkeypatch, capsys):
    """The finding: max(0.0, nan) is 0.0, so --verify passed NaN outputs as equal."""
    from vpt_seg.serving.serve import worse
    nan = float('nan')
    assert math.isnan(worse(0.0, nan)) and math.isnan(worse(nan, 1e-6))
    assert worse(1e-6, 2e-6) == 2e-6
    mt = MultiTaskViT(build_shared_backbone(TASKS['single']['backbone'],
                                            pretrained=served['pretrained']))
    mt.add_task('single', load_task_model(*served['specs']['single'],
                                          pretrained=served['pretrained']))
    mt.eval()
    img = cv2.imread(str(served['images'] / 'img0.png'), cv2.IMREAD_COLOR)
    pairs = [('a.png', 'single'), ('b.png', 'single')]
    with torch.no_grad():
        outputs = list(mt(mt.preprocess([task_input(img, (32, 32))] * 2, ['single'] * 2),
                          ['single'] * 2))
    outputs[0] = torch.full_like(outputs[0], nan)  # the first sample's output is NaN
    worst = verify_batch(mt, {'a.png': img, 'b.png': img}, pairs, outputs)
    assert math.isnan(worst['single'])
    # the tool: a NaN difference fails --verify, saying so
    tool = _tool()
    monkeypatch.setattr(tool, 'verify_batch', lambda mt, o, batch, *a: {
        t: nan for _, t in batch})
    cfg, ckpt = served['specs']['seg']
    monkeypatch.setattr(sys, 'argv', ['serve.py', served['pretrained'], f'seg={cfg}:{ckpt}',
                                      '--images', str(served['images']), '--out-dir',
                                      str(served['tmp'] / 'nan_out'), '--verify'])
    with pytest.raises(SystemExit, match=r'--verify: seg differ .* \(NaN: non-finite'):
        tool.main()
    assert 'seg: largest difference to its own model alone at 32x32: nan' in (
        capsys.readouterr().out)
