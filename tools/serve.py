"""Serve several VPT tasks (segmentation and classification) on one frozen ViT.

    python tools/serve.py BACKBONE NAME=CONFIG:CHECKPOINT [NAME=TASK.safetensors ...] \\
        --images DIR --out-dir OUT [--size H W] [--batch-size 8] [--device cpu] [--verify]

A task is its config and checkpoint, or a task file from tools/export_task.py (which
carries its config), of any method: VPT, bias tuning, LoRA, AdaptFormer, CoOp (a text
classifier on a CLIP file, whose class embeddings are computed once per task, not per
batch), or several at once; their prompts, low-rank and adapter terms are applied per
sample, so tasks of different methods share a batch.

BACKBONE is the shared frozen ViT: a config (its ``model.backbone`` and pretrained file)
or a pretrained weights file (the architecture then comes from the first task's config).
Every image of DIR goes through every task. Each task gets exactly what its own model
gives alone: its images go in at its own input size (``--size`` for every task, default
each task backbone's ``img_size``), resized bilinearly, whole-image; batches hold one
input size, and tasks of the same size share one pass through the shared weights (see
vpt_seg/serving/multitask.py). The order of the tasks on the command line changes nothing.
Segmentation maps are resized back to the image's size in bands of rows (bounded memory,
any photo size; vpt_seg/models/segmentor.py). Task names: letters, digits, ``_``, ``-``.
Images are read as training reads them, and every one is checked before any work: a
truncated file, or one whose header declares more pixels than ``--max-pixels`` (default
``$VPT_SEG_MAX_PIXELS``, else 2**27, about 134 MP; a decompression bomb), is refused by
name and nothing is written.

Writes, under OUT (names keep the whole image file name, so ``a.jpg`` and ``a.png`` or
``x.jpg`` and ``x_overlay.jpg`` never overwrite each other; a symbolic link where a result
goes is refused, nothing is written outside OUT, each file is replaced atomically):
  <task>/<image>.png          label map: each pixel's 0-based class index (uint8, or
                              uint16 above 256 classes), e.g. seg/a.jpg.png
  <task>/<image>_overlay.png  the image blended with the class colours, seg/a.jpg_overlay.png
  predictions.json / .csv     class predictions, scored by the task model's own
                              ``postprocess`` (what ``predict`` and tools/test.py give):
                              softmax label, name, score and top-5 for a single-label
                              head; for a multi-label head (image tags) the sigmoid
                              scores and every class above 0.5 (``labels``, ``names``);
                              rows by image, then task name; in the CSV, text a
                              spreadsheet would run as a formula (=, +, -, @) gets a
                              leading '

``--classes [TASK=]FILE`` (one class name per line) gives a task whose head classifies by
CLIP text embeddings with a unified context (CoOp) another class list: TASK's, or every
task's without ``TASK=``; a linear head or a class-specific context is refused, naming
why. A segmentation task with a text head gets ``<task>/classes.txt`` beside its label
maps (line i + 1 is label i); class predictions name the classes in predictions.json.

``--verify`` also runs each task's own model alone on every image, prepared on its own
at the task's input size, prints the largest difference per task and exits 1 above
1e-3 (float32 rounding is about 1e-6).
"""
import argparse
import json
import math
import os
import os.path as osp

import vpt_seg  # noqa: F401  (patches and registration before any mmseg import)

# isort: split
import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.utils import ProgressBar
from mmseg.registry import DATASETS

