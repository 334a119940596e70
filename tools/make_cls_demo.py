"""Write the generated classification demo (image folders) and, optionally, a tiny
random "pretrained" ViT for ``configs/vpt_cls_demo.py``.

    python tools/make_cls_demo.py --out data/cls_demo [--num-train 40] [--num-val 10]
        [--size 32 32] [--seed 0] [--backbone-out pretrain/tiny_vit_cls.pth]

The backbone file is a randomly initialised MMSeg ViT (width 32, 4 layers, patch 8) for
smoke runs; for real work use a pretrained ViT (docs/pretrained.md).
"""
import argparse
import os
import os.path as osp

import vpt_seg  # noqa: F401  (patches before any mmseg import)

# isort: split
import torch
from mmseg.models.backbones import VisionTransformer

from vpt_seg.datasets.synthetic_cls import CLS_CLASSES, make_cls_folder


def parse_args():
    parser = argparse.ArgumentParser(description='Generated image-folder classification data')
    parser.add_argument('--out', default='data/cls_demo', help='dataset root to write')
    parser.add_argument('--num-train', type=int, default=40, help='training images per class')
    parser.add_argument('--num-val', type=int, default=10, help='validation images per class')
    parser.add_argument('--size', type=int, nargs=2, default=(32, 32), metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--backbone-out', help='also write a random tiny ViT checkpoint here')
    return parser.parse_args()


def main():
    args = parse_args()
    make_cls_folder(args.out, num_train=args.num_train, num_val=args.num_val,
                    size=tuple(args.size), seed=args.seed)
    print(f'{len(CLS_CLASSES)} classes x ({args.num_train} train + {args.num_val} val) '
          f'images in {args.out}')
    if args.backbone_out:
        torch.manual_seed(args.seed)
        vit = VisionTransformer(img_size=tuple(args.size), patch_size=8, embed_dims=32,
                                num_layers=4, num_heads=4, patch_bias=True, final_norm=True,
                                norm_cfg=dict(type='LN', eps=1e-6))
        vit.init_weights()
        os.makedirs(osp.dirname(args.backbone_out) or '.', exist_ok=True)
        torch.save(vit.state_dict(), args.backbone_out)
        print(f'random tiny ViT (not pretrained) written to {args.backbone_out}')


if __name__ == '__main__':
    main()
