"""The paper's Table 3 in miniature: a transfer study that runs on a laptop CPU.

No pretrained weights or datasets can be downloaded, so the study makes both:

1. synthetic source and target tasks in the ADE20k layout
   (:func:`vpt_seg.datasets.make_ade20k`);
2. a "pretrained" tiny ViT: SETR-PUP trained from scratch on the source task
   (``configs/study/pretrain_source.py`` through ``tools/train.py``), whose backbone is
   saved as an MMSeg-format checkpoint;
3. one run per Table-3 row on the target task (``configs/study/<row>.py`` through
   ``tools/train.py``, evaluated by ``tools/test.py``), plus a reference: the same model
   with a head that was never trained, evaluated the same way.

It then writes a table (Markdown, CSV, JSON), mIoU against tuned parameters, and the
predictions of every row on a few validation images. Every training and test run is a
subprocess of the normal tools with the normal configs; this module only passes data
and checkpoint paths (and, for short runs, iteration counts) through ``--cfg-options``.
"""
import argparse
import csv
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .datasets.synthetic import TASK_CLASSES, make_ade20k

__all__ = ['ROWS', 'StudySettings', 'run_study', 'format_table']

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: Table-3 rows: config name in configs/study -> method name in the table.
ROWS = OrderedDict([
    ('head', 'Head only'),
    ('bias', 'Bias'),
    ('vpt-shallow', 'VPT-shallow'),
    ('vpt-deep', 'VPT-deep'),
    ('vpt-bias', 'VPT+Bias'),
    ('full', 'Full'),
])
UNTRAINED = 'untrained-head'


@dataclass
class StudySettings:
    """What a study run does. Defaults are the documented study (<= 10 min on 2 cores).

    Attributes:
        out_dir: Where data, runs, tables and figures go.
        rows: Keys of :data:`ROWS` to run, in order.
        num_source: Source-task training images.
        num_target: Target-task training images.
        num_val: Validation images per task.
        pretrain_iters: Source pretraining iterations (None: the config's).
        iters: Iterations per target row (None: the configs').
        seed: Data and training seed.
        num_show: Validation images in the predictions figure.
        config_dir: The study configs.
        tools_dir: Where ``train.py`` and ``test.py`` live.
    """
    out_dir: str = 'work_dirs/study'
    rows: Sequence[str] = tuple(ROWS)
    num_source: int = 1000
    num_target: int = 200
    num_val: int = 64
    pretrain_iters: Optional[int] = None
    iters: Optional[int] = None
    seed: int = 0
    num_show: int = 4
    config_dir: str = osp.join(REPO_ROOT, 'configs', 'study')
    tools_dir: str = osp.join(REPO_ROOT, 'tools')


@dataclass
class RowResult:
    key: str
    method: str
    tuned: int
    total: int
    file_bytes: int
    miou: float
    aacc: float
    train_s: float
    test_s: float
    checkpoint: str = ''
    pred_dir: str = ''
    extra: Dict = field(default_factory=dict)

    @property
    def tuned_pct(self) -> float:
        return 100.0 * self.tuned / self.total


# ------------------------------------------------------------------ running tools
def _log(msg: str):
    print(f'[study] {msg}', flush=True)


def _schedule_options(iters: Optional[int]) -> List[str]:
    if iters is None:
        return []
    return [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'param_scheduler.1.end={iters}', f'default_hooks.checkpoint.interval={iters}']


def _data_options(data_root: str) -> List[str]:
    return [f'{loader}.dataset.data_root={data_root}'
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]


def _run_tool(settings: StudySettings, tool: str, args: List[str], log_path: str) -> float:
    """Run ``tools/<tool>`` in a subprocess (output to ``log_path``); returns seconds."""
    env = dict(os.environ)
    env['PYTHONPATH'] = REPO_ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('PYTHONWARNINGS', 'ignore')
    cmd = [sys.executable, osp.join(settings.tools_dir, tool)] + args
    start = time.perf_counter()
    with open(log_path, 'w') as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        raise RuntimeError(f'{" ".join(cmd)} failed (exit {proc.returncode}); log '
                           f'{log_path} ends with:\n{tail}')
    return seconds