from vpt_seg.config_paths import resolve_config
from vpt_seg.datasets.checks import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    DataError,
    check_image,
    pixel_limit,
)
from vpt_seg.datasets.image_folder import IMG_EXTENSIONS
from vpt_seg.formats.loading import load_task_model
from vpt_seg.formats.outputs import nearest_existing_parent
from vpt_seg.formats.tables import csv_text, joined
from vpt_seg.formats.task_file import read_task_config
from vpt_seg.formats.weight_files import reading_once
from vpt_seg.serving.multitask import MultiTaskViT, build_shared_backbone
from vpt_seg.serving.serve import (
    OutputDir,
    check_task_name,
    input_size,
    label_map,
    load_image,
    output_names,
    overlay,
    plan_batches,
    task_input,
    verify_batch,
    worse,
)
from vpt_seg.tuners.class_list import (
    class_names_text,
    has_text_classifier,
    read_class_file,
    set_task_classes,
)

#: --verify: the largest difference (logits) still taken for float rounding.
VERIFY_ATOL = 1e-3
#: Colours of classes a task's meta and config give none for: fixed, so overlays repeat.
PALETTE_SEED = 42


def parse_args():
    parser = argparse.ArgumentParser(
        description='Serve many tasks (VPT, bias tuning, LoRA, AdaptFormer) on one frozen ViT',
        epilog='example:\n  python tools/serve.py pretrain/tiny_vit.pth '
               'seg=configs/demo/setr_vpt_tiny_ade20k.py:work_dirs/demo/iter_200.pth \\\n'
               '      --images data/ade_tiny/ADEChallengeData2016/images/validation '
               '--out-dir served\nA progress bar with the ETA runs over the batches.\n'
               'label maps (OUT/TASK/IMAGE.png): each pixel is a 0-based index into the '
               "task's classes\n(ADE20k: 0 is wall, i.e. the annotation files' 1; their "
               "0, 'other', is never predicted).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('backbone', help='shared backbone: a config, or a weights file')
    parser.add_argument('tasks', nargs='+', metavar='NAME=CONFIG:CHECKPOINT', type=parse_task,
                        help='task name (letters, digits, _ and -), its config and its task '
                        'checkpoint, or NAME=TASK.safetensors (a task file, config inside)')
    parser.add_argument('--images', required=True, type=image_folder,
                        help='folder of images (every image file in it is served)')
    parser.add_argument('--out-dir', required=True, type=out_folder,
                        help='folder where results go, created if missing (label maps '
                        'hold 0-based class indices)')
    parser.add_argument('--size', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help="input size of every task (default: each task's own img_size)")
    parser.add_argument('--batch-size', type=positive_int, default=8,
                        help='(image, task) pairs per pass')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--max-pixels', type=positive_int, metavar='N',
                        help='largest image to read, in pixels, checked from its header '
                        'before decoding (default: $%s, else 2**27 = %d)'
                        % (MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS))
    parser.add_argument('--verify', action='store_true',
                        help='also run each task alone and report the largest difference')
    parser.add_argument('--classes', action='append', default=[], metavar='[TASK=]FILE',
                        help='a text file of class names, one per line, for TASK (every '
                        'task without TASK=) whose head classifies by CLIP text embeddings '
                        '(CoOp, unified context); repeat for other tasks')
    args = parser.parse_args()
    names = [n for n, _, _ in args.tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        parser.error(f'task names must be unique: {", ".join(dup)} given more than once')
    try:
        args.classes = class_lists(args.classes, names)
    except (ValueError, FileNotFoundError) as err:
        parser.error(f'--classes {err}')
    try:
        args.max_pixels = pixel_limit(args.max_pixels)
    except ValueError as err:  # a bad $VPT_SEG_MAX_PIXELS
        parser.error(str(err))
    return args


def image_folder(path: str) -> str:
    """argparse type: an existing folder (``--images``)."""
    if osp.isdir(path):
        return path
    if osp.exists(path):
        raise argparse.ArgumentTypeError(
            f'{path} is a file, not a folder: pass the folder that holds the images (e.g. '
            f'--images {osp.dirname(path) or "."} to serve every image beside it)')
    raise argparse.ArgumentTypeError(f'no folder {path}: pass the folder of images to serve')


def out_folder(path: str) -> str:
    """argparse type: a folder, or a path where one can be created (``--out-dir``)."""
    if osp.isdir(path):
        return path
    if osp.lexists(path):
        raise argparse.ArgumentTypeError(
            f'{path} exists and is not a folder: pass a folder for the results (it is '
            'created if missing), e.g. a new name')
    parent = nearest_existing_parent(path)
    if not osp.isdir(parent):
        raise argparse.ArgumentTypeError(
            f'{path} cannot be created: {parent} is a file, not a folder; pass a folder '
            'for the results outside it')
    return path


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'{value} must be >= 1')
    return value


