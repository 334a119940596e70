"""The embedded default: SETR + VPT-deep on generated ADE20k-layout data, on CPU, in minutes.

    python tools/demo.py [--iters 200] [--work-dir work_dirs/demo] [--backbone dinov2|clip]

1. writes a small dataset in the real ADE20k layout to data/ade_tiny (150 classes, 0 = ignore);
2. writes a tiny randomly initialised ViT to pretrain/tiny_vit.pth, standing in for the
   pretrained backbone (no weights can be downloaded here; tools/study.py pretrains one);
   with ``--backbone dinov2``, a tiny timm DINOv2-with-registers as a hub folder
   (pretrain/tiny_dinov2_reg4/model.safetensors + config.json); with ``--backbone clip``,
   a tiny random CLIP in open_clip's layout (pretrain/tiny_clip), both towers;
3. prompt-tunes configs/demo/setr_vpt_tiny_ade20k.py (setr_vpt_tiny_dinov2_ade20k.py;
   with ``clip``, CoOp's text context and a TextSegHead, coop_seg_tiny_ade20k.py) with
   tools/train.py;
4. evaluates the task checkpoint with tools/test.py, which prints the mIoU table.
"""
import argparse
import os.path as osp
import subprocess
import sys

import vpt_seg  # noqa: F401  (patches and registration before any mmseg import)

# isort: split
from mmengine.config import Config
from mmengine.registry import init_default_scope

from vpt_seg.datasets.synthetic import make_ade20k
from vpt_seg.experiments.demo import write_backbone

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = dict(vit=osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_ade20k.py'),
               dinov2=osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_dinov2_ade20k.py'),
               clip=osp.join(ROOT, 'configs', 'demo', 'coop_seg_tiny_ade20k.py'))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog='example:\n  python tools/demo.py --iters 40   # data, backbone, train, test: '
               'about 30 s\nData and the backbone go to data/ and pretrain/ in the current '
               "folder; training and testing print MMEngine's progress with the ETA.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--iters', type=int, default=200, help='training iterations')
    parser.add_argument('--work-dir', default='work_dirs/demo',
                        help='where the task checkpoint and logs go (default: %(default)s)')
    parser.add_argument('--backbone', choices=sorted(CONFIGS), default='vit',
                        help="vit: MMSeg's ViT layout; dinov2: a timm DINOv2 with registers "
                        '(PromptedTimmViT); clip: a tiny CLIP, CoOp on a text head')
    args = parser.parse_args()
    config = CONFIGS[args.backbone]

    data = make_ade20k('data/ade_tiny', num_train=64, num_val=16, size=(64, 64),
                       task='target', seed=0)
    print(f'[demo] dataset in ADE20k layout: {data}')
    cfg = Config.fromfile(config)
    init_default_scope('mmseg')
    print(f'[demo] stand-in pretrained ViT: {write_backbone(cfg)}')

    options = [f'train_cfg.max_iters={args.iters}', f'train_cfg.val_interval={args.iters}',
               f'default_hooks.checkpoint.interval={args.iters}',
               f'param_scheduler.0.end={args.iters}']
    tools = osp.join(ROOT, 'tools')
    subprocess.run([sys.executable, osp.join(tools, 'train.py'), config, '--work-dir',
                    args.work_dir, '--cfg-options', *options], check=True)
    ckpt = osp.join(args.work_dir, f'iter_{args.iters}.pth')
    subprocess.run([sys.executable, osp.join(tools, 'test.py'), config, ckpt,
                    '--work-dir', args.work_dir], check=True)
    print(f'[demo] task checkpoint (tuned weights + optimizer state): {ckpt}, '
          f'{osp.getsize(ckpt) / 2**10:.0f} KiB')


if __name__ == '__main__':
    main()
