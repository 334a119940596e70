"""CoOp's paper in miniature: few-shot curves and base-to-novel on a tiny CLIP made here.

The second part of ``tools/study.py`` (docs/study.md#coop-in-miniature). Its stages:

1. **A tiny CLIP** pretrained contrastively on generated image-caption pairs of a source
   vocabulary (:func:`vpt_seg.experiments.clip_pretrain.pretrain_tiny_clip`), saved in
   open_clip's layout; every config below loads it through ``checkpoint=`` as a
   published CLIP file.
2. **Target data** (:func:`vpt_seg.datasets.synthetic_captions.make_target_folder`):
   ten colour-shape classes whose names the captions never put together, in another
   look; 1 to 16 training shots per class (nested), validation images per class.
3. **Few-shot classification**: every method of :data:`METHODS` at every shot count, one
   ``tools/train.py`` run each (``configs/study/coop/<method>.py``), top-1 from its final
   validation; zero-shot (nothing to train) is a ``tools/test.py`` run on a checkpoint of
   the model as built.
4. **Base-to-novel**: context learned on half the classes (base, 16 shots), tested by
   ``tools/test.py`` on that half and, with the class names swapped through
   ``--cfg-options``, on the other half (novel); the harmonic mean of the two.
5. **Outputs** in ``<out>/``: ``coop_few_shot.md``, ``coop_base_to_novel.md``,
   ``coop.json`` (every number, stage timings, thread count and load) and
   ``coop_few_shot.png`` (accuracy against shots, one line per method).

The tool runs follow the study's thread policy (``threads`` torch threads each, set in
their environment) and run ``jobs`` at a time, in the study's slots
(:func:`~vpt_seg.experiments.study.tool_slots`, shared with the Table 3 part when
``tools/study.py`` runs both side by side); the results do not depend on ``jobs``. The
tiny CLIP is pretrained in a forked child of this process with ``threads`` torch threads,
once for both parts.
"""
import json
import os
import os.path as osp
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .. import config_paths
from ..datasets.synthetic_captions import TARGET_CLASSES, folder_name, make_target_folder
from ..tuners.tuning import format_count
from .clip_pretrain import ClipPretrainSettings, pretrain_tiny_clip_once
from .study import (
    PRIORITY_SHORT,
    _count,
    _last_checkpoint,
    _load_cfg,
    _run_tool,
    _test_metrics,
    _val_metrics,
    save_untrained,
    tool_slots,
)

__all__ = ['METHODS', 'B2N_METHODS', 'FULL_SHOTS', 'DEFAULT_SHOTS', 'DEFAULT_METHODS',
           'CoopSettings',
           'run_coop_study', 'harmonic_mean', 'format_few_shot', 'format_base_to_novel',
           'plot_few_shot']

#: Method key (config in configs/study/coop) -> its name in the tables and the figure.
METHODS = OrderedDict([
    ('zero-shot', 'Zero-shot CLIP (hand prompt)'),
    ('linear-probe', 'Linear probe'),
    ('coop', 'CoOp (end)'),
    ('coop-middle', 'CoOp (middle)'),
    ('coop-csc', 'CoOp CSC'),
    ('vpt-deep', 'VPT-deep, hand text'),
    ('vpt-coop', 'VPT-deep + CoOp'),
])
#: The base-to-novel rows (MaPLe's table: zero-shot CLIP, CoOp, deep vision prompts with
#: fixed text, prompts on both towers).
B2N_METHODS = ('zero-shot', 'coop', 'vpt-deep', 'vpt-coop')
FULL_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SHOTS = (1, 4, 16)
#: The main job's few-shot rows (CoOp middle and VPT-deep + CoOp, level with their
#: neighbours, only in ``--suite coop``; VPT-deep + CoOp stays in base-to-novel).
DEFAULT_METHODS = ('zero-shot', 'linear-probe', 'coop', 'coop-csc', 'vpt-deep')
#: Base and novel halves of the target classes (indices into TARGET_CLASSES).
BASE, NOVEL = (0, 2, 4, 6, 8), (1, 3, 5, 7, 9)
ACC = 'accuracy/top1'