def parse_task(spec: str):
    """``(name, config or None, checkpoint)`` of ``NAME=CONFIG.py:CKPT`` or
    ``NAME=TASK.safetensors``."""
    name, sep, rest = spec.partition('=')
    if not sep:
        raise argparse.ArgumentTypeError(f'task {spec!r}: expected NAME=CONFIG.py:CHECKPOINT '
                                         'or NAME=TASK.safetensors')
    try:
        check_task_name(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f'{spec!r}: {err}') from None
    if sep and rest.endswith('.safetensors') and '.py:' not in rest:
        return name, None, rest
    cfg, sep2, ckpt = rest.partition('.py:')
    if not (sep2 and ckpt):
        raise argparse.ArgumentTypeError(f'task {spec!r}: expected NAME=CONFIG.py:CHECKPOINT '
                                         'or NAME=TASK.safetensors')
    try:
        return name, resolve_config(cfg + '.py'), ckpt
    except FileNotFoundError as err:
        raise argparse.ArgumentTypeError(f'task {name!r}: {err}') from None


def class_lists(specs, tasks):
    """``{task: (names, file)}`` of ``--classes [TASK=]FILE`` options: a file with
    ``TASK=`` is that task's, one without it every other task's (a task named twice, or
    two files without ``TASK=``, is refused)."""
    named, every = {}, None
    for spec in specs:
        task, sep, path = spec.partition('=')
        if not (sep and task in tasks):
            task, path = None, spec
        entry = (read_class_file(path), path)
        if task is None and every is not None:
            raise ValueError(f'{path}: {every[1]} is already every task\'s class list; name '
                             'the task: --classes TASK=FILE')
        if task in named:
            raise ValueError(f'{path}: task {task!r} already has a class list '
                             f'({named[task][1]})')
        if task is None:
            every = entry
        else:
            named[task] = entry
    return {t: named.get(t, every) for t in tasks if t in named or every is not None}


def task_config(cfg_path, ckpt) -> Config:
    """A task's config: its file, or the one stored in its task file."""
    if cfg_path is not None:
        return Config.fromfile(cfg_path)
    return read_task_config(ckpt)  # data: nothing in the file is executed


def _read_classes(dataset: dict):
    classes = dataset.get('classes') or (dataset.get('metainfo') or {}).get('classes')
    if isinstance(classes, str):
        path = classes if osp.isfile(classes) else osp.join(dataset.get('data_root', ''), classes)
        with open(path) as f:
            return [line.strip() for line in f if line.strip()], None
    if classes:
        return list(classes), None
    meta = getattr(DATASETS.get(dataset.get('type', '')), 'METAINFO', {}) or {}
    return list(meta.get('classes', [])), meta.get('palette')


def task_meta(model, cfg: Config, num_classes: int):
    """Class names and palette of a task: from its checkpoint's dataset meta, else its
    test dataset config, else generic names and random colours."""
    meta = getattr(model, 'dataset_meta', None) or {}
    names, palette = list(meta.get('classes') or []), meta.get('palette')
    if len(names) != num_classes:
        try:
            names, palette = _read_classes(cfg.test_dataloader.dataset)
        except Exception:  # no test dataset in the config, or its class file is elsewhere
            pass
    if len(names) != num_classes:
        names = [f'class_{i}' for i in range(num_classes)]
    if palette is None or len(palette) < num_classes:
        rng = np.random.default_rng(PALETTE_SEED)
        palette = rng.integers(0, 255, (num_classes, 3)).tolist()
    return names, np.asarray(palette[:num_classes], dtype=np.uint8)


