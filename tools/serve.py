"""Serve several VPT tasks (segmentation and classification) on one frozen ViT.

    python tools/serve.py BACKBONE NAME=CONFIG:CHECKPOINT [NAME=TASK.safetensors ...] \\
        --images DIR --out-dir OUT [--size H W] [--batch-size 8] [--device cpu] [--verify]

A task is its config and checkpoint, or a task file from tools/export_task.py (which
carries its config).

BACKBONE is the shared frozen ViT: a config (its ``model.backbone`` and pretrained file)
or a pretrained weights file (the architecture then comes from the first task's config).
Every image of DIR goes through every task; batches mix tasks and run in one pass
through the shared weights (see vpt_seg/multitask.py). Images are resized to ``--size``
(default: the backbone's ``img_size``) for the pass; segmentation maps are resized back.

Writes, under OUT:
  <task>/<image>.png          label map (uint8, or uint16 above 255 classes)
  <task>/<image>_overlay.png  the image blended with the class colours
  predictions.json / .csv     class predictions, scored by the task model's own
                              ``postprocess`` (what ``predict`` and tools/test.py give):
                              softmax label, name, score and top-5 for a single-label
                              head; for a multi-label head (image tags) the sigmoid
                              scores and every class above 0.5 (``labels``, ``names``)
"""
import argparse
import csv
import json
import os
import os.path as osp

import vpt_seg  # noqa: F401  (compat fixes and registration before any mmseg import)
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.utils import ProgressBar
from mmseg.registry import DATASETS

from vpt_seg.datasets.image_folder import IMG_EXTENSIONS
from vpt_seg.multitask import MultiTaskViT, build_shared_backbone, load_task_model
from vpt_seg.runner import resolve_config
from vpt_seg.task_file import read_task_config


def parse_args():
    parser = argparse.ArgumentParser(
        description='Serve many VPT tasks on one frozen ViT',
        epilog='example:\n  python tools/serve.py pretrain/tiny_vit.pth '
               'seg=configs/demo/setr_vpt_tiny_ade20k.py:work_dirs/demo/iter_200.pth \\\n'
               '      --images data/ade_tiny/ADEChallengeData2016/images/validation '
               '--out-dir served\nA progress bar with the ETA runs over the batches.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('backbone', help='shared backbone: a config, or a weights file')
    parser.add_argument('tasks', nargs='+', metavar='NAME=CONFIG:CHECKPOINT',
                        help='task name, its config and its task checkpoint, or '
                        'NAME=TASK.safetensors (a task file, config inside)')
    parser.add_argument('--images', required=True, help='folder of images')
    parser.add_argument('--out-dir', required=True, help='where results go')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size of the shared pass (default: backbone img_size)')
    parser.add_argument('--batch-size', type=int, default=8, help='(image, task) pairs per pass')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--verify', action='store_true',
                        help='also run each task alone and report the largest difference')
    return parser.parse_args()


