"""Write a small synthetic dataset in the ADE20k layout (no download needed).

    python tools/make_ade20k_demo.py --out data/ade_demo [--task source|target]
        [--num-train 32] [--num-val 8] [--size 64 64] [--seed 0]

Point a config at it with ``--cfg-options train_dataloader.dataset.data_root=...``
(and the same for val/test), or ``data_root=`` in a config that inherits an ADE20k base.
"""
import argparse

from vpt_seg.datasets.synthetic import TASKS, make_ade20k


def parse_args():
    parser = argparse.ArgumentParser(description='Synthetic ADE20k-layout data')
    parser.add_argument('--out', default='data/ade_demo',
                        help='folder to create ADEChallengeData2016 in')
    parser.add_argument('--task', choices=TASKS, default='source',
                        help='source: ADE ids 1..8; target: ADE ids 20..27, other looks')
    parser.add_argument('--num-train', type=int, default=32)
    parser.add_argument('--num-val', type=int, default=8)
    parser.add_argument('--size', type=int, nargs=2, default=(64, 64), metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    data_root = make_ade20k(args.out, num_train=args.num_train, num_val=args.num_val,
                            size=tuple(args.size), task=args.task, seed=args.seed)
    print(f'{args.task} task: {args.num_train} training and {args.num_val} validation '
          f'images in {data_root}')


if __name__ == '__main__':
    main()