def class_prediction(model, logits: torch.Tensor, names, top: int = 5) -> dict:
    """One image's ``(K,)`` class logits -> a row of predictions.json, scored by the
    task model's own :meth:`~vpt_seg.models.VPTClassifier.postprocess` (the code its
    ``predict``, so tools/test.py, runs).

    Every row has ``pred_score`` (``(K,)``: softmax, or sigmoid for a multi-label head)
    and ``pred_label`` (the argmax, or the multi-hot ``(K,)`` of scores above 0.5), as
    ``predict`` gives them, and ``top5``. Single-label rows add ``label``, ``name`` and
    ``score``; multi-label rows ``labels``, ``names`` and ``scores`` of the classes
    predicted present (possibly none).
    """
    (sample, ) = model.postprocess(logits[None])
    score, pred = sample.pred_score.cpu(), sample.pred_label.cpu()
    order = score.argsort(descending=True)[:top].tolist()
    row = dict(multi_label=bool(model.multi_label), pred_score=score.tolist(),
               pred_label=pred.tolist(), top5=[[names[i], float(score[i])] for i in order])
    if model.multi_label:
        present = pred.nonzero().flatten().tolist()
        row.update(labels=present, names=[names[i] for i in present],
                   scores=[float(score[i]) for i in present])
    else:
        label = int(pred)
        row.update(label=label, name=names[label], score=float(score[label]))
    return row