def parse_task(spec: str):
    """``(name, config or None, checkpoint)`` of ``NAME=CONFIG.py:CKPT`` or
    ``NAME=TASK.safetensors``."""
    name, sep, rest = spec.partition('=')
    if sep and name and rest.endswith('.safetensors') and '.py:' not in rest:
        return name, None, rest
    cfg, sep2, ckpt = rest.partition('.py:')
    if not (sep and sep2 and name and ckpt):
        raise ValueError(f'task {spec!r}: expected NAME=CONFIG.py:CHECKPOINT or '
                         'NAME=TASK.safetensors')
    return name, resolve_config(cfg + '.py'), ckpt


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
        rng = np.random.default_rng(42)
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
    specs = [parse_task(t) for t in args.tasks]
    if len({n for n, _, _ in specs}) != len(specs):
        raise ValueError('task names must be unique')
    files = sorted(f for f in os.listdir(args.images) if f.lower().endswith(IMG_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f'no images in {args.images}')

    if args.backbone.endswith('.py'):
        bcfg = Config.fromfile(resolve_config(args.backbone))
        init_default_scope(bcfg.get('default_scope', 'mmseg'))
        shared = build_shared_backbone(bcfg.model.backbone)
    else:
        first = task_config(*specs[0][1:])
        init_default_scope(first.get('default_scope', 'mmseg'))
        shared = build_shared_backbone(first.model.backbone, pretrained=args.backbone)
    pretrained = shared.init_cfg['checkpoint']
    mt = MultiTaskViT(shared)
    metas = {}
    for name, cfg_path, ckpt in specs:
        cfg = task_config(cfg_path, ckpt)
        model = mt.add_task(name, load_task_model(cfg, ckpt, pretrained=pretrained))
        num_classes = model.num_classes if mt.kinds[name] == 'cls' else \
            model.decode_head.out_channels
        metas[name] = task_meta(model, cfg, num_classes)
    mt.to(args.device).eval()
    size = tuple(args.size or shared.img_size)

    pairs = [(f, t) for f in files for t, _, _ in specs]
    originals, rows, worst = {}, [], 0.0
    os.makedirs(args.out_dir, exist_ok=True)
    bar = ProgressBar(len(pairs))  # (image, task) pairs done, rate and ETA
    for start in range(0, len(pairs), args.batch_size):
        batch = pairs[start:start + args.batch_size]
        images = []
        for f, _ in batch:
            if f not in originals:
                img = cv2.imread(osp.join(args.images, f), cv2.IMREAD_COLOR)  # BGR, as LoadImageFromFile
                if img is None:
                    raise ValueError(f'cannot read {f}')
                originals[f] = img
            resized = cv2.resize(originals[f], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            images.append(torch.from_numpy(resized.transpose(2, 0, 1).copy()).to(args.device))
        tasks = [t for _, t in batch]
        with torch.no_grad():
            inputs = mt.preprocess(images, tasks)
            outputs = mt(inputs, tasks)
            if args.verify:
                alone = mt.run_alone(inputs, tasks)
                worst = max([worst] + [(a - b).abs().max().item() for a, b in zip(outputs, alone)])
        for (f, task), out in zip(batch, outputs):
            names, palette = metas[task]
            stem = osp.splitext(f)[0]
            if mt.kinds[task] == 'cls':
                rows.append(dict(image=f, task=task,
                                 **class_prediction(mt.tasks[task], out, names)))
                continue
            img = originals[f]
            logits = F.interpolate(out[None].float(), size=img.shape[:2], mode='bilinear',
                                   align_corners=False)[0]
            label = logits.argmax(0).cpu().numpy()
            os.makedirs(osp.join(args.out_dir, task), exist_ok=True)
            dtype = np.uint8 if len(names) <= 256 else np.uint16
            cv2.imwrite(osp.join(args.out_dir, task, f'{stem}.png'), label.astype(dtype))
            colour = palette[label][..., ::-1]                          # RGB palette -> BGR
            overlay = (0.5 * img + 0.5 * colour).astype(np.uint8)
            cv2.imwrite(osp.join(args.out_dir, task, f'{stem}_overlay.png'), overlay)
        for _ in batch:
            bar.update()
    print()

    with open(osp.join(args.out_dir, 'predictions.json'), 'w') as fp:
        json.dump(rows, fp, indent=1)
    with open(osp.join(args.out_dir, 'predictions.csv'), 'w', newline='') as fp:
        writer = csv.writer(fp)
        writer.writerow(['image', 'task', 'label', 'name', 'score'])
        for r in rows:  # multi-label: the classes present, ';'-separated
            if r['multi_label']:
                writer.writerow([r['image'], r['task'], ';'.join(map(str, r['labels'])),
                                 ';'.join(r['names']),
                                 ';'.join(f'{v:.4f}' for v in r['scores'])])
            else:
                writer.writerow([r['image'], r['task'], r['label'], r['name'],
                                 f"{r['score']:.4f}"])
    seg = [n for n in mt.kinds if mt.kinds[n] == 'seg']
    print(f'{len(files)} images x {len(specs)} tasks served on one backbone; '
          f'segmentation maps in {", ".join(osp.join(args.out_dir, s) for s in seg) or "-"}; '
          f'class predictions in {osp.join(args.out_dir, "predictions.json")}')
    if args.verify:
        print(f'largest difference to running each task alone: {worst:.3g}')


if __name__ == '__main__':
    main()
