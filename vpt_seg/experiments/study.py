"""The paper's Table 3 in miniature: a transfer study that runs on a laptop CPU.

No pretrained weights or datasets can be downloaded, so the study makes both:

1. synthetic source and target tasks in the ADE20k layout
   (:func:`vpt_seg.datasets.make_ade20k`);
2. a "pretrained" tiny ViT, made as the paper's ViT-L was: trained from scratch for
   image-level recognition (multi-label tags of the source images, a linear head on the
   [CLS] embedding; ``configs/study/pretrain_source.py`` through ``tools/train.py``),
   its backbone saved as an MMSeg-format checkpoint;
3. one run per Table-3 row on the target segmentation task (``configs/study/<row>.py``
   through ``tools/train.py``, evaluated by ``tools/test.py``), plus a reference: the
   same model with a head that was never trained, evaluated the same way. With
   ``lrs``, every row is trained once per learning rate and its best run is kept.

It then writes a table (Markdown, CSV, JSON), mIoU against tuned parameters, and the
predictions of every row on a few validation images. Every training and test run is the
normal tool (``python tools/train.py CONFIG ...``) with the normal configs, run as a
forked child of the study (:class:`~vpt_seg.engine.forked.ForkedPopen`: the same command
without its 10 s of start-up), ``jobs`` at a time (:class:`Slots`); this module only
passes data and checkpoint paths (and, for short runs, iteration counts) through
``--cfg-options``. Three backbone families: a tiny ViT and a tiny DINOv2-reg pretrained on
the source tags, and the tiny CLIP of CoOp's part (its segmentation rows).

Thread policy: every tool run runs torch with ``threads`` intra-op threads (1 by
default), set through ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` in its environment, which
torch reads when it starts (a forked run sets it from there). One thread keeps the
study's time when something else uses the CPU (torch's default, one thread per core,
oversubscribes a busy machine and slows down many times over), and it pins the result:
the float order of reductions, and so the trained weights and every mIoU, depend on the
thread count (docs/study.md).
"""
import argparse
import glob
import heapq
import itertools
import json
import os
import os.path as osp
import re
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import config_paths
from ..datasets.synthetic import TASK_CLASSES, make_ade20k
from ..engine.forked import ForkedPopen, torch_in_this_process, warm_tool_imports
from ..engine.logs import quiet_logger
from ..formats.tables import csv_text
from ..tuners.tuning import format_count
from .clip_pretrain import ClipPretrainSettings, pretrain_tiny_clip_once

__all__ = ['ROWS', 'StudySettings', 'run_study', 'format_table']

#: The folder ``vpt_seg`` is imported from (a clone or site-packages): tool subprocesses
#: import the same package.
_IMPORT_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

#: Table-3 rows: config name in configs/study -> method name in the table.
ROWS = OrderedDict([
    ('head', 'Head only'),
    ('bias', 'Bias'),
    ('vpt-shallow', 'VPT-shallow'),
    ('vpt-deep', 'VPT-deep'),
    ('vpt-bias', 'VPT+Bias'),
    ('lora', 'LoRA'),
    ('adaptformer', 'AdaptFormer'),
    ('full', 'Full'),
    ('dinov2/head', 'Head only (DINOv2-reg)'),
    ('dinov2/vpt-deep', 'VPT-deep (DINOv2-reg)'),
    ('clip/linear', 'Linear head (tiny CLIP)'),
    ('clip/text', 'Hand-prompt text head (tiny CLIP)'),
    ('clip/coop', 'CoOp text head (tiny CLIP)'),
    ('clip/vpt-coop', 'VPT-deep + CoOp (tiny CLIP)'),
])
UNTRAINED = 'untrained-head'


@dataclass(frozen=True)
class Family:
    """A backbone family of the study: how it is pretrained and where its file goes.

    Attributes:
        label: Its name in stage names and logs.
        pretrain_config: The pretraining config, relative to ``config_dir``, no ``.py``;
            None: the tiny CLIP of CoOp's part, pretrained contrastively on generated
            captions (:func:`~vpt_seg.experiments.clip_pretrain.pretrain_tiny_clip`).
        work: Pretraining work dir (under ``out_dir``).
        backbone_file: Where the pretrained backbone is saved (under ``out_dir``).
        checkpoint_options: The config keys the target rows read it from; each row gets
            those its config has (a linear head has no text tower to load).
        timm: Saved in timm's layout (``model.safetensors`` of the timm state dict, with
            a hub ``config.json``), else in MMSeg's (``{'state_dict': ...}``).
    """
    label: str
    pretrain_config: Optional[str]
    work: str
    backbone_file: str
    checkpoint_options: Tuple[str, ...]
    timm: bool


#: Row key prefix (``dinov2/head``: family ``dinov2``; no prefix: ``vit``) -> family.
FAMILIES = OrderedDict([
    ('vit', Family('ViT', 'pretrain_source', 'pretrain', 'pretrain/vit-tiny_source.pth',
                   ('model.backbone.init_cfg.checkpoint', ), False)),
    ('dinov2', Family('DINOv2-reg', 'dinov2/pretrain_source', 'pretrain/dinov2',
                      'pretrain/dinov2/model.safetensors', ('model.backbone.checkpoint', ),
                      True)),
    # the CoOp part's CLIP (the same file, pretrained once when both parts run)
    ('clip', Family('tiny CLIP', None, 'coop/tiny_clip',
                    'coop/tiny_clip/open_clip_model.safetensors',
                    ('model.backbone.checkpoint', 'model.decode_head.text_encoder.checkpoint'),
                    False)),
])


