"""Print tuned and total parameters by part, and the size of the task file, for a config.

    python tools/count_params.py configs/setr_vpt_ade20k.py [--cfg-options ...]

The task file is what a run saves for the task: ``model.state_dict()``, which leaves the
frozen backbone out (training checkpoints add optimizer state for ``--resume``).
"""
import argparse
import io

import vpt_seg  # noqa: F401  (patches and registration before any mmseg import)
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from vpt_seg.runner import resolve_config
from vpt_seg.tuners.tuning import format_count, parameter_report


def task_file_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def format_bytes(n: int) -> str:
    return f'{n / 2**20:.1f} MiB' if n >= 2**20 else f'{n / 2**10:.1f} KiB'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()
    cfg = Config.fromfile(resolve_config(args.config))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = MODELS.build(cfg.model)
    backbone = model.backbone
    report = parameter_report(model, backbone, getattr(backbone, 'prompt', None))
    total = report['total']['total']
    print(f'{args.config}')
    print(f'{"part":<18}{"tuned":>12}{"total":>12}{"tuned %":>10}')
    for part, row in report.items():
        print(f'{part:<18}{format_count(row["tuned"]):>12}{format_count(row["total"]):>12}'
              f'{100 * row["tuned"] / total:>9.2f}%')
    size = task_file_bytes(model)
    print(f'task file (model.state_dict()): {format_bytes(size)}; '
          f'whole model in fp32: {format_bytes(4 * total)}')


if __name__ == '__main__':
    main()
