"""Export a task checkpoint as a portable task file (safetensors, no pickle).

    python tools/export_task.py CONFIG CHECKPOINT OUT.safetensors
    python tools/export_task.py configs/demo/setr_vpt_tiny_ade20k.py \\
        work_dirs/demo/iter_40.pth work_dirs/demo/seg_task.safetensors

The file holds the tuned tensors only (prompts, tuned biases, heads) and, in its header,
the config, the ViT's signature and the name of the pretrained backbone file (see
vpt_seg/formats/task_file.py). Publish it with that backbone file beside it: tools/test.py,
tools/serve.py, load_from, MMSeg's init_model and MMSegInferencer read it directly.

A task file of an older format (version 1 stored its config as Python text, which is
no longer run) is re-exported the same way, with its config named:

    python tools/export_task.py CONFIG OLD.safetensors NEW.safetensors
"""
import argparse
import os
import os.path as osp

import vpt_seg  # noqa: F401  (patches and registration before any mmseg import)
from mmengine.config import Config, DictAction

from vpt_seg.runner import mark_named_pretrained, resolve_config
from vpt_seg.formats.loading import export_task


def main():
    parser = argparse.ArgumentParser(
        description='Export a task checkpoint as a portable task file (safetensors)',
        epilog='example: python tools/export_task.py configs/demo/setr_vpt_tiny_ade20k.py '
               'work_dirs/demo/iter_40.pth work_dirs/demo/seg_task.safetensors',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the config the task was trained with')
    parser.add_argument('checkpoint', help='its task checkpoint (.pth, from tools/train.py), '
                        'or a task file to rewrite in the current format (version 1 files)')
    parser.add_argument('out', help='the task file to write (.safetensors)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, e.g. '
                        'model.backbone.init_cfg.checkpoint=/path/to/vit.pth')
    args = parser.parse_args()
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint not found: {args.checkpoint!r}')
    cfg = Config.fromfile(resolve_config(args.config))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
        mark_named_pretrained(cfg, args.cfg_options)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)  # as MMSeg's --out
    meta = export_task(cfg, args.checkpoint, args.out)
    size = osp.getsize(args.out)
    print(f'task file {args.out}: {size / 2**10:.1f} KiB; loads with the pretrained backbone '
          f'{meta["pretrained"]!r} beside it (or at {meta["pretrained_path"]!r})')


if __name__ == '__main__':
    main()
