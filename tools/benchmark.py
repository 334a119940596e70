"""Training and inference speed, memory and FLOPs of a config, against stock MMSeg.

    python tools/benchmark.py CONFIG [--batch 8] [--amp bf16|none] [--stock] [--reference]
        [--modes train whole slide] [--methods vpt-deep lora adaptformer] [--steps 10]
        [--warmup 3] [--json OUT.json]
        [--cfg-options model.backbone.with_cp=True ...]

Examples:
    # the README's GPU table: VPT-deep against stock MMSeg, bf16, batch 8
    python tools/benchmark.py configs/setr_vpt_ade20k.py --stock \
        --json work_dirs/bench/vpt-deep.json
    # the memory switch (activation checkpointing of the frozen blocks) at batch 16
    python tools/benchmark.py configs/setr_vpt_ade20k.py --batch 16 --modes train \\
        --cfg-options model.backbone.with_cp=True
    # on CPU, the tiny demo config (ratios are meaningful, absolute numbers are not)
    python tools/benchmark.py configs/demo/setr_vpt_tiny_ade20k.py --stock --amp none
    # VPT-deep, LoRA and AdaptFormer on the same ViT-L, head and data, one row each
    python tools/benchmark.py configs/setr_vpt_ade20k.py --methods vpt-deep lora adaptformer
    # multi-task serving: a batch of 32 from 4 tasks against a batch of one task
    python tools/benchmark.py configs/setr_vpt_ade20k.py --modes serve
    # CoOp and VPT + CoOp on CLIP ViT-B/16 with ADE20k's 150 class names; the text side's
    # time and memory per step in a table of their own
    python tools/benchmark.py configs/coop_cls_imagefolder.py --methods coop vpt-coop \
        --modes train whole --cfg-options model.head.text_encoder.vocabulary=None \
        model.head.text_encoder.dataset_name=ade20k

Weights are random (no pretrained file is read). See vpt_seg/experiments/benchmark.py for what each
figure means.
"""
import argparse

import vpt_seg  # noqa: F401  (patches and registration before any mmseg import)

# isort: split
from mmengine.config import DictAction

from vpt_seg.experiments.benchmark import METHODS, format_table, run_benchmark, save_json


def parse_args():
    parser = argparse.ArgumentParser(
        description='Measure img/s, peak memory and FLOPs of a config (ours vs stock MMSeg)',
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n')[1])
    parser.add_argument('config', help='segmentation or classification config file')
    parser.add_argument('--batch', type=int, default=8, help='training batch size (default 8)')
    parser.add_argument('--infer-batch', type=int, default=1,
                        help='images per inference step (default 1, as MMSeg tests)')
    parser.add_argument('--infer-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='inference image size (default: short side = crop, 4:3, '
                             'ADE20k-like)')
    parser.add_argument('--amp', choices=['bf16', 'none'], default='bf16',
                        help='bf16 autocast (default) or plain fp32')
    parser.add_argument('--modes', nargs='+', choices=['train', 'whole', 'slide', 'serve'],
                        default=['train', 'whole', 'slide'],
                        help='what to measure (serve: MultiTaskViT, one task vs mixed tasks)')
    parser.add_argument('--methods', nargs='+', choices=list(METHODS), default=[],
                        help="rows of these methods on the config's backbone instead of the "
                             "config's own row (settings of configs/setr_<method>_ade20k.py; "
                             "coop, vpt-coop: CoOpTextEncoder's defaults on a text head)")
    parser.add_argument('--serve-batch', type=int, default=32, help='serve: images per pass')
    parser.add_argument('--serve-tasks', type=int, default=4, help='serve: tasks mixed')
    parser.add_argument('--stock', action='store_true',
                        help='also measure stock MMSeg (VisionTransformer, same rows frozen)')
    parser.add_argument('--reference', action='store_true',
                        help="also measure ours on MMSeg's layers (fast_path=False)")
    parser.add_argument('--steps', type=int, default=10, help='timed steps (median is kept)')
    parser.add_argument('--warmup', type=int, default=3,
                        help='untimed steps first, at least (default 3); more until two '
                             'consecutive steps are within 10%% of each other (at most 30)')
    parser.add_argument('--device', help='cuda, cpu, ... (default: cuda if available)')
    parser.add_argument('--peak-tflops', type=float,
                        help="the device's peak TFLOP/s (default: known GPUs' data sheets)")
    parser.add_argument('--json', help='also write the figures as JSON here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, e.g. model.backbone.with_cp=True')
    args = parser.parse_args()
    if args.batch < 1 or args.infer_batch < 1 or args.steps < 1 or args.warmup < 0:
        parser.error('--batch, --infer-batch and --steps must be >= 1, --warmup >= 0')
    return args


def main():
    args = parse_args()
    report = run_benchmark(
        args.config, batch=args.batch, amp=None if args.amp == 'none' else args.amp,
        modes=args.modes, stock=args.stock, reference=args.reference, steps=args.steps,
        warmup=args.warmup, device=args.device, infer_size=args.infer_size,
        infer_batch=args.infer_batch, peak_tflops=args.peak_tflops,
        cfg_options=args.cfg_options, serve_batch=args.serve_batch,
        serve_tasks=args.serve_tasks, methods=args.methods)
    print(format_table(report), flush=True)
    if args.json:
        save_json(report, args.json)
        print(f'figures written to {args.json}')


if __name__ == '__main__':
    main()
