"""Export a task checkpoint as a portable task file (safetensors, no pickle), or fold it
into a standalone MMSeg checkpoint (--fold).

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

--fold writes one task for deploying it alone, no pretrained file needed (vpt_seg/fold.py,
docs/folding.md): OUT.pth, the whole model with LoRA and tuned biases merged into the
weights (prompts stay tokens, adapters stay modules), and OUT.py beside it, the config
with lora=None, save_frozen=True and no pretrained file:

    python tools/export_task.py CONFIG CHECKPOINT OUT.pth --fold
    python tools/test.py OUT.py OUT.pth     # or mmseg.apis.init_model('OUT.py', 'OUT.pth')

A task with nothing to fold (no LoRA, no tuned biases) is written all the same, as a
standalone checkpoint (the log says so). A CoOp task's text heads are folded too: the
class embeddings computed once into a plain classifier (linear; a 1x1 convolution for
pixels), no text tower or CLIP file left, the logits checked against the task's
(docs/coop.md#folding).

Outputs never replace inputs: OUT (and, with --fold, OUT.py) may not be the config, the
checkpoint or the pretrained file; an existing OUT.py that an earlier --fold did not write
(or an existing OUT.safetensors that is not a task file) is replaced only with --force.
Every file is written beside its final name and renamed when complete, with the usual
file mode (umask).
"""
import argparse
import os
import os.path as osp

import vpt_seg  # noqa: F401  (patches and registration before any mmseg import)

# isort: split
from mmengine.config import Config, DictAction

from vpt_seg.config_paths import resolve_config
from vpt_seg.formats.export import export_task
from vpt_seg.formats.fold import fold_task
from vpt_seg.formats.outputs import check_output_folder
from vpt_seg.tool_config import mark_named_pretrained


def main():
    parser = argparse.ArgumentParser(
        description='Export a task checkpoint as a portable task file (safetensors), or '
                    'with --fold as a standalone MMSeg checkpoint (.pth + its .py config)',
        epilog='example: python tools/export_task.py configs/demo/setr_vpt_tiny_ade20k.py '
               'work_dirs/demo/iter_40.pth work_dirs/demo/seg_task.safetensors\n'
               '         python tools/export_task.py CONFIG CHECKPOINT deploy/seg.pth --fold '
               '(writes deploy/seg.pth and deploy/seg.py)',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the config the task was trained with')
    parser.add_argument('checkpoint', help='its task checkpoint (.pth, from tools/train.py), '
                        'or a task file to rewrite in the current format (version 1 files)')
    parser.add_argument('out', help='the task file to write (.safetensors); with --fold, '
                        'the checkpoint (.pth, its config written beside it as .py)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, e.g. '
                        'model.backbone.init_cfg.checkpoint=/path/to/vit.pth')
    parser.add_argument('--fold', action='store_true',
                        help='write a standalone MMSeg checkpoint instead: LoRA and tuned '
                        'biases merged into the weights, a CoOp text head\'s class '
                        'embeddings computed once into a plain classifier, frozen weights '
                        'included, and its config beside it (OUT.py); loads with no '
                        'pretrained file')
    parser.add_argument('--force', action='store_true',
                        help='replace an existing OUT.py (with --fold) or OUT.safetensors '
                        'that this tool did not write; an input is never replaced')
    args = parser.parse_args()
    want = '.pth' if args.fold else '.safetensors'
    if not args.out.endswith(want):
        parser.error(f'{args.out!r}: ' + ('--fold writes an MMSeg checkpoint, name it '
                     'OUT.pth' if args.fold else 'a task file must end in .safetensors '
                     '(--fold for a standalone .pth checkpoint)'))
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint not found: {args.checkpoint!r}')
    cfg = Config.fromfile(resolve_config(args.config))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
        mark_named_pretrained(cfg, args.cfg_options)
    try:
        check_output_folder(args.out)
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)  # as MMSeg's --out
        if args.fold:
            done = fold_task(cfg, args.checkpoint, args.out, force=args.force)
        else:
            meta = export_task(cfg, args.checkpoint, args.out, force=args.force)
    except (ValueError, FileNotFoundError) as err:  # refusals name the file and the fix
        raise SystemExit(f'export_task.py: {err}') from None
    if args.fold:
        print(f'standalone checkpoint {args.out} ({osp.getsize(args.out) / 2**20:.1f} MiB) '
              f'and its config {done["config"]}: folded '
              f'{" and ".join(done["folded"]) or "nothing (no LoRA, no tuned biases)"}; '
              f'features equal the task\'s to {done["largest_difference"]:.2g}; load with '
              f'tools/test.py {done["config"]} {args.out}, no pretrained file needed')
        return
    size = osp.getsize(args.out)
    print(f'task file {args.out}: {size / 2**10:.1f} KiB; loads with the pretrained backbone '
          f'{meta["pretrained"]!r} beside it (or at {meta["pretrained_path"]!r})')


if __name__ == '__main__':
    main()
