"""Write the CoOp demo: a tiny, randomly initialised CLIP in open_clip's file layout and
the generated image-folder classification data, for ``configs/demo/coop_cls_tiny.py``.

    python tools/make_clip_demo.py [--clip-out pretrain/tiny_clip] [--data-out data/cls_demo]
        [--num-train 40] [--num-val 10] [--seed 0]

The CLIP folder holds ``open_clip_model.safetensors`` (OpenAI's key names, both towers,
the real tokenizer's vocabulary of 49408 and context of 77) and ``open_clip_config.json``,
as ``huggingface-cli download timm/vit_base_patch16_clip_224.openai`` gives the real one
(docs/coop.md). Its weights are random: the demo runs the whole pipeline offline, it does
not show what CLIP knows. The data is tools/make_cls_demo.py's (32 x 32 images, six
colour-and-shape classes).
"""
import argparse

import vpt_seg  # noqa: F401  (patches before any mmseg import)

# isort: split
from vpt_seg.datasets.synthetic_cls import CLS_CLASSES, make_cls_folder
from vpt_seg.models.tiny_clip import TINY_CLIP, write_tiny_clip


def parse_args():
    parser = argparse.ArgumentParser(description='Tiny CLIP file and image-folder data '
                                                 'for the CoOp demo')
    parser.add_argument('--clip-out', default='pretrain/tiny_clip',
                        help='folder to write the tiny CLIP into (open_clip layout)')
    parser.add_argument('--data-out', default='data/cls_demo', help='dataset root to write')
    parser.add_argument('--num-train', type=int, default=40, help='training images per class')
    parser.add_argument('--num-val', type=int, default=10, help='validation images per class')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    write_tiny_clip(args.clip_out, seed=args.seed)
    c = TINY_CLIP
    print(f'random tiny CLIP (not pretrained) written to {args.clip_out}: image tower '
          f'{c["image_size"]} px, patch {c["patch_size"]}, width {c["vision_width"]} x '
          f'{c["vision_layers"]} layers; text tower width {c["text_width"]} x '
          f'{c["text_layers"]} layers; joint embedding {c["embed_dim"]}')
    make_cls_folder(args.data_out, num_train=args.num_train, num_val=args.num_val,
                    size=(c['image_size'], c['image_size']), seed=args.seed)
    print(f'{len(CLS_CLASSES)} classes x ({args.num_train} train + {args.num_val} val) '
          f'images in {args.data_out}')


if __name__ == '__main__':
    main()