def _last_checkpoint(work_dir: str) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def _test_metrics(work_dir: str) -> Dict[str, float]:
    """The metrics tools/test.py logged (``<work_dir>/<timestamp>/<timestamp>.json``)."""
    files = sorted(glob.glob(osp.join(work_dir, '*', '*.json')))
    if not files:
        raise RuntimeError(f'no test metrics found under {work_dir}')
    with open(files[-1]) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def _val_metrics(work_dir: str) -> Dict[str, float]:
    """The last validation metrics tools/train.py logged."""
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', '*.json')))[::-1]:
        with open(path) as f:
            lines = [json.loads(line) for line in f if 'mIoU' in line]
        if lines:
            return lines[-1]
    return {}


def _load_cfg(path: str, options: List[str]):
    """A config with ``--cfg-options``-style ``key=value`` overrides, parsed as the tools do."""
    from mmengine.config import Config, DictAction
    cfg = Config.fromfile(path)
    if options:
        parser = argparse.ArgumentParser()
        parser.add_argument('--cfg-options', nargs='+', action=DictAction)
        cfg.merge_from_dict(parser.parse_args(['--cfg-options'] + options).cfg_options)
    return cfg


def _build_model(cfg):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    return MODELS.build(cfg.model)


def _count(cfg_path: str, options: List[str]):
    from .tuning import count_parameters
    model = _build_model(_load_cfg(cfg_path, options))
    return count_parameters(model, tuned_only=True), count_parameters(model)


# ---------------------------------------------------------------------- stages
def export_backbone(checkpoint: str, out_path: str) -> str:
    """Save the ``backbone.*`` weights of a segmentor checkpoint as an MMSeg-format ViT
    checkpoint (``{'state_dict': {...}}``), the file a backbone's ``init_cfg`` loads."""
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict']
    backbone = OrderedDict((k[len('backbone.'):], v) for k, v in state.items()
                           if k.startswith('backbone.'))
    if not backbone:
        raise ValueError(f'{checkpoint} holds no backbone.* weights')
    torch.save({'state_dict': backbone}, out_path)
    return out_path


def save_untrained(cfg_path: str, options: List[str], out_path: str, seed: int) -> str:
    """A task checkpoint of ``cfg_path``'s model straight after initialisation: the
    pretrained frozen backbone and a head that was never trained."""
    torch.manual_seed(seed)
    model = _build_model(_load_cfg(cfg_path, options))
    model.init_weights()
    torch.save({'meta': {}, 'state_dict': model.state_dict()}, out_path)
    return out_path


def _fmt_bytes(n: int) -> str:
    return f'{n / 2**20:.2f} MiB' if n >= 2**20 else f'{n / 2**10:.0f} KiB'


def _fmt_count(n: int) -> str:
    return f'{n / 1e6:.2f}M' if n >= 1e6 else f'{n / 1e3:.1f}K'


def format_table(results: Sequence[RowResult], reference: Optional[RowResult] = None) -> str:
    """The study table in Markdown."""
    lines = ['| Method | Tuned params | % of model | Task file | mIoU | aAcc | Train time |',
             '|---|--:|--:|--:|--:|--:|--:|']
    for r in results:
        lines.append(f'| {r.method} | {_fmt_count(r.tuned)} | {r.tuned_pct:.2f}% | '
                     f'{_fmt_bytes(r.file_bytes)} | {r.miou:.2f} | {r.aacc:.2f} | '
                     f'{r.train_s:.0f} s |')
    if reference is not None:
        lines.append(f'| *{reference.method}* | - | - | {_fmt_bytes(reference.file_bytes)} | '
                     f'{reference.miou:.2f} | {reference.aacc:.2f} | 0 s |')
    return '\n'.join(lines)