def _log(msg: str):
    # one write per line: the two parts log from threads side by side
    print(f'[study coop] {msg}\n', end='', flush=True)


@dataclass
class CoopSettings:
    """What the CoOp part does. The defaults are the main job's reduced part.

    Attributes:
        out_dir: Where the CLIP, data, runs, tables and figure go.
        shots: Training shots per class of the few-shot curves.
        methods: Keys of :data:`METHODS` in the few-shot table.
        base_to_novel: Run the base-to-novel table (:data:`B2N_METHODS`).
        b2n_methods: Keys of :data:`METHODS` in the base-to-novel table.
        b2n_shots: Shots per base class for base-to-novel.
        iters: Training iterations per run (None: the configs' 200).
        num_val: Validation images per class.
        clip: The tiny CLIP's pretraining.
        clip_file: A CLIP file to use instead of pretraining one (open_clip's layout, the
            shape of :data:`~vpt_seg.experiments.clip_pretrain.CLIP_SHAPE`).
        seed: Data and training seed.
        seeds: Training runs per method and shot count, seeded ``seed``, ``seed + 1``, ...
            on the same data and CLIP; above 1 the tables give the mean and the spread
            (std, min-max). Zero-shot trains nothing and runs once.
        threads: Torch threads per tool run (and for the pretraining here).
        jobs: Tool runs at once.
        config_dir: The CoOp study configs.
        tools_dir: Where ``train.py`` and ``test.py`` live.
    """
    out_dir: str = 'work_dirs/study/coop'
    shots: Sequence[int] = DEFAULT_SHOTS
    methods: Sequence[str] = DEFAULT_METHODS
    base_to_novel: bool = True
    b2n_methods: Sequence[str] = B2N_METHODS
    b2n_shots: int = 16
    iters: Optional[int] = None
    num_val: int = 20
    clip: ClipPretrainSettings = field(default_factory=ClipPretrainSettings)
    clip_file: Optional[str] = None
    seed: int = 0
    seeds: int = 1
    threads: int = 1
    jobs: int = 2
    config_dir: str = osp.join(config_paths.config_dirs(), 'study', 'coop')
    tools_dir: str = config_paths.tools_dir()


@dataclass
class _Run:
    """One training run (or, for zero-shot, none) and the tests after it."""
    name: str
    method: str
    data_root: str
    classes: Sequence[int]
    shots: int = 0
    seed: int = 0
    tests: Dict[str, tuple] = field(default_factory=dict)   # label -> (root, classes)
    acc: Dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def harmonic_mean(base: float, novel: float) -> float:
    """``2 b n / (b + n)``, the base-to-novel summary (0 when both are 0)."""
    return 2 * base * novel / (base + novel) if base + novel else 0.0


def _check(settings: CoopSettings):
    unknown = [m for m in list(settings.methods) + list(settings.b2n_methods)
               if m not in METHODS]
    if unknown:
        raise ValueError(f'unknown CoOp methods {unknown}; choose from {list(METHODS)}')
    bad = [s for s in settings.shots if not isinstance(s, int) or not 1 <= s <= 16]
    if bad or not settings.shots:
        raise ValueError(f'shots={list(settings.shots)}: give shot counts from 1 to 16 '
                         '(the target task draws 16 training images per class)')
    if settings.iters is not None and settings.iters < 1:
        raise ValueError(f'iters={settings.iters}: give at least 1 iteration per run')
    if not isinstance(settings.seeds, int) or settings.seeds < 1:
        raise ValueError(f'seeds={settings.seeds!r}: give a whole number of training runs per '
                         'method and shot count, at least 1')


def _vocabulary(classes: Sequence[int]) -> str:
    return 'model.head.text_encoder.vocabulary=[' + ','.join(
        folder_name(*TARGET_CLASSES[c]) for c in classes) + ']'


