"""Print tuned and total parameters by part, and the size of the task file, for a config.

    python tools/count_params.py configs/setr_vpt_ade20k.py [--cfg-options ...]

The task file size is the size of the file tools/export_task.py writes for this config:
the same writer (vpt_seg.formats.task_file.write_task_file) run on the built model, so
``model.state_dict()`` (the frozen backbone left out) and the header (the config, the
signature, the pretrained file's name and sha256, and the dataset's class names and
palette, as a training run records them). Training checkpoints add optimizer state
for ``--resume``.
"""
import argparse
import os.path as osp
import tempfile

import vpt_seg  # noqa: F401  (patches and registration before any mmseg import)

# isort: split
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS, MODELS

from vpt_seg.config_paths import resolve_config
from vpt_seg.formats.pretrained_key import pretrained_in
from vpt_seg.formats.task_file import write_task_file
from vpt_seg.tuners.tuning import format_count, parameter_report


def dataset_meta_of(cfg: Config) -> dict:
    """The classes and palette a training run of ``cfg`` records (its training
    dataset's metainfo: the class's own, then the config's ``metainfo``); {} if none."""
    dataset = (cfg.get('train_dataloader') or {}).get('dataset') or {}
    try:
        meta = dict(DATASETS.get(dataset.get('type')).METAINFO)
    except (AttributeError, KeyError, TypeError):
        meta = {}
    meta.update(dataset.get('metainfo') or {})
    return {k: v for k, v in meta.items() if k in ('classes', 'palette') and v}


def task_file_bytes(model: torch.nn.Module, cfg: Config) -> int:
    """The size of the task file tools/export_task.py writes for ``model`` trained with
    ``cfg``: written by the same writer into a temporary folder, then measured."""
    backbone = model.backbone
    pretrained = pretrained_in(cfg.model.backbone) or ''
    frozen = any(not p.requires_grad for p in backbone.parameters())
    if not getattr(model, 'dataset_meta', None):
        model.dataset_meta = dataset_meta_of(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        out = osp.join(tmp, 'task.safetensors')
        write_task_file(out, model, cfg, pretrained=pretrained, pretrained_path=pretrained,
                        frozen_sha256='0' * 64 if frozen else None)  # a sha256 is 64 digits
        return osp.getsize(out)


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
    size = task_file_bytes(model, cfg)
    print(f'task file (tools/export_task.py, model.state_dict() and header): '
          f'{format_bytes(size)}; whole model in fp32: {format_bytes(4 * total)}')


if __name__ == '__main__':
    main()