def main():
    args = parse_args()
    specs = args.tasks
    files = sorted(f for f in os.listdir(args.images) if f.lower().endswith(IMG_EXTENSIONS)
                   and osp.isfile(osp.join(args.images, f)))
    if not files:
        raise SystemExit(f'no images in {args.images} (files ending in '
                         f'{", ".join(IMG_EXTENSIONS)})')
    # every header and end read before any work: a bomb or a truncated file is named
    # now, not after the models are built and half the outputs written
    bad = []
    for f in files:
        try:
            check_image(osp.join(args.images, f), args.max_pixels)
        except DataError as err:
            bad.append(str(err))
    if bad:
        raise SystemExit(f'{len(bad)} of the {len(files)} images in {args.images} cannot be '
                         'served; nothing was written:\n  ' + '\n  '.join(bad))
    out = OutputDir(args.out_dir)   # refuse collisions and links before any work
    out_names = output_names(files)
    out.check(None, ['predictions.json', 'predictions.csv'])
    for name, _, _ in specs:
        out.check(name, [n for pair in out_names.values() for n in pair] + ['classes.txt'])

    with reading_once():  # the pretrained file: read once for the backbone and every task
        if args.backbone.endswith('.py'):
            bcfg = Config.fromfile(resolve_config(args.backbone))
            init_default_scope(bcfg.get('default_scope', 'mmseg'))
            shared = build_shared_backbone(bcfg.model.backbone)
        else:
            first = task_config(*specs[0][1:])
            init_default_scope(first.get('default_scope', 'mmseg'))
            shared = build_shared_backbone(first.model.backbone, pretrained=args.backbone)
        pretrained = shared.configured_pretrained()  # the file the shared backbone loaded
        mt = MultiTaskViT(shared)
        metas = {}
        for name, cfg_path, ckpt in specs:
            cfg = task_config(cfg_path, ckpt)
            task = load_task_model(cfg, ckpt, pretrained=pretrained)
            if name in args.classes:
                try:
                    set_task_classes(task, *args.classes[name])
                except ValueError as err:
                    raise SystemExit(f'serve.py: task {name!r}: --classes {err}') from None
            model = mt.add_task(name, task)
            num_classes = model.num_classes if mt.kinds[name] == 'cls' else \
                model.decode_head.out_channels
            metas[name] = task_meta(model, cfg, num_classes)
            if mt.kinds[name] == 'seg' and has_text_classifier(model):  # label maps' key
                out.write(name, 'classes.txt', class_names_text(metas[name][0]).encode())
    mt.to(args.device).eval()
    sizes = {name: input_size(mt.tasks[name], args.size) for name in mt.tasks}
    seg = sorted(n for n in mt.kinds if mt.kinds[n] == 'seg')

    rows, worst = [], {}
    plan = plan_batches(files, sizes, args.batch_size)
    bar = ProgressBar(sum(len(b) for _, b in plan))  # (image, task) pairs done, rate and ETA
    for size, batch in plan:
        try:
            originals = {f: load_image(osp.join(args.images, f), args.max_pixels)
                         for f, _ in batch}
        except (DataError, FileNotFoundError) as err:  # changed since the check above
            raise SystemExit(str(err)) from None
        tasks = [t for _, t in batch]
        images = [task_input(originals[f], size, args.device) for f, _ in batch]
        with torch.no_grad():
            outputs = mt(mt.preprocess(images, tasks), tasks)
        if args.verify:
            for task, diff in verify_batch(mt, originals, batch, outputs, args.size,
                                           args.device).items():
                worst[task] = worse(worst.get(task, 0.0), diff)
        for (f, task), logits in zip(batch, outputs):
            names, palette = metas[task]
            if mt.kinds[task] == 'cls':
                rows.append(dict(image=f, task=task,
                                 **class_prediction(mt.tasks[task], logits, names)))
                continue
            img = originals[f]
            label = label_map(mt.tasks[task], logits, img.shape[:2])
            dtype = np.uint8 if len(names) <= 256 else np.uint16
            label_name, overlay_name = out_names[f]
            out.write_png(task, label_name, label.astype(dtype))
            out.write_png(task, overlay_name, overlay(img, label, palette))
        for _ in batch:
            bar.update()
    print()

    order = {f: i for i, f in enumerate(files)}
    rows.sort(key=lambda r: (order[r['image']], r['task']))
    out.write(None, 'predictions.json', json.dumps(rows, indent=1).encode())
    table = [['image', 'task', 'label', 'name', 'score']]
    for r in rows:  # multi-label: the classes present, ';'-separated
        if r['multi_label']:
            table.append([r['image'], r['task'], joined(r['labels']), joined(r['names']),
                          joined(f'{v:.4f}' for v in r['scores'])])
        else:
            table.append([r['image'], r['task'], r['label'], r['name'], f"{r['score']:.4f}"])
    # a class name from a shared task file (or an image's name) that a spreadsheet would
    # run as a formula is written with a leading ' (vpt_seg/formats/tables.py)
    out.write(None, 'predictions.csv', csv_text(table).encode())
    done = [f'{len(files)} images x {len(specs)} tasks served on one backbone']
    if seg:
        done.append('segmentation maps (0-based class indices) in '
                    + ', '.join(osp.join(args.out_dir, s) for s in seg))
    if any(kind == 'cls' for kind in mt.kinds.values()):
        done.append(f'class predictions in {osp.join(args.out_dir, "predictions.json")}')
    print('; '.join(done))
    if args.verify:
        for task in sorted(worst):
            print(f'{task}: largest difference to its own model alone at '
                  f'{sizes[task][0]}x{sizes[task][1]}: {worst[task]:.3g}')
        bad = sorted(t for t in worst if not worst[t] <= VERIFY_ATOL)
        if bad:
            raise SystemExit(f'--verify: {", ".join(bad)} differ from their own models '
                             f'alone by more than {VERIFY_ATOL:g}' + (
                                 ' (NaN: non-finite outputs; check the task files and the '
                                 'pretrained file)' if any(math.isnan(worst[t]) for t in bad)
                                 else ''))


if __name__ == '__main__':
    main()
