"""Every config builds; the ADE20k rows land on the paper's Table 3 parameter counts."""
import glob
import os.path as osp
import subprocess
import sys

import pytest
from mmengine.config import Config
from mmseg.registry import MODELS

from vpt_seg.tuning import count_parameters

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ADE_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'setr_*.py')))

# Tunable parameters of SETR on ViT-L, Table 3 of Jia et al. (ECCV 2022), in millions.
TABLE3 = {
    'setr_head_ade20k.py': 13.18,
    'setr_bias_ade20k.py': 13.46,
    'setr_vpt-deep_ade20k.py': 13.43,
    'setr_vpt_ade20k.py': 13.43,
    'setr_vpt-bias_ade20k.py': 15.79,
}


@pytest.mark.parametrize('path', ADE_CONFIGS, ids=osp.basename)
def test_ade20k_config_builds_with_the_paper_setup(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports['imports'] == ['vpt_seg']
    assert cfg.model.backbone.type == 'PromptedVisionTransformer'
    assert cfg.model.backbone.patch_bias is True
    assert cfg.model.decode_head.num_classes == 150 and cfg.crop_size == (512, 512)
    # label maps of large images in bounded memory, also under --tta
    assert (cfg.model.type, cfg.tta_model.type) == ('BoundedEncoderDecoder',
                                                    'BoundedSegTTAModel')
    model = MODELS.build(cfg.model)
    backbone = model.backbone
    assert (backbone.cls_token.shape[-1], len(backbone.layers), backbone.patch_size) == (1024, 24, 16)
    name = osp.basename(path)
    if name in TABLE3:
        tuned = count_parameters(model, tuned_only=True) / 1e6
        assert tuned == pytest.approx(TABLE3[name], rel=0.01), name
    if 'full' in name:
        assert count_parameters(model, tuned_only=True) == count_parameters(model)
    else:
        assert not any(p.requires_grad for n, p in backbone.named_parameters()
                       if n.endswith('weight'))


@pytest.mark.parametrize('path', ['demo/setr_vpt_tiny_ade20k.py', 'study/vpt-deep.py',
                                  'study/head.py', 'study/full.py'])
def test_small_segmentation_configs_use_the_bounded_segmentor(path):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', path))
    assert cfg.model.type == 'BoundedEncoderDecoder'
    if 'tta_model' in cfg:
        assert cfg.tta_model.type == 'BoundedSegTTAModel'


def test_count_params_tool_prints_parts_and_task_file_size():
    out = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'count_params.py'),
         osp.join(ROOT, 'configs', 'setr_vpt_ade20k.py')],
        capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows['prompts'][:2] == ['0.25M', '0.25M']
    assert rows['heads'][0] == '13.14M' and rows['total'][0] == '13.39M'
    assert 'task file' in out and 'MiB' in out