def _write_tables(out_dir: str, results, reference, timings) -> Dict[str, str]:
    paths = {k: osp.join(out_dir, f'table.{k}') for k in ('md', 'csv', 'json')}
    with open(paths['md'], 'w') as f:
        f.write(format_table(results, reference) + '\n')
    fields = ['key', 'method', 'tuned', 'total', 'tuned_pct', 'file_bytes', 'miou', 'aacc',
              'train_s', 'test_s']
    with open(paths['csv'], 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in list(results) + ([reference] if reference else []):
            writer.writerow([getattr(r, k) if k != 'tuned_pct' else round(r.tuned_pct, 4)
                             for k in fields])
    with open(paths['json'], 'w') as f:
        json.dump(dict(rows=[dict(asdict(r), tuned_pct=r.tuned_pct) for r in results],
                       reference=asdict(reference) if reference else None,
                       timings_s=timings), f, indent=2)
    return paths


# --------------------------------------------------------------------- figures
def _palette(task: str) -> np.ndarray:
    import vpt_seg  # noqa: F401
    from mmseg.datasets import ADE20KDataset
    full = ADE20KDataset.METAINFO['palette']
    return np.array([full[k - 1] for k in TASK_CLASSES[task]] + [[0, 0, 0]], np.uint8)


def _class_names(task: str) -> List[str]:
    from mmseg.datasets import ADE20KDataset
    return [ADE20KDataset.METAINFO['classes'][k - 1].strip() for k in TASK_CLASSES[task]]


def plot_tradeoff(results: Sequence[RowResult], reference: Optional[RowResult],
                  path: str) -> str:
    """mIoU against tuned parameters (log x), one marker per row, as in the VPT paper."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.4, 4.0), dpi=110)
    colours = plt.get_cmap('tab10')
    for i, r in enumerate(results):
        marker = '*' if r.key.startswith('vpt') else 'o'
        ax.scatter(r.tuned, r.miou, s=180 if marker == '*' else 80, marker=marker,
                   color=colours(i), edgecolor='black', linewidth=0.5, zorder=3,
                   label=f'{r.method}: {r.miou:.1f} ({r.tuned_pct:.1f}% tuned)')
    if reference is not None:  # far below; named in the legend, not drawn to scale
        ax.plot([], [], ' ', label=f'{reference.method}: {reference.miou:.1f}')
    ax.set_xscale('log')
    ax.set_xlabel('tuned parameters (log scale)')
    ax.set_ylabel('target mIoU (%)')
    ax.set_title('Transfer to the synthetic target task (tiny ViT, SETR-PUP)', fontsize=10)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8, loc='center left', bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_predictions(results: Sequence[RowResult], data_root: str, path: str,
                     num_show: int = 4, task: str = 'target') -> str:
    """Validation images, ground truth and each row's prediction side by side."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from PIL import Image

    palette = _palette(task)
    lut = np.full(256, len(palette) - 1, np.int64)  # everything else: black (ignored)
    for new_id, ade_id in enumerate(TASK_CLASSES[task]):
        lut[ade_id] = new_id
    names = sorted(glob.glob(osp.join(data_root, 'images', 'validation', '*.jpg')))[:num_show]
    cols = ['image', 'ground truth'] + [r.method for r in results]
    fig, axes = plt.subplots(len(names), len(cols), squeeze=False,
                             figsize=(1.35 * len(cols), 1.4 * len(names) + 0.7), dpi=110)
    for i, img_path in enumerate(names):
        base = osp.splitext(osp.basename(img_path))[0]
        gt = np.asarray(Image.open(osp.join(data_root, 'annotations', 'validation',
                                            base + '.png')))
        panels = [np.asarray(Image.open(img_path).convert('RGB')), palette[lut[gt]]]
        for r in results:
            pred = np.asarray(Image.open(osp.join(r.pred_dir, base + '.png'))).astype(int) - 1
            panels.append(palette[np.where((pred >= 0) & (pred < len(palette) - 1), pred,
                                           len(palette) - 1)])
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel, interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=8)
    handles = [Patch(color=palette[k] / 255, label=n) for k, n in enumerate(_class_names(task))]
    handles.append(Patch(color='black', label='ignored'))
    fig.legend(handles=handles, loc='lower center', ncol=len(handles), fontsize=7,
               frameon=False, handlelength=1.2, columnspacing=0.8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------ study
def run_study(settings: StudySettings) -> Dict:
    """Run the whole study; returns ``{'rows': [...], 'reference': ..., 'files': ...}``.

    Raises:
        ValueError: an unknown row key.
        RuntimeError: a tool run failed (its log tail is in the message).
    """
    unknown = [r for r in settings.rows if r not in ROWS]
    if unknown:
        raise ValueError(f'unknown rows {unknown}; choose from {list(ROWS)}')
    out = osp.abspath(settings.out_dir)
    os.makedirs(out, exist_ok=True)
    timings = OrderedDict()
    t_start = time.perf_counter()

    # 1. data
    t = time.perf_counter()
    source_root = make_ade20k(osp.join(out, 'data', 'source'), num_train=settings.num_source,
                              num_val=settings.num_val, task='source', seed=settings.seed)
    target_root = make_ade20k(osp.join(out, 'data', 'target'), num_train=settings.num_target,
                              num_val=settings.num_val, task='target', seed=settings.seed)
    timings['data'] = time.perf_counter() - t
    _log(f'data: {settings.num_source} source / {settings.num_target} target training '
         f'images, {settings.num_val} validation each ({timings["data"]:.1f} s)')

    # 2. pretraining on the source task, full fine-tuning from scratch
    pre_dir = osp.join(out, 'pretrain')
    os.makedirs(pre_dir, exist_ok=True)
    seed_opt = [f'randomness.seed={settings.seed}']
    timings['pretrain'] = _run_tool(
        settings, 'train.py',
        [osp.join(settings.config_dir, 'pretrain_source.py'), '--work-dir', pre_dir,
         '--cfg-options'] + _data_options(source_root)
        + _schedule_options(settings.pretrain_iters) + seed_opt,
        osp.join(out, 'pretrain.log'))
    pretrained = export_backbone(_last_checkpoint(pre_dir),
                                 osp.join(pre_dir, 'vit-tiny_source.pth'))
    source_miou = _val_metrics(pre_dir).get('mIoU', float('nan'))
    _log(f'pretrain: source mIoU {source_miou:.2f}, backbone saved to {pretrained} '
         f'({timings["pretrain"]:.1f} s)')

    # 3. Table-3 rows on the target task
    common = _data_options(target_root) + [
        f'model.backbone.init_cfg.checkpoint={pretrained}'] + seed_opt
    results = []
    for key in settings.rows:
        cfg_path = osp.join(settings.config_dir, f'{key}.py')
        work = osp.join(out, 'rows', key)
        os.makedirs(work, exist_ok=True)
        train_s = _run_tool(settings, 'train.py',
                            [cfg_path, '--work-dir', work, '--cfg-options']
                            + common + _schedule_options(settings.iters),
                            osp.join(work, 'train.log'))
        ckpt = _last_checkpoint(work)
        results.append(_evaluate(settings, key, ROWS[key], cfg_path, ckpt, work, common,
                                 train_s))
        r = results[-1]
        timings[key] = r.train_s + r.test_s
        _log(f'{r.method:<12} mIoU {r.miou:6.2f}  tuned {_fmt_count(r.tuned):>7} '
             f'({r.tuned_pct:5.2f}%)  file {_fmt_bytes(r.file_bytes):>9}  '
             f'train {r.train_s:5.1f} s  test {r.test_s:4.1f} s')

    # 4. reference: the head-only model with its head at initialisation
    work = osp.join(out, 'rows', UNTRAINED)
    os.makedirs(work, exist_ok=True)
    head_cfg = osp.join(settings.config_dir, 'head.py')
    ckpt = save_untrained(head_cfg, common, osp.join(work, 'untrained.pth'), settings.seed)
    reference = _evaluate(settings, UNTRAINED, 'Untrained head', head_cfg, ckpt, work,
                          common, 0.0)
    timings[UNTRAINED] = reference.test_s
    _log(f'reference: untrained head mIoU {reference.miou:.2f}')

    # 5. outputs
    t = time.perf_counter()
    files = _write_tables(out, results, reference, timings)
    files['tradeoff'] = plot_tradeoff(results, reference, osp.join(out, 'miou_vs_params.png'))
    files['predictions'] = plot_predictions(results, target_root,
                                            osp.join(out, 'predictions.png'), settings.num_show)
    timings['figures'] = time.perf_counter() - t
    timings['total'] = time.perf_counter() - t_start
    with open(files['json']) as f:
        summary = json.load(f)
    summary.update(timings_s=timings, source_miou=source_miou)
    with open(files['json'], 'w') as f:
        json.dump(summary, f, indent=2)

    print()
    print(format_table(results, reference))
    print()
    print('stage timings: ' + ', '.join(f'{k} {v:.1f} s' for k, v in timings.items()))
    for name, path in files.items():
        print(f'{name}: {path}')
    return dict(rows=results, reference=reference, files=files, timings=timings,
                source_miou=source_miou)


def _evaluate(settings, key, method, cfg_path, ckpt, work, options, train_s) -> RowResult:
    test_dir = osp.join(work, 'test')
    pred_dir = osp.join(work, 'pred')
    test_s = _run_tool(settings, 'test.py',
                       [cfg_path, ckpt, '--work-dir', test_dir, '--out', pred_dir,
                        '--cfg-options'] + options, osp.join(work, 'test.log'))
    metrics = _test_metrics(test_dir)
    tuned, total = _count(cfg_path, options)
    return RowResult(key=key, method=method, tuned=tuned, total=total,
                     file_bytes=osp.getsize(ckpt), miou=float(metrics['mIoU']),
                     aacc=float(metrics['aAcc']), train_s=train_s, test_s=test_s,
                     checkpoint=ckpt, pred_dir=pred_dir)