def _options(settings: CoopSettings, run: _Run, root: str, classes, clip: str) -> List[str]:
    """--cfg-options of a run's config: data, CLIP file, seed, schedule, class names."""
    opts = [f'{loader}.dataset.data_root={root}'
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    opts += [f'model.backbone.checkpoint={clip}', f'randomness.seed={run.seed}']
    if run.method != 'linear-probe':
        opts += [f'model.head.text_encoder.checkpoint={clip}', _vocabulary(classes)]
    else:
        opts += [f'model.head.num_classes={len(classes)}']
    if run.shots:
        opts.append(f'train_dataloader.dataset.data_prefix.img_path=train_{run.shots}shot')
    if settings.iters is not None:
        n = settings.iters
        opts += [f'train_cfg.max_iters={n}', f'train_cfg.val_interval={n}',
                 f'param_scheduler.0.end={n}', f'default_hooks.checkpoint.interval={n}']
    return opts


def _execute(settings: CoopSettings, run: _Run, out: str, clip: str, zero_ckpt: str) -> _Run:
    """Train (unless zero-shot), then test on each of ``run.tests``."""
    cfg = osp.join(settings.config_dir, f'{run.method}.py')
    work = osp.join(out, 'runs', run.name)
    os.makedirs(work, exist_ok=True)
    seconds = 0.0   # the tool runs' own time, not their wait for a slot
    if run.method == 'zero-shot':
        ckpt = zero_ckpt
    else:
        seconds += _run_tool(
            settings, 'train.py', [cfg, '--work-dir', work, '--cfg-options']
            + _options(settings, run, run.data_root, run.classes, clip),
            osp.join(work, 'train.log'), priority=PRIORITY_SHORT)
        ckpt = _last_checkpoint(work)
        run.acc['val'] = float(_val_metrics(work, ACC)[ACC])
    for label, (root, classes) in run.tests.items():
        test_dir = osp.join(work, f'test_{label}')
        seconds += _run_tool(
            settings, 'test.py', [cfg, ckpt, '--work-dir', test_dir, '--cfg-options']
            + _options(settings, run, root, classes, clip),
            osp.join(work, f'test_{label}.log'), priority=PRIORITY_SHORT)
        run.acc[label] = float(_test_metrics(test_dir)[ACC])
    run.seconds = seconds
    _log(f'{run.name}: ' + ', '.join(f'{k} {v:.2f}' for k, v in run.acc.items())
         + f' ({run.seconds:.1f} s)')
    return run


def _pool(settings, runs: List[_Run], out: str, clip: str, zero_ckpt: str) -> List[_Run]:
    """Every run, ``jobs`` tool runs at once (the study's slots, shared with the Table 3
    part when both run)."""
    with ThreadPoolExecutor(max_workers=max(1, len(runs))) as pool:
        futures = [pool.submit(_execute, settings, r, out, clip, zero_ckpt) for r in runs]
        return [f.result() for f in futures]


def _make_data(settings: CoopSettings, out: str, clip: str):
    """Target data: all ten classes (nested shot folders, validation), and the
    base-to-novel halves; and the zero-shot checkpoint (the model as built: nothing tuned,
    the towers come from the CLIP file). Returns ``({name: root}, checkpoint)``."""
    shots = sorted(set(settings.shots) | ({settings.b2n_shots} if settings.base_to_novel
                                          else set()))
    train = [(f'train_{s}shot', 'train', s) for s in shots]
    val = [('val', 'val', settings.num_val)]
    data = os.path.join(out, 'data')
    roots = dict(target=make_target_folder(osp.join(data, 'target'), range(10), train + val,
                                           settings.seed))
    if settings.base_to_novel:
        roots['base'] = make_target_folder(osp.join(data, 'base'), BASE, train + val,
                                           settings.seed)
        roots['novel'] = make_target_folder(osp.join(data, 'novel'), NOVEL, val,
                                            settings.seed)
    zero = _Run('zero-shot', 'zero-shot', roots['target'], tuple(range(10)))
    ckpt = save_untrained(osp.join(settings.config_dir, 'zero-shot.py'),
                          _options(settings, zero, roots['target'], zero.classes, clip),
                          osp.join(out, 'zero_shot.pth'), settings.seed)
    return roots, ckpt


def _seeded(settings: CoopSettings, run: _Run) -> List[_Run]:
    """``run`` once per seed (named ``.../seedN`` when there are several); zero-shot,
    which trains nothing, once."""
    if settings.seeds == 1 or run.method == 'zero-shot':
        return [replace(run, seed=settings.seed)]
    # each its own tests and accuracies (replace() would share the dicts)
    return [replace(run, name=f'{run.name}/seed{seed}', seed=seed, tests=dict(run.tests),
                    acc={}) for seed in range(settings.seed, settings.seed + settings.seeds)]


def _few_shot_runs(settings: CoopSettings, roots) -> List[_Run]:
    runs = []
    everything = tuple(range(10))
    for method in settings.methods:
        if method == 'zero-shot':
            runs += _seeded(settings, _Run('zero-shot', method, roots['target'], everything,
                                           tests=dict(val=(roots['target'], everything))))
            continue
        for s in settings.shots:
            runs += _seeded(settings, _Run(f'{method}/{s}shot', method, roots['target'],
                                           everything, s))
    return runs


def _b2n_runs(settings: CoopSettings, roots) -> List[_Run]:
    tests = dict(base=(roots['base'], BASE), novel=(roots['novel'], NOVEL))
    return [r for m in settings.b2n_methods for r in _seeded(settings, _Run(
        f'b2n/{m}', m, roots['base'], BASE, 0 if m == 'zero-shot' else settings.b2n_shots,
        tests=dict(tests)))]


def spread(values: Sequence[float]) -> Dict[str, float]:
    """``{'mean', 'std' (sample; 0 for one value), 'min', 'max', 'runs'}`` of the runs of
    one cell."""
    v = np.asarray(values, np.float64)
    return dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                min=float(v.min()), max=float(v.max()), runs=v.tolist())


