"""VPT's Table 3 and CoOp's findings in miniature, on 2 CPU cores (see docs/study.md).

    python tools/study.py [--out work_dirs/study] [--rows head vpt-deep ...]
        [--iters N] [--pretrain-iters N] [--num-source N] [--num-target N] [--num-val N]
        [--lrs 5e-3 2e-2 5e-2] [--seeds 3] [--threads 1] [--suite all|table3|coop]
        [--shots 1 4 16]

Makes synthetic source/target data in the ADE20k layout, pretrains a tiny ViT for
image-level recognition on the source task (multi-label tags), adapts it to the target
task with every Table-3 row (configs/study/*.py,
through tools/train.py and tools/test.py), and writes table.{md,csv,json},
miou_vs_params.png and predictions.png to --out. Then (--suite all, the default) CoOp's
part: a tiny CLIP pretrained on generated captions, few-shot curves and base-to-novel
(vpt_seg/experiments/coop_study.py), written to --out/coop. Every tool run uses --threads
torch threads (default 1: the documented numbers, and the documented time on a busy
machine). --seeds N repeats every Table 3 row's training (and every trained CoOp run)
over N seeds and reports each mean and spread; table.json records the machine (CPU
model and flags, torch, MKL and oneDNN versions).
"""
import argparse
import os.path as osp
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from vpt_seg.experiments.coop_study import (
    DEFAULT_METHODS,
    DEFAULT_SHOTS,
    FULL_SHOTS,
    METHODS,
    CoopSettings,
    run_coop_study,
)
from vpt_seg.experiments.study import ROWS, StudySettings, run_study

#: What each --suite runs: the Table 3 rows, the CoOp part (reduced in 'all'), or both.
SUITES = ('all', 'table3', 'coop')


def parse_args():
    d = StudySettings()
    parser = argparse.ArgumentParser(
        description='VPT transfer study (Table 3 in miniature) and CoOp in miniature: '
                    'pretrain tiny backbones, adapt them with every row, write the tables '
                    'and figures',
        epilog='examples:\n'
               '  python tools/study.py                                  # Table 3 and '
               'CoOp, ~11 min on 2 cores\n'
               '  python tools/study.py --rows head vpt-deep --iters 200  # a quick look\n'
               '  python tools/study.py --lrs 5e-3 2e-2 5e-2              # learning-rate search\n'
               '  python tools/study.py --suite coop                      # CoOp, full curves\n'
               'Progress lines ([study] ...) give each run\'s ETA and the whole study\'s.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=d.out_dir,
                        help='output folder: data, runs, table.{md,csv,json}, figures '
                             '(default: %(default)s)')
    parser.add_argument('--rows', nargs='+', choices=list(ROWS), default=list(d.rows),
                        metavar='ROW',
                        help='Table 3 rows to run, in order (default: all: '
                             + ' '.join(ROWS) + ')')
    parser.add_argument('--iters', type=int, help='iterations per row (default: configs)')
    parser.add_argument('--pretrain-iters', type=int,
                        help='source pretraining iterations (default: config)')
    parser.add_argument('--num-source', type=int, default=d.num_source,
                        help='source-task training images, for pretraining '
                             '(default: %(default)s)')
    parser.add_argument('--num-target', type=int, default=d.num_target,
                        help='target-task training images, for every row (default: %(default)s)')
    parser.add_argument('--num-val', type=int, default=d.num_val,
                        help='validation images per task (default: %(default)s)')
    parser.add_argument('--num-show', type=int, default=d.num_show,
                        help='validation images in predictions.png (default: %(default)s)')
    parser.add_argument('--lrs', type=float, nargs='+',
                        help="learning rates to try for every row, keeping each row's best "
                             "(default: each row config's own rate)")
    parser.add_argument('--seed', type=int, default=d.seed,
                        help='seed for the data and every run (default: %(default)s)')
    parser.add_argument('--seeds', type=int, default=d.seeds,
                        help='training runs per Table 3 row and per CoOp method and shot '
                             'count, seeded SEED, SEED+1, ... on the same data and pretrained '
                             'backbone; above 1 the tables give each mean, its std and '
                             'min-max (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=d.threads,
                        help='torch threads per tool run (default %(default)s). The result '
                             'depends on it (float order of reductions): the documented '
                             'numbers are for 1; more threads oversubscribe a busy CPU')
    parser.add_argument('--jobs', type=int, default=d.jobs,
                        help='tool runs at once, over both parts (default %(default)s: two '
                             'runs of one torch thread fill 2 cores; the results do not '
                             'depend on it)')
    parser.add_argument('--suite', choices=SUITES, default='all',
                        help="'all' (default): the Table 3 rows and CoOp's part with shots "
                             f"{' '.join(map(str, DEFAULT_SHOTS))}; 'table3': the rows only; "
                             "'coop': CoOp's part alone, every method, full curves (shots "
                             f"{' '.join(map(str, FULL_SHOTS))}); its outputs go to OUT/coop")
    parser.add_argument('--shots', type=int, nargs='+',
                        help='shots per class of the CoOp few-shot curves (default: see '
                             '--suite)')
    return parser.parse_args()


def main():
    args = parse_args()
    if args.threads >= 1:
        torch.set_num_threads(args.threads)  # this process too (run_study refuses < 1)
    start = time.perf_counter()
    parts = []
    if args.suite != 'table3':
        full = args.suite == 'coop'
        shots = args.shots or (FULL_SHOTS if full else DEFAULT_SHOTS)
        coop = CoopSettings(out_dir=osp.join(args.out, 'coop'), shots=tuple(shots),
                            methods=tuple(METHODS) if full else DEFAULT_METHODS,
                            seed=args.seed, seeds=args.seeds, threads=args.threads,
                            jobs=args.jobs)
        parts.append(lambda: run_coop_study(coop))
    if args.suite != 'coop':
        parts.insert(0, lambda: run_table3(args))
    # Both parts side by side, sharing --jobs tool runs at once (the CoOp part's short runs
    # fill the gaps the Table 3 rows leave); the tiny CLIP is pretrained once for both.
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        for future in [pool.submit(part) for part in parts]:
            future.result()
    print(f'study ({args.suite}): {time.perf_counter() - start:.0f} s in all')


def run_table3(args):
    run_study(StudySettings(out_dir=args.out, rows=args.rows, iters=args.iters,
                            pretrain_iters=args.pretrain_iters, num_source=args.num_source,
                            num_target=args.num_target, num_val=args.num_val,
                            num_show=args.num_show, lrs=args.lrs, seed=args.seed,
                            seeds=args.seeds, threads=args.threads, jobs=args.jobs))


if __name__ == '__main__':
    main()