def family_of(key: str) -> str:
    """The family of a row key: its ``family/`` prefix, ``vit`` without one."""
    return key.split('/')[0] if '/' in key else 'vit'


@dataclass
class StudySettings:
    """What a study run does. Defaults are the documented study (about 11 min on 2 cores
    with CoOp's part beside it).

    Attributes:
        out_dir: Where data, runs, tables and figures go.
        rows: Keys of :data:`ROWS` to run, in order.
        num_source: Source-task training images.
        num_target: Target-task training images.
        num_val: Validation images per task.
        pretrain_iters: Source pretraining iterations (None: the config's).
        iters: Iterations per target row (None: the configs').
        lrs: Learning rates to try for every row, keeping each row's best run (None: the
            rate in each row's config, which is what this search found; see
            docs/study.md).
        seed: Data and training seed.
        seeds: Training runs per row (and learning rate), with the row seeds ``seed``,
            ``seed + 1``, ...; data and pretraining keep ``seed``. Above 1, each row
            reports the mean over its runs and their spread (std, min-max:
            :func:`aggregate_seeds`); 1 (default) is the single run of before.
        threads: Torch threads per tool subprocess. The published numbers are for 1
            (the default); another count gives other digits (docs/study.md).
        jobs: Tool runs at once (:class:`Slots`, shared with CoOp's part when both run):
            2 (default) fits 2 cores at 1 thread each; a family's rows start when its
            pretraining is done, pretraining first, then the rows. The results do not
            depend on it.
        num_show: Validation images in the predictions figure.
        clip: The tiny CLIP's pretraining, for the ``clip/*`` rows (CoOp's part, when it
            runs beside, must ask for the same).
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
    lrs: Optional[Sequence[float]] = None
    seed: int = 0
    seeds: int = 1
    threads: int = 1
    jobs: int = 2
    num_show: int = 4
    clip: ClipPretrainSettings = field(default_factory=ClipPretrainSettings)
    config_dir: str = osp.join(config_paths.config_dirs(), 'study')
    tools_dir: str = config_paths.tools_dir()


@dataclass
class RowResult:
    key: str
    method: str
    tuned: int
    total: int
    file_bytes: int
    miou: float
    aacc: float
    lr: float
    train_s: float
    test_s: float
    checkpoint: str = ''
    pred_dir: str = ''
    extra: Dict = field(default_factory=dict)

    @property
    def tuned_pct(self) -> float:
        return 100.0 * self.tuned / self.total


def aggregate_seeds(runs: Sequence[RowResult]) -> RowResult:
    """One table row from a row's runs over seeds (the same row and learning rate).

    mIoU, aAcc and the times are the means over the runs; ``extra`` gains ``seeds`` (each
    run's seed, from its ``extra['seed']``), ``miou_runs`` (each run's mIoU), and
    ``miou_std`` (sample standard deviation), ``miou_min`` and ``miou_max``. Parameters
    and the file size are the first run's (the same for every seed), and so are the
    checkpoint and predictions the figures show. A single run is returned as it is.
    """
    from dataclasses import replace
    runs = list(runs)
    if not runs:
        raise ValueError('aggregate_seeds: no runs to aggregate')
    if len(runs) == 1:
        return runs[0]
    if len({(r.key, r.lr) for r in runs}) != 1:
        raise ValueError(f'aggregate_seeds: runs of different rows or rates '
                         f'{sorted({(r.key, r.lr) for r in runs})}; give one row\'s runs')
    mious = np.array([r.miou for r in runs], np.float64)
    first = runs[0]
    extra = dict(first.extra, seeds=[r.extra.get('seed') for r in runs],
                 miou_runs=mious.tolist(), miou_std=float(mious.std(ddof=1)),
                 miou_min=float(mious.min()), miou_max=float(mious.max()))
    extra.pop('seed', None)
    return replace(first, miou=float(mious.mean()),
                   aacc=float(np.mean([r.aacc for r in runs])),
                   train_s=float(np.mean([r.train_s for r in runs])),
                   test_s=float(np.mean([r.test_s for r in runs])), extra=extra)


# ------------------------------------------------------------------ running tools
def _log(msg: str):
    # one write per line: the two parts log from threads side by side
    print(f'[study] {msg}\n', end='', flush=True)


def _schedule_options(iters: Optional[int]) -> List[str]:
    if iters is None:
        return []
    return [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'param_scheduler.1.end={iters}', f'default_hooks.checkpoint.interval={iters}']


def _data_options(data_root: str) -> List[str]:
    return [f'{loader}.dataset.data_root={data_root}'
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]


#: How much of a failed tool run's log its error quotes (the end, where the traceback is).
LOG_TAIL_CHARS = 3000

#: MMEngine's training log line: ``Iter(train) [ 100/1500]  ... eta: 0:01:23 ...``.
_ITER_LINE = re.compile(
    r'Iter\(train\) \[\s*(\d+)/(\d+)\].*?eta: (?:(\d+) days?, )?(\d+):(\d+):(\d+)')


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


class Progress:
    """Progress lines with ETAs while the study's tool runs are silent (they log to files).

    Every training run's log is watched for MMEngine's ``Iter(train) [i/n] ... eta:``
    lines; each new one prints the stage, its iteration and ETA, and an ETA for the whole
    study (the Table 3 part): the stage's own, plus the iterations still planned at the
    rate measured so far, shared by ``jobs`` runs at once.

    Args:
        planned: ``{stage: iterations}`` of every training run, in order.
        jobs: Runs at once.
    """

    def __init__(self, planned: Dict[str, int], jobs: int = 1):
        self.planned = OrderedDict(planned)
        self.jobs = jobs
        self.done: set = set()
        self.seconds = 0.0   # training time of finished stages
        self.iters = 0       # and their iterations

    def rate(self) -> Optional[float]:
        return self.seconds / self.iters if self.iters else None

    def remaining_after(self, stage: str, stage_rate: Optional[float]) -> float:
        rate = self.rate() or stage_rate or 0.0
        return rate / self.jobs * sum(n for s, n in self.planned.items()
                                      if s != stage and s not in self.done)

    def update(self, stage: str, it: int, total: int, eta_s: float, elapsed: float):
        stage_rate = elapsed / it if it else None
        study = eta_s + self.remaining_after(stage, stage_rate)
        _log(f'{stage}: iter {it}/{total}, eta {_fmt_eta(eta_s)}; whole study eta '
             f'~{_fmt_eta(study)}')

    def finish(self, stage: str, seconds: float):
        if stage in self.planned and stage not in self.done:
            self.done.add(stage)
            self.seconds += seconds
            self.iters += self.planned[stage]


THREAD_VARS = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')


def tool_env(threads: int) -> Dict[str, str]:
    """The environment of a tool subprocess: this one, with the package on the path and
    torch pinned to ``threads`` intra-op threads (whatever the caller's environment says)."""
    env = dict(os.environ)
    env['PYTHONPATH'] = _IMPORT_ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('PYTHONWARNINGS', 'ignore')
    env.update({var: str(threads) for var in THREAD_VARS})
    return env


#: /proc/cpuinfo flags MKL and oneDNN choose their kernels by (besides every avx512* and
#: amx* flag, which :func:`machine_info` keeps too).
ISA_FLAGS = ('sse4_2', 'avx', 'avx2', 'fma', 'f16c', 'avx_vnni')


def machine_info(cpuinfo: str = '/proc/cpuinfo') -> Dict[str, object]:
    """What a study's digits depend on besides the code, the seeds and the thread count:
    the CPU model and the instruction-set extensions that MKL and oneDNN pick their kernels
    by, torch's CPU capability level, and the torch, MKL and oneDNN versions.

    Args:
        cpuinfo: Linux's CPU description (elsewhere: the model from ``platform``, no
            flags).

    Returns:
        ``{'cpu_model', 'cpu_flags', 'cpu_capability', 'torch', 'mkl', 'onednn',
        'cpu_count'}``; what this machine does not tell is None (``cpu_flags``: []).
    """
    import platform
    model, flags = None, []
    try:
        with open(cpuinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = (part.strip() for part in line.partition(':'))
        if key == 'model name' and model is None:
            model = value
        elif key == 'flags' and not flags:
            flags = sorted(f for f in set(value.split())
                           if f in ISA_FLAGS or f.startswith(('avx512', 'amx')))
    config = torch.__config__.show()
    mkl = re.search(r'Math Kernel Library Version ([\d.]+)', config)
    onednn = re.search(r'(?:oneDNN|MKL-DNN) v([\d.]+)', config)
    return dict(cpu_model=model or platform.processor() or None, cpu_flags=flags,
                cpu_capability=torch.backends.cpu.get_cpu_capability(),
                torch=torch.__version__,
                mkl=mkl.group(1) if mkl and torch.backends.mkl.is_available() else None,
                onednn=onednn.group(1) if onednn and torch.backends.mkldnn.is_available()
                else None,
                cpu_count=os.cpu_count())


def machine_line(machine: Dict) -> str:
    """One line naming what :func:`machine_info` found and the thread count."""
    flags = ' '.join(machine.get('cpu_flags') or []) or 'unknown'
    return (f'{machine.get("cpu_model") or "unknown CPU"} ({machine.get("cpu_count")} '
            f'cores; flags: {flags}; torch CPU capability {machine.get("cpu_capability")}); '
            f'torch {machine.get("torch")}, MKL {machine.get("mkl")}, oneDNN '
            f'{machine.get("onednn")}; {machine.get("threads")} torch thread(s) per tool run')


class Slots:
    """At most ``n`` tool runs at once, in the study's order: a waiting run starts when a
    slot is free, the lowest ``priority`` first (pretraining before rows, rows before
    CoOp's short runs, so that the long ones do not end the study alone), then in the
    order they asked.

    Args:
        n: Runs at once (the study's ``jobs``).
    """

    def __init__(self, n: int):
        self.n, self.busy, self.waiting = n, 0, []
        self.cond = threading.Condition()
        self.tickets = itertools.count()

    @contextmanager
    def hold(self, priority: int = 1):
        with self.cond:
            ticket = (priority, next(self.tickets))
            heapq.heappush(self.waiting, ticket)
            while self.busy >= self.n or self.waiting[0] != ticket:
                self.cond.wait()
            heapq.heappop(self.waiting)
            self.busy += 1
        try:
            yield
        finally:
            with self.cond:
                self.busy -= 1
                self.cond.notify_all()


_SLOTS: Dict[int, Slots] = {}
_SLOTS_LOCK = threading.Lock()


def tool_slots(jobs: int) -> Slots:
    """This process's :class:`Slots` for ``jobs`` runs at once: the Table 3 part and CoOp's
    part share them when they run side by side."""
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(jobs, Slots(jobs))


#: When a run asks for a slot: pretraining, Table 3 rows and their tests, CoOp's runs.
PRIORITY_PRETRAIN, PRIORITY_ROW, PRIORITY_SHORT = 0, 1, 2


def _run_tool(settings: StudySettings, tool: str, args: List[str], log_path: str,
              progress: Optional[Progress] = None, stage: str = '',
              priority: int = PRIORITY_ROW) -> float:
    """Run ``tools/<tool>`` as a command (output to ``log_path``), in one of the study's
    slots (:func:`tool_slots`); returns its seconds from start to exit.

    The command runs in a forked child of this process
    (:class:`~vpt_seg.engine.forked.ForkedPopen`): the same run as ``python tools/<tool>``
    without each run's start-up (about 10 s of CPU: Python, torch, MMEngine, MMSeg).
    With ``progress``, the log is watched and a progress line printed for every
    iteration line MMEngine writes (``default_hooks.logger.interval``)."""
    env = tool_env(settings.threads)
    script = osp.join(settings.tools_dir, tool)
    cmd = [sys.executable, script] + args
    with tool_slots(settings.jobs).hold(priority):
        seen = 0
        with open(log_path, 'w') as log:
            start = time.perf_counter()
            proc = ForkedPopen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                               cwd=osp.dirname(osp.abspath(log_path)))
            while True:
                try:
                    proc.wait(timeout=1.0)
                    finished = True
                except subprocess.TimeoutExpired:
                    finished = False
                if progress is not None:
                    with open(log_path) as f:
                        found = _ITER_LINE.findall(f.read())
                    for it, total, days, h, m, sec in found[seen:]:
                        eta = int(days or 0) * 86400 + int(h) * 3600 + int(m) * 60 + int(sec)
                        progress.update(stage, int(it), int(total), eta,
                                        time.perf_counter() - start)
                    seen = len(found)
                if finished:
                    break
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        with open(log_path) as log:
            tail = log.read()[-LOG_TAIL_CHARS:]
        raise RuntimeError(f'{" ".join(cmd)} failed (exit {proc.returncode}); log '
                           f'{log_path} ends with:\n{tail}')
    if progress is not None:
        progress.finish(stage, seconds)
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


def _val_metrics(work_dir: str, key: str) -> Dict[str, float]:
    """The last validation metrics with ``key`` that tools/train.py logged."""
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', '*.json')))[::-1]:
        with open(path) as f:
            lines = [json.loads(line) for line in f if f'"{key}"' in line]
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


def _count(cfg):
    from ..tuners.tuning import count_parameters
    with torch_in_this_process():
        model = _build_model(cfg)
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


def export_timm_backbone(checkpoint: str, out_path: str, model_name: str) -> str:
    """Save the timm model inside a checkpoint of a ``PromptedTimmViT`` model
    (``backbone.vit.*``) in timm's own layout: ``out_path`` (``model.safetensors``) and a
    hub ``config.json`` beside it, the file a ``PromptedTimmViT``'s ``checkpoint=`` loads."""
    from safetensors.torch import save_file
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict']
    prefix = 'backbone.vit.'
    vit = {k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}
    if not vit:
        raise ValueError(f'{checkpoint} holds no {prefix}* weights (not a PromptedTimmViT '
                         'model trained with freeze=False?)')
    from ..formats.outputs import atomic_write
    os.makedirs(osp.dirname(out_path), exist_ok=True)
    with atomic_write(out_path) as tmp:  # a hub folder with the usual file mode
        save_file(vit, tmp)
    with atomic_write(osp.join(osp.dirname(out_path), 'config.json')) as tmp, \
            open(tmp, 'w') as f:
        json.dump(dict(architecture=model_name.split('.')[0], num_classes=0), f, indent=2)
    return out_path


def save_untrained(cfg_path: str, options: List[str], out_path: str, seed: int) -> str:
    """A task checkpoint of ``cfg_path``'s model straight after initialisation: the
    pretrained frozen backbone and a head that was never trained."""
    with torch_in_this_process(), quiet_logger():  # MMEngine's init report is long
        torch.manual_seed(seed)
        model = _build_model(_load_cfg(cfg_path, options))
        model.init_weights()
        torch.save({'meta': {}, 'state_dict': model.state_dict()}, out_path)
    return out_path


def _fmt_bytes(n: int) -> str:
    return f'{n / 2**20:.2f} MiB' if n >= 2**20 else f'{n / 2**10:.0f} KiB'


def _seeds_of(results: Sequence[RowResult]) -> int:
    """How many seeds the rows were run with (1: single runs)."""
    return max([len(r.extra.get('seeds', ())) for r in results] + [1])


def _miou_cell(r: RowResult) -> str:
    if 'miou_std' not in r.extra:
        return f'{r.miou:.2f}'
    return (f'{r.miou:.2f} ± {r.extra["miou_std"]:.2f} '
            f'({r.extra["miou_min"]:.2f}-{r.extra["miou_max"]:.2f})')


def format_table(results: Sequence[RowResult], reference: Optional[RowResult] = None) -> str:
    """The study table in Markdown. Rows run over several seeds (:func:`aggregate_seeds`)
    show the mean mIoU ± its standard deviation and (min-max) over the runs."""
    seeds = _seeds_of(results)
    miou = 'mIoU' if seeds == 1 else f'mIoU (mean ± std (min-max), {seeds} seeds)'
    lines = [f'| Method | Tuned params | % of model | Task file | {miou} | aAcc | LR | '
             'Train time |',
             '|---|--:|--:|--:|--:|--:|--:|--:|']
    for r in results:
        lines.append(f'| {r.method} | {format_count(r.tuned)} | {r.tuned_pct:.2f}% | '
                     f'{_fmt_bytes(r.file_bytes)} | {_miou_cell(r)} | {r.aacc:.2f} | '
                     f'{r.lr:g} | {r.train_s:.0f} s |')
    if reference is not None:
        lines.append(f'| *{reference.method}* | - | - | {_fmt_bytes(reference.file_bytes)} | '
                     f'{reference.miou:.2f} | {reference.aacc:.2f} | - | 0 s |')
    return '\n'.join(lines)


def _write_tables(out_dir: str, results, reference, timings) -> Dict[str, str]:
    paths = {k: osp.join(out_dir, f'table.{k}') for k in ('md', 'csv', 'json')}
    with open(paths['md'], 'w') as f:
        f.write(format_table(results, reference) + '\n')
    fields = ['key', 'method', 'tuned', 'total', 'tuned_pct', 'file_bytes', 'miou', 'aacc',
              'lr', 'train_s', 'test_s']
    spread = [] if _seeds_of(results) == 1 else ['miou_std', 'miou_min', 'miou_max', 'seeds']
    rows = [[getattr(r, k) if k != 'tuned_pct' else round(r.tuned_pct, 4) for k in fields]
            + [len(r.extra.get(k, [None])) if k == 'seeds' else r.extra.get(k, '')
               for k in spread]
            for r in list(results) + ([reference] if reference else [])]
    fields = fields + spread
    with open(paths['csv'], 'w', newline='') as f:
        f.write(csv_text([fields] + rows))
    with open(paths['json'], 'w') as f:
        json.dump(dict(rows=[dict(asdict(r), tuned_pct=r.tuned_pct) for r in results],
                       reference=asdict(reference) if reference else None,
                       timings_s=timings), f, indent=2)
    return paths


# --------------------------------------------------------------------- figures
def _palette(task: str) -> np.ndarray:
    """One colour per class of ``task`` plus black for ignored pixels. ADE20k's own palette
    gives some of these classes near-identical colours (painting/shelf, car/sofa), so the
    figure uses matplotlib's qualitative ``tab10`` instead."""
    from matplotlib import colormaps
    colours = colormaps['tab10'].colors[:len(TASK_CLASSES[task])]
    return np.array([[round(255 * c) for c in rgb] for rgb in colours] + [[0, 0, 0]], np.uint8)


def _class_names(task: str) -> List[str]:
    from mmseg.datasets import ADE20KDataset
    return [ADE20KDataset.METAINFO['classes'][k - 1].strip() for k in TASK_CLASSES[task]]


def plot_tradeoff(results: Sequence[RowResult], reference: Optional[RowResult],
                  path: str) -> str:
    """mIoU against tuned parameters (log x), one marker per row, as in the VPT paper."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.4, 4.0 if len(results) <= 10 else 4.8), dpi=110)
    colours = plt.get_cmap('tab10' if len(results) <= 10 else 'tab20')
    for i, r in enumerate(results):
        kind = r.key.split('/')[-1]
        marker = ('*' if kind.startswith('vpt') else 's' if kind in ('lora', 'adaptformer')
                  else 'D' if kind in ('text', 'coop') else 'o')
        ax.scatter(r.tuned, r.miou, s=180 if marker == '*' else 80, marker=marker,
                   color=colours(i), edgecolor='black', linewidth=0.5, zorder=3,
                   label=f'{r.method}: {r.miou:.1f} ({r.tuned_pct:.1f}% tuned)')
    if reference is not None:  # far below; named in the legend, not drawn to scale
        ax.plot([], [], ' ', label=f'{reference.method}: {reference.miou:.1f}')
    ax.set_xscale('log')
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_count(int(round(x)))))
    ax.xaxis.set_minor_formatter(NullFormatter())
    low, high = ax.get_xlim()
    ax.set_xticks([t for t in (1e3, 3e3, 1e4, 2e4, 3e4, 5e4, 1e5, 2e5, 5e5, 1e6, 1e7, 1e8)
                   if low <= t <= high] or ax.get_xticks())
    ax.set_xlabel('tuned parameters (log scale)')
    ax.set_ylabel('target mIoU (%)')
    families = [f.label for f in FAMILIES.values()
                if any(FAMILIES[family_of(r.key)] is f for r in results)]
    ax.set_title('Tiny ViT pretrained on source tags, adapted to target segmentation'
                 if families == ['ViT'] else 'Adapted to target segmentation:\n'
                 + ', '.join(families) + ' backbones', fontsize=10)
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
    import textwrap
    cols = ['image', 'ground truth'] + [textwrap.fill(r.method, 15) for r in results]
    fig, axes = plt.subplots(len(names), len(cols), squeeze=False,
                             figsize=(1.2 * len(cols), 1.3 * len(names) + 1.0), dpi=110)
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
                ax.set_title(cols[j], fontsize=7)
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

    The stages, in order: synthetic data (:func:`_make_data`); per family, side by side
    with ``jobs=2``, pretraining on the source tags and every Table-3 row on the target
    task (:func:`_run_families`); the untrained-head reference (:func:`_run_reference`);
    tables and figures (:func:`_write_outputs`).

    Raises:
        ValueError: an unknown row key, fewer iterations than the warm-up, or a thread
            count below 1.
        RuntimeError: a tool run failed (its log tail is in the message).
    """
    _check_settings(settings)
    out = osp.abspath(settings.out_dir)
    os.makedirs(out, exist_ok=True)
    progress = Progress(_planned_iterations(settings), settings.jobs)
    timings = OrderedDict()
    load_start = os.getloadavg()[0]
    _log(f'{settings.threads} torch thread(s) per tool run; load average {load_start:.2f} '
         f'on {os.cpu_count()} cores')
    t_start = time.perf_counter()
    warm_tool_imports(*(osp.join(settings.tools_dir, t) for t in ('train.py', 'test.py')))
    source_root, target_root = _make_data(settings, out, timings)
    done = _run_families(settings, out, source_root, target_root, progress, timings)
    found = {k: r for d in done.values() for k, r in d['results'].items()}
    results = [found[k] for k in settings.rows]
    searched = OrderedDict((k, d['searched'][k]) for k in settings.rows
                           for d in done.values() if k in d['searched'])
    source_maps = OrderedDict((f, d['source_map']) for f, d in done.items() if f != 'clip')
    clip = done['clip']['clip'] if 'clip' in done else None
    reference = _run_reference(settings, out, target_root, done, timings)
    machine = dict(machine_info(), threads=settings.threads, jobs=settings.jobs,
                   seeds=settings.seeds, load_avg_1min_start=load_start)
    files = _write_outputs(settings, out, results, reference, target_root, timings, t_start,
                           dict(source_map=next(iter(source_maps.values()), None),
                                source_maps=source_maps, lr_search=searched, tiny_clip=clip),
                           machine)
    _print_summary(results, reference, files, timings, machine)
    return dict(rows=results, reference=reference, files=files, timings=timings,
                source_map=next(iter(source_maps.values()), None), source_maps=source_maps,
                lr_search=searched, machine=machine)


def _check_settings(settings: StudySettings):
    """Refuse unknown rows, thread or job counts below 1, and schedules shorter than their
    warm-up, before anything runs."""
    unknown = [r for r in settings.rows if r not in ROWS]
    if unknown:
        raise ValueError(f'unknown rows {unknown}; choose from {list(ROWS)}')
    if not isinstance(settings.threads, int) or settings.threads < 1:
        raise ValueError(f'threads={settings.threads!r}: give a whole number of torch threads '
                         'per tool run, at least 1 (the study\'s numbers are for 1)')
    if not isinstance(settings.jobs, int) or settings.jobs < 1:
        raise ValueError(f'jobs={settings.jobs!r}: give a whole number of families to run at '
                         'once, at least 1')
    if not isinstance(settings.seeds, int) or settings.seeds < 1:
        raise ValueError(f'seeds={settings.seeds!r}: give a whole number of training runs per '
                         'row, at least 1 (1: one run, the default)')
    for name, iters, cfg_name in (('pretrain_iters', settings.pretrain_iters, 'pretrain_source'),
                                  ('iters', settings.iters, 'head')):
        warmup = _load_cfg(osp.join(settings.config_dir, f'{cfg_name}.py'),
                           []).param_scheduler[0]['end']
        if iters is not None and iters <= warmup:
            raise ValueError(f'{name}={iters}: the schedule warms up for {warmup} iterations '
                             f'(configs/study/{cfg_name}.py); give more than that')


def _make_data(settings: StudySettings, out: str, timings: Dict) -> Tuple[str, str]:
    """The synthetic source and target datasets (ADE20k layout); their roots."""
    t = time.perf_counter()
    source_root = make_ade20k(osp.join(out, 'data', 'source'), num_train=settings.num_source,
                              num_val=settings.num_val, task='source', seed=settings.seed)
    target_root = make_ade20k(osp.join(out, 'data', 'target'), num_train=settings.num_target,
                              num_val=settings.num_val, task='target', seed=settings.seed)
    timings['data'] = time.perf_counter() - t
    _log(f'data: {settings.num_source} source / {settings.num_target} target training '
         f'images, {settings.num_val} validation each ({timings["data"]:.1f} s)')
    return source_root, target_root


def _run_families(settings: StudySettings, out: str, source_root: str, target_root: str,
                  progress: Progress, timings: Dict) -> Dict[str, Dict]:
    """Every family's pretraining (:func:`_pretrain_family`) and every row
    (:func:`_run_row`), ``jobs`` tool runs at once (:func:`tool_slots`): each row starts
    when its family's backbone is saved. Returns ``{family: {'results', 'searched',
    'source_map', 'pretrained'}}`` in the order of :data:`FAMILIES`."""
    from concurrent.futures import ThreadPoolExecutor
    families = _families(settings.rows)
    with ThreadPoolExecutor(max_workers=len(families) + len(settings.rows)) as pool:
        pretrained = OrderedDict((f, pool.submit(_pretrain_family, settings, f, out,
                                                 source_root, progress, timings))
                                 for f in families)
        rows = OrderedDict((k, pool.submit(_run_row, settings, k, pretrained[family_of(k)],
                                           out, target_root, progress, timings))
                           for k in settings.rows)
        done = OrderedDict((f, dict(fut.result(), results=OrderedDict(), searched=OrderedDict()))
                           for f, fut in pretrained.items())
        for key, fut in rows.items():
            result, searched = fut.result()
            done[family_of(key)]['results'][key] = result
            if searched:
                done[family_of(key)]['searched'][key] = searched
    return done


def _checkpoint_options(family: str, cfg_path: str, pretrained: str) -> List[str]:
    """``KEY=FILE`` for each of the family's checkpoint keys that the row's config has."""
    cfg = _load_cfg(cfg_path, [])
    found = []
    for key in FAMILIES[family].checkpoint_options:
        node = cfg
        for part in key.split('.'):
            node = node.get(part) if hasattr(node, 'get') else None
        if node is not None:
            found.append(f'{key}={pretrained}')
    if not found:
        raise ValueError(f'{cfg_path} has none of {list(FAMILIES[family].checkpoint_options)}, '
                         f'where the study puts the {FAMILIES[family].label} backbone')
    return found


def _run_reference(settings: StudySettings, out: str, target_root: str,
                   done: Dict[str, Dict], timings: Dict) -> RowResult:
    """The reference row: the head-only model of the first family run (the linear head
    for the tiny CLIP), its head at initialisation."""
    first = next(iter(done))
    work = osp.join(out, 'rows', UNTRAINED)
    os.makedirs(work, exist_ok=True)
    head_cfg = osp.join(settings.config_dir, ('' if first == 'vit' else f'{first}/')
                        + ('head.py' if first != 'clip' else 'linear.py'))
    common = _row_common(settings, target_root, first, head_cfg, done[first]['pretrained'])
    ckpt = save_untrained(head_cfg, common, osp.join(work, 'untrained.pth'), settings.seed)
    reference = _evaluate(settings, UNTRAINED, 'Untrained head', head_cfg, ckpt, work,
                          common, 0.0)
    timings[UNTRAINED] = reference.test_s
    _log(f'reference: untrained head mIoU {reference.miou:.2f}')
    return reference


def _write_outputs(settings: StudySettings, out: str, results, reference, target_root: str,
                   timings: Dict, t_start: float, extra: Dict, machine: Dict) -> Dict[str, str]:
    """table.{md,csv,json} and the two figures; the JSON gains the timings, ``extra`` and
    ``machine`` (which gains the end load average). Returns the files."""
    t = time.perf_counter()
    files = _write_tables(out, results, reference, timings)
    files['tradeoff'] = plot_tradeoff(results, reference, osp.join(out, 'miou_vs_params.png'))
    files['predictions'] = plot_predictions(results, target_root,
                                            osp.join(out, 'predictions.png'), settings.num_show)
    timings['figures'] = time.perf_counter() - t
    timings['total'] = time.perf_counter() - t_start
    with open(files['json']) as f:
        summary = json.load(f)
    machine.update(load_avg_1min_end=os.getloadavg()[0])
    summary.update(timings_s=timings, **extra, machine=machine)
    with open(files['json'], 'w') as f:
        json.dump(summary, f, indent=2)
    return files


def _print_summary(results, reference, files: Dict[str, str], timings: Dict, machine: Dict):
    print()
    print(format_table(results, reference))
    print()
    print('stage timings: ' + ', '.join(f'{k} {v:.1f} s' for k, v in timings.items()))
    print(f'{machine["threads"]} torch thread(s) per tool run; load average (1 min) '
          f'{machine["load_avg_1min_start"]:.2f} at the start, '
          f'{machine["load_avg_1min_end"]:.2f} at the end, {machine["cpu_count"]} cores')
    print(f'machine: {machine_line(machine)}')
    for name, path in files.items():
        print(f'{name}: {path}')


def _stage_name(key: str, lr: Optional[float], seed: Optional[int] = None) -> str:
    return (ROWS[key] + ('' if lr is None else f' (lr {lr:g})')
            + ('' if seed is None else f' (seed {seed})'))


def _row_seeds(settings: StudySettings) -> List[Optional[int]]:
    """The seeds of each row's runs: [None] for one run at the study's seed (the
    default), else ``seed``, ``seed + 1``, ... (``seeds`` of them)."""
    if settings.seeds == 1:
        return [None]
    return list(range(settings.seed, settings.seed + settings.seeds))


def _pretrain_stage(family: str) -> str:
    return 'pretrain' if family == 'vit' else f'pretrain ({FAMILIES[family].label})'


def _families(rows: Sequence[str]) -> List[str]:
    """The families of ``rows``, in the order of :data:`FAMILIES`."""
    return [f for f in FAMILIES if any(family_of(r) == f for r in rows)]


def _planned_iterations(settings: StudySettings) -> Dict[str, int]:
    """Training iterations of every run the study will make, for the overall ETA."""
    def iters(cfg_name, given):
        if given is not None:
            return given
        return _load_cfg(osp.join(settings.config_dir, f'{cfg_name}.py'), []).train_cfg.max_iters

    planned = OrderedDict()
    for family in _families(settings.rows):
        if FAMILIES[family].pretrain_config is not None:  # the CLIP's logs no MMEngine lines
            planned[_pretrain_stage(family)] = iters(FAMILIES[family].pretrain_config,
                                                     settings.pretrain_iters)
    for key in settings.rows:
        for lr in settings.lrs or [None]:
            for seed in _row_seeds(settings):
                planned[_stage_name(key, lr, seed)] = iters(key, settings.iters)
    return planned


def _pretrain_family(settings: StudySettings, family: str, out: str, source_root: str,
                     progress: Progress, timings: Dict) -> Dict:
    """Pretrain a family's backbone and save it where its rows load it (MMSeg or timm
    layout); the tiny CLIP is pretrained on generated captions instead, once for both
    parts of the study (:func:`~vpt_seg.experiments.clip_pretrain.pretrain_tiny_clip_once`).

    Returns:
        ``{'pretrained': file, 'source_map': source-tag mAP (NaN for the CLIP),
        'clip': the CLIP's pretraining figures (the CLIP only)}``.
    """
    fam = FAMILIES[family]
    stage = _pretrain_stage(family)
    if fam.pretrain_config is None:
        info = pretrain_tiny_clip_once(osp.join(out, fam.work), settings.clip, _log,
                                       slots=tool_slots(settings.jobs))
        _log(f'{stage}: contrastive loss {info["loss"]:.3f}, caption retrieval '
             f'{info["retrieval"]:.1f}%, saved to {osp.join(out, fam.backbone_file)}')
        timings[stage] = info['seconds']   # its own time, not its wait for a slot
        return dict(pretrained=osp.join(out, fam.backbone_file), source_map=float('nan'),
                    clip=info)
    pre_cfg = osp.join(settings.config_dir, f'{fam.pretrain_config}.py')
    pre_dir = osp.join(out, fam.work)
    os.makedirs(pre_dir, exist_ok=True)
    timings[stage] = _run_tool(
        settings, 'train.py',
        [pre_cfg, '--work-dir', pre_dir, '--cfg-options'] + _data_options(source_root)
        + _schedule_options(settings.pretrain_iters) + [f'randomness.seed={settings.seed}'],
        osp.join(out, f'{fam.work.replace("/", "_")}.log'), progress, stage,
        PRIORITY_PRETRAIN)
    target = osp.join(out, fam.backbone_file)
    with torch_in_this_process():
        if fam.timm:
            model_name = _load_cfg(pre_cfg, []).model.backbone.model_name
            pretrained = export_timm_backbone(_last_checkpoint(pre_dir), target, model_name)
        else:
            pretrained = export_backbone(_last_checkpoint(pre_dir), target)
    source_map = _val_metrics(pre_dir, 'multi-label/mAP').get('multi-label/mAP',
                                                              float('nan'))
    pre_iters = settings.pretrain_iters or _load_cfg(pre_cfg, []).train_cfg.max_iters
    _log(f'{stage}: source tags mAP {source_map:.2f}, backbone saved to {pretrained} '
         f'({timings[stage]:.1f} s, {timings[stage] / pre_iters:.3f} s/iter with start-up)')
    return dict(pretrained=pretrained, source_map=source_map)


def _row_common(settings: StudySettings, target_root: str, family: str, cfg_path: str,
                pretrained: str) -> List[str]:
    """A row's --cfg-options: the target data, its family's backbone file, the seed."""
    return (_data_options(target_root) + _checkpoint_options(family, cfg_path, pretrained)
            + [f'randomness.seed={settings.seed}'])


def _run_row(settings: StudySettings, key: str, pretrained, out: str, target_root: str,
             progress: Progress, timings: Dict) -> Tuple[RowResult, Dict[str, float]]:
    """One row at every learning rate and seed, once its family's backbone is saved
    (``pretrained``: the future of :func:`_pretrain_family`). Returns the row's best run
    (over seeds: their mean and spread) and ``{lr: mIoU}`` when rates were searched."""
    cfg_path = osp.join(settings.config_dir, f'{key}.py')
    common = _row_common(settings, target_root, family_of(key), cfg_path,
                         pretrained.result()['pretrained'])
    runs = []
    for lr in settings.lrs or [None]:
        lr_opt = [] if lr is None else [f'optim_wrapper.optimizer.lr={lr}']
        seeded = []
        for seed in _row_seeds(settings):
            work = osp.join(out, 'rows', key, *([] if lr is None else [f'lr{lr:g}']),
                            *([] if seed is None else [f'seed{seed}']))
            os.makedirs(work, exist_ok=True)
            seed_row = [] if seed is None else [f'randomness.seed={seed}']
            train_s = _run_tool(settings, 'train.py',
                                [cfg_path, '--work-dir', work, '--cfg-options']
                                + common + _schedule_options(settings.iters) + lr_opt
                                + seed_row,
                                osp.join(work, 'train.log'), progress,
                                _stage_name(key, lr, seed))
            r = _evaluate(settings, key, ROWS[key], cfg_path, _last_checkpoint(work),
                          work, common + lr_opt + seed_row, train_s)
            if seed is not None:
                r.extra['seed'] = seed
            seeded.append(r)
            timings[key] = timings.get(key, 0.0) + r.train_s + r.test_s
            _log(f'{r.method:<12} mIoU {r.miou:6.2f}  tuned {format_count(r.tuned):>7} '
                 f'({r.tuned_pct:5.2f}%)  file {_fmt_bytes(r.file_bytes):>9}  lr {r.lr:g}  '
                 f'train {r.train_s:5.1f} s  test {r.test_s:4.1f} s'
                 + ('' if seed is None else f'  seed {seed}'))
        runs.append(aggregate_seeds(seeded))
        if len(seeded) > 1:
            _log(f'{_stage_name(key, lr)}: mIoU {_miou_cell(runs[-1])} over '
                 f'{len(seeded)} seeds')
    best = max(runs, key=lambda r: r.miou)
    searched = {}
    if settings.lrs:
        searched = {f'{r.lr:g}': r.miou for r in runs}
        _log(f'{ROWS[key]}: best lr {best.lr:g} of ' + ', '.join(
            f'{lr}: {m:.2f}' for lr, m in searched.items()))
    return best, searched


def _evaluate(settings, key, method, cfg_path, ckpt, work, options, train_s) -> RowResult:
    test_dir = osp.join(work, 'test')
    pred_dir = osp.join(work, 'pred')
    test_s = _run_tool(settings, 'test.py',
                       [cfg_path, ckpt, '--work-dir', test_dir, '--out', pred_dir,
                        '--cfg-options'] + options, osp.join(work, 'test.log'))
    metrics = _test_metrics(test_dir)
    cfg = _load_cfg(cfg_path, options)
    tuned, total = _count(cfg)
    return RowResult(key=key, method=method, tuned=tuned, total=total,
                     file_bytes=osp.getsize(ckpt), miou=float(metrics['mIoU']),
                     aacc=float(metrics['aAcc']), lr=float(cfg.optim_wrapper.optimizer.lr),
                     train_s=train_s, test_s=test_s, checkpoint=ckpt, pred_dir=pred_dir)