def _tuned_counts(settings: CoopSettings, methods, clip: str) -> Dict[str, int]:
    counts = {}
    for m in methods:
        run = _Run(m, m, '', tuple(range(10)))
        cfg = _load_cfg(osp.join(settings.config_dir, f'{m}.py'),
                        _options(settings, run, '', run.classes, clip))
        counts[m] = _count(cfg)[0]
    return counts


def _clip(settings: CoopSettings, out: str):
    """The CLIP file: ``clip_file``, or the tiny CLIP pretrained into ``out/tiny_clip``."""
    if settings.clip_file:
        return osp.abspath(settings.clip_file), dict(file=settings.clip_file)
    info = pretrain_tiny_clip_once(osp.join(out, 'tiny_clip'), settings.clip, _log,
                                   slots=tool_slots(settings.jobs))
    _log(f'tiny CLIP: contrastive loss {info["loss"]:.3f}, caption retrieval '
         f'{info["retrieval"]:.1f}% ({info["seconds"]:.1f} s)')
    return osp.join(out, 'tiny_clip', 'open_clip_model.safetensors'), info


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished tool runs so far."""
    import resource
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                resource.getrusage(resource.RUSAGE_CHILDREN)))


class _Stage:
    """Times a stage: wall seconds into ``timings``, CPU seconds (this process and its
    tool runs) into ``cpu`` (on a busy machine the CPU time is what an idle one takes,
    divided by the runs at once)."""

    def __init__(self, name: str, timings: Dict, cpu: Dict):
        self.name, self.timings, self.cpu = name, timings, cpu

    def __enter__(self):
        self.t, self.c = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.timings[self.name] = time.perf_counter() - self.t
        self.cpu[self.name] = _cpu_seconds() - self.c


def run_coop_study(settings: CoopSettings) -> Dict:
    """Run the CoOp part; returns ``{'few_shot', 'base_to_novel', 'clip', 'tuned',
    'timings', 'machine', 'files'}``.

    Raises:
        ValueError: an unknown method or a shot count outside 1..16.
        RuntimeError: a tool run failed (its log tail is in the message).
    """
    _check(settings)
    out = osp.abspath(settings.out_dir)
    os.makedirs(out, exist_ok=True)
    timings, t0 = OrderedDict(), time.perf_counter()
    machine = dict(threads=settings.threads, jobs=settings.jobs, cpu_count=os.cpu_count(),
                   load_avg_1min_start=os.getloadavg()[0])
    torch.set_num_threads(settings.threads)
    cpu = OrderedDict()
    with _Stage('tiny CLIP', timings, cpu):
        clip, clip_info = _clip(settings, out)
    with _Stage('data', timings, cpu):
        roots, zero_ckpt = _make_data(settings, out, clip)
    with _Stage('few-shot', timings, cpu):
        few = _pool(settings, _few_shot_runs(settings, roots), out, clip, zero_ckpt)
    b2n = []
    if settings.base_to_novel:
        with _Stage('base-to-novel', timings, cpu):
            b2n = _pool(settings, _b2n_runs(settings, roots), out, clip, zero_ckpt)
    machine['cpu_s'] = cpu
    return _finish(settings, out, few, b2n, clip_info, clip, timings, machine, t0)


def _finish(settings, out, few, b2n, clip_info, clip, timings, machine, t0) -> Dict:
    """Tables, figure and JSON from the runs."""
    t = time.perf_counter()
    cells = OrderedDict((m, OrderedDict()) for m in settings.methods)
    for r in few:
        for s in (settings.shots if r.method == 'zero-shot' else [r.shots]):
            cells[r.method].setdefault(s, []).append(r.acc['val'])
    spreads = OrderedDict((m, OrderedDict((s, spread(v)) for s, v in c.items()))
                          for m, c in cells.items())
    few_shot = OrderedDict((m, OrderedDict((s, c['mean']) for s, c in row.items()))
                           for m, row in spreads.items())
    b2n_cells = OrderedDict()
    for r in b2n:
        b2n_cells.setdefault(r.method, []).append(
            (r.acc['base'], r.acc['novel'], harmonic_mean(r.acc['base'], r.acc['novel'])))
    b2n_spreads = OrderedDict((m, {k: spread([run[i] for run in v]) for i, k in
                                   enumerate(('base', 'novel', 'hm'))})
                              for m, v in b2n_cells.items())
    base_to_novel = OrderedDict((m, {k: c['mean'] for k, c in v.items()})
                                for m, v in b2n_spreads.items())
    tuned = _tuned_counts(settings, list(dict.fromkeys(list(settings.methods) +
                                                        [r.method for r in b2n])), clip)
    files = dict(few_shot_md=osp.join(out, 'coop_few_shot.md'),
                 base_to_novel_md=osp.join(out, 'coop_base_to_novel.md'),
                 json=osp.join(out, 'coop.json'),
                 figure=osp.join(out, 'coop_few_shot.png'))
    with open(files['few_shot_md'], 'w') as f:
        f.write(format_few_shot(few_shot, settings.shots, tuned, spreads) + '\n')
    if base_to_novel:
        with open(files['base_to_novel_md'], 'w') as f:
            f.write(format_base_to_novel(base_to_novel, tuned, b2n_spreads) + '\n')
    else:
        files.pop('base_to_novel_md')
    plot_few_shot(few_shot, settings.shots, files['figure'], spreads)
    timings['tables and figure'] = time.perf_counter() - t
    timings['total'] = time.perf_counter() - t0
    machine.update(load_avg_1min_end=os.getloadavg()[0], torch=torch.__version__)
    result = dict(few_shot=few_shot, base_to_novel=base_to_novel, few_shot_spread=spreads,
                  base_to_novel_spread=b2n_spreads, clip=clip_info,
                  tuned=tuned, timings=timings, machine=machine, files=files,
                  settings=dict(asdict(settings), clip=asdict(settings.clip)))
    with open(files['json'], 'w') as f:
        json.dump({k: v for k, v in result.items() if k != 'files'}, f, indent=2)
    _print_summary(result)
    return result


def _cell(value: float, cell: Optional[Dict]) -> str:
    """``mean`` or, over several runs, ``mean ± std (min-max)``."""
    if not cell or len(cell['runs']) == 1:
        return f'{value:.2f}'
    return f'{value:.2f} ± {cell["std"]:.2f} ({cell["min"]:.1f}-{cell["max"]:.1f})'


def format_few_shot(few_shot: Dict, shots: Sequence[int], tuned: Dict[str, int],
                    spreads: Optional[Dict] = None) -> str:
    """Top-1 (%) of every method at every shot count, Markdown; with ``spreads``
    (:func:`spread` per cell), runs over seeds show mean ± std (min-max)."""
    spreads = spreads or {}
    lines = ['| Method | Tuned params | ' + ' | '.join(f'{s} shot' + ('s' if s > 1 else '')
                                                     for s in shots) + ' |',
             '|---|--:|' + '--:|' * len(shots)]
    for m, accs in few_shot.items():
        lines.append(f'| {METHODS[m]} | {format_count(tuned[m]) if tuned[m] else "0"} | '
                     + ' | '.join(_cell(accs[s], spreads.get(m, {}).get(s)) for s in shots)
                     + ' |')
    return '\n'.join(lines)


def format_base_to_novel(rows: Dict, tuned: Dict[str, int],
                         spreads: Optional[Dict] = None) -> str:
    """Base, novel and harmonic mean (%), Markdown (over seeds: mean ± std (min-max); the
    harmonic mean is each run's, averaged)."""
    spreads = spreads or {}
    lines = ['| Method | Tuned params | Base | Novel | HM |', '|---|--:|--:|--:|--:|']
    for m, r in rows.items():
        lines.append(f'| {METHODS[m]} | {format_count(tuned[m]) if tuned[m] else "0"} | '
                     + ' | '.join(_cell(r[k], spreads.get(m, {}).get(k))
                                  for k in ('base', 'novel', 'hm')) + ' |')
    return '\n'.join(lines)


def plot_few_shot(few_shot: Dict, shots: Sequence[int], path: str,
                  spreads: Optional[Dict] = None) -> str:
    """Top-1 against shots per class (log 2 axis), one line per method; zero-shot, which
    uses no shot, as a dashed line (CoOp's Figure 3 in miniature). With ``spreads`` over
    seeds, a band from each cell's lowest to its highest run."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    colours = plt.get_cmap('tab10')
    for i, (m, accs) in enumerate(few_shot.items()):
        ys = [accs[s] for s in shots]
        if m == 'zero-shot':
            ax.plot(shots, ys, '--', color='black', label=METHODS[m])
        else:
            ax.plot(shots, ys, '-o', color=colours(i), label=METHODS[m], markersize=5)
            cells = [(spreads or {}).get(m, {}).get(s) for s in shots]
            if all(c and len(c['runs']) > 1 for c in cells):
                ax.fill_between(shots, [c['min'] for c in cells], [c['max'] for c in cells],
                                color=colours(i), alpha=0.15, linewidth=0)
    ax.set_xscale('log', base=2)
    ax.set_xticks(list(shots))
    ax.set_xticklabels([str(s) for s in shots])
    ax.set_xlabel('training shots per class')
    ax.set_ylabel('top-1 accuracy (%)')
    seeds = max((len(c['runs']) for row in (spreads or {}).values() for c in row.values()),
                default=1)
    ax.set_title('Tiny CLIP pretrained on generated captions: 10 unseen colour-shape '
                 'classes' + (f'\n(mean of {seeds} seeds; bands: lowest to highest run)'
                              if seeds > 1 else ''), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _print_summary(result: Dict):
    print()
    print(format_few_shot(result['few_shot'], result['settings']['shots'], result['tuned'],
                          result['few_shot_spread']))
    if result['base_to_novel']:
        print()
        print(format_base_to_novel(result['base_to_novel'], result['tuned'],
                                   result['base_to_novel_spread']))
    print()
    m = result['machine']
    print('CoOp stage timings: ' + ', '.join(f'{k} {v:.1f} s'
                                             for k, v in result['timings'].items()))
    print('CPU seconds (this process and its tool runs): ' + ', '.join(
        f'{k} {v:.1f}' for k, v in m['cpu_s'].items()))
    print(f'{m["threads"]} torch thread(s) per tool run, {m["jobs"]} runs at once; load '
          f'average (1 min) {m["load_avg_1min_start"]:.2f} at the start, '
          f'{m["load_avg_1min_end"]:.2f} at the end, {m["cpu_count"]} cores')
    for name, path in result['files'].items():
        print(f'{name}: {path}')
