"""Check a config's dataset before training: layout, readable images, sizes, label
ranges, class histogram. Every problem is listed (the data loaders stop at the first).

    python tools/check_data.py configs/setr_vpt_ade20k.py [--splits train val]
        [--cfg-options train_dataloader.dataset.data_root=... ...]

Exits 1 when any file is bad. Training can run the same scan at start-up:
``custom_hooks = [dict(type='DataCheckHook')]``.
"""
import argparse
import sys

import vpt_seg  # noqa: F401  (patches and registration before any mmseg import)

# isort: split
from mmengine.config import DictAction
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS

from vpt_seg.datasets import check_dataset
from vpt_seg.datasets.checks import ClassCountError, DataError
from vpt_seg.datasets.config_checks import check_loader
from vpt_seg.tool_config import load_cfg

LOADERS = dict(train='train_dataloader', val='val_dataloader', test='test_dataloader')


def parse_args():
    parser = argparse.ArgumentParser(description='Check a segmentation dataset')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--splits', nargs='+', choices=list(LOADERS), default=['train', 'val'])
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, e.g. key=value')
    args = parser.parse_args()
    args.launcher, args.work_dir = 'none', None
    return args


def report(name: str, result: dict) -> None:
    print(f'{name}: {result["num_images"]} images, sizes (HxW): ' + ', '.join(
        f'{h}x{w} ({n})' for (h, w), n in sorted(result['sizes'].items(),
                                                 key=lambda kv: -kv[1])[:5]))
    hist, classes = result['histogram'], result['classes']
    total = sum(hist.values()) or 1
    ignored = hist.get(result['ignore_index'], 0)
    print(f'  labelled pixels: {total - ignored} ({100 * (total - ignored) / total:.1f}%), '
          f'ignored: {ignored}')
    if result['num_classes']:
        absent = [classes[i] for i in range(result['num_classes']) if i not in hist]
        for i, n in sorted(hist.items(), key=lambda kv: -kv[1]):
            if i < result['num_classes']:
                print(f'  {i:3d} {classes[i]:<20} {n:>12} px  {100 * n / total:6.2f}%')
        if absent:
            print(f'  {len(absent)} classes never appear: ' + ', '.join(absent[:20])
                  + (' ...' if len(absent) > 20 else ''))
    for problem in result['problems']:
        print(f'  PROBLEM: {problem}')


def main():
    args = parse_args()
    cfg = load_cfg(args)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    bad = 0
    for split in args.splits:
        loader = LOADERS[split]
        if cfg.get(loader) is None:
            continue
        try:  # layout first: missing folders, empty split, images without annotations,
            # a split without a valid label, heads of another class count
            check_loader(cfg, loader)
        except (FileNotFoundError, ClassCountError, DataError) as err:
            print(f'{split}: PROBLEM: {err}')
            bad += 1
            continue
        dataset = DATASETS.build(dict(cfg[loader]['dataset'], pipeline=[]))
        print(f'Checking {split} ...')
        result = check_dataset(dataset)
        report(split, result)
        bad += len(result['problems'])
    print(f'{bad} problems' if bad else 'No problems found.')
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()
