"""Evaluate a task checkpoint: MMSeg's ``tools/test.py`` for vpt-seg.

    python tools/test.py configs/setr_vpt_ade20k.py work_dirs/setr_vpt_ade20k/iter_160000.pth
    python tools/test.py ... --tta          # multi-scale (0.5-1.75) + flip
    python tools/test.py ... --show-dir vis # write prediction overlays to <work-dir>/vis
    python tools/test.py ... --classes names.txt  # a CoOp task: another class list

A task checkpoint holds only tuned weights; the frozen backbone is loaded from the
pretrained file named in the config's ``model.backbone.init_cfg``.

``--classes FILE`` (one class name per line) gives a task whose head classifies by CLIP
text embeddings with a unified context (CoOp) another class list
(vpt_seg/tuners/class_list.py); a linear head, a class-specific context (csc=True) or a
folded head is refused, naming why, and so is a list whose length differs from the test
data's classes (its labels index those). A task with a text head gets ``classes.txt``
(line i + 1 is label i) in the run's log folder, beside the metrics, and in ``--out``.
"""
import argparse
import os
import os.path as osp
import sys

import vpt_seg  # noqa: F401  (patches and registration before any mmseg import)

# isort: split
from mmengine.config import DictAction
from mmengine.runner import Runner

from vpt_seg.datasets.checks import head_classes, use_checked_loaders
from vpt_seg.datasets.config_checks import prepare_cfg
from vpt_seg.engine.class_list import ClassListError, ClassListHook
from vpt_seg.engine.distributed import setup_distributed
from vpt_seg.tool_config import load_cfg
from vpt_seg.tuners.class_list import read_class_file


def parse_args():
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a vpt-seg checkpoint or task file',
        epilog='examples:\n'
               '  python tools/test.py configs/demo/setr_vpt_tiny_ade20k.py '
               'work_dirs/demo/iter_200.pth --tta\n'
               '  python tools/test.py configs/demo/setr_vpt_tiny_ade20k.py '
               'work_dirs/demo/seg.safetensors --show-dir vis --out preds\n'
               "MMEngine's log line every default_hooks.logger.interval images gives the "
               'ETA.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint',
                        help='task checkpoint (.pth) or task file (.safetensors, from '
                        'tools/export_task.py)')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--out', help='the dir to save output prediction maps (PNG)')
    parser.add_argument('--show', action='store_true',
                        help='show prediction results in a window (needs a display)')
    parser.add_argument('--show-dir',
                        help='dir (relative paths: under the work dir) to save painted images')
    parser.add_argument('--show-interval', type=int, default=1,
                        help='with --show/--show-dir: paint every N-th image (default 1)')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, e.g. key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--tta', action='store_true',
                        help='multi-scale + flip test-time augmentation '
                             '(the config\'s tta_pipeline)')
    parser.add_argument('--classes', metavar='FILE',
                        help='a text file of class names, one per line: a task whose head '
                        'classifies by CLIP text embeddings (CoOp, unified context) '
                        'classifies these instead (as many as the test data has); '
                        'classes.txt beside the outputs lists the names')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def trigger_visualization_hook(cfg, args):
    """Turn on MMSeg's SegVisualizationHook for --show / --show-dir.

    Returns:
        The folder painted images go to (None with --show alone).
    """
    default_hooks = cfg.default_hooks
    if 'visualization' not in default_hooks:
        raise RuntimeError('--show/--show-dir need a "visualization" entry in default_hooks '
                           '(type="SegVisualizationHook")')
    if args.show_interval < 1:
        raise ValueError(f'--show-interval must be >= 1, got {args.show_interval}')
    if args.show and sys.platform.startswith('linux') and not (
            os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY')):
        raise SystemExit('--show opens a window, but there is no display here (DISPLAY is '
                         'not set); use --show-dir DIR to save the painted images instead.')
    hook = default_hooks['visualization']
    hook['draw'] = True
    hook['interval'] = args.show_interval  # MMSeg's default (50) skips small test sets
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    show_dir = None
    if args.show_dir:
        show_dir = osp.join(cfg.work_dir, args.show_dir)  # an absolute path stays as is
        cfg.visualizer['save_dir'] = show_dir
    return show_dir


def main():
    args = parse_args()
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):  # URLs: downloaded
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint!r}')
    names = None
    if args.classes:
        try:
            names = read_class_file(args.classes)
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f'test.py: --classes {err}') from None
    cfg = load_cfg(args)
    cfg.load_from = args.checkpoint
    show_dir = None
    if args.show or args.show_dir:
        show_dir = trigger_visualization_hook(cfg, args)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError(f'--tta needs tta_model and tta_pipeline in {args.config}')
        # the checked loaders also where a config keeps MMSeg's unchecked TTA pipeline
        num_classes = head_classes(cfg.model).get('decode_head')
        cfg.test_dataloader.dataset.pipeline = use_checked_loaders(cfg.tta_pipeline,
                                                                   num_classes)
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out is not None:
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    prepare_cfg(cfg, training=False)
    setup_distributed(cfg)

    runner = Runner.from_cfg(cfg)
    runner.register_hook(ClassListHook(names, source=args.classes, out_dir=args.out))
    try:
        runner.test()
    except ClassListError as err:  # a class list the task or the data cannot take
        raise SystemExit(f'test.py: --classes {err}') from None
    if show_dir is not None:
        # SegLocalVisualizer -> LocalVisBackend: <save_dir>/vis_data/vis_image/*.png
        print(f'Painted images are in {osp.join(show_dir, "vis_data", "vis_image")}')


if __name__ == '__main__':
    main()
