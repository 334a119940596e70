"""Train a segmentor (or classifier) from a config: MMSeg's ``tools/train.py`` for vpt-seg.

    python tools/train.py configs/setr_vpt_ade20k.py [--work-dir DIR] [--resume] [--amp]
        [--cfg-options model.backbone.num_prompts=50 ...] [--launcher pytorch]
"""
import argparse
import os

import vpt_seg  # noqa: F401  (patches and registration before any mmseg import)

# isort: split
from mmengine.config import DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

from vpt_seg.datasets.config_checks import prepare_cfg
from vpt_seg.engine.distributed import setup_distributed
from vpt_seg.tool_config import load_cfg


def parse_args():
    parser = argparse.ArgumentParser(
        description='Train a segmentor with visual prompts',
        epilog='examples:\n'
               '  python tools/train.py configs/setr_vpt_ade20k.py\n'
               '  python tools/train.py configs/demo/setr_vpt_tiny_ade20k.py --work-dir '
               'work_dirs/tiny --cfg-options train_cfg.max_iters=100\n'
               '  bash tools/dist_train.sh configs/demo/setr_vpt_tiny_ade20k.py 2   '
               '# DDP, GPUs or CPU (gloo)\n'
               "MMEngine's log line every default_hooks.logger.interval iterations gives "
               'the ETA.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and task checkpoints')
    parser.add_argument('--resume', action='store_true', default=False,
                        help='resume from the latest checkpoint in the work_dir automatically')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training (needs a GPU: '
                        "MMEngine's AmpOptimWrapper)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, e.g. key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torchrun sets LOCAL_RANK instead)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def check_amp():
    """--amp uses MMEngine's AmpOptimWrapper (fp16 autocast + loss scaling), which only
    runs on GPUs; refuse early instead of its AssertionError from deep in the runner."""
    from mmengine.device import (
        is_cuda_available,
        is_mlu_available,
        is_musa_available,
        is_npu_available,
    )
    if not (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available()):
        raise SystemExit('--amp: mixed-precision training needs a GPU (MMEngine\'s '
                         'AmpOptimWrapper runs on CUDA, NPU, MLU or MUSA devices) and none '
                         'is available here; train without --amp (fp32) on this machine.')


def main():
    args = parse_args()
    cfg = load_cfg(args)
    if args.amp:
        check_amp()
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.resume = args.resume
    prepare_cfg(cfg, training=True)
    setup_distributed(cfg)

    runner = Runner.from_cfg(cfg)
    runner.train()
    print_log(f'Task checkpoints and logs are in {cfg.work_dir}', logger='current')


if __name__ == '__main__':
    main()
