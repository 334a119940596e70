"""The pretrained-file rule: which config key holds a module's pretrained file and how it
is set (the classmethods of FrozenBackboneMixin and its overrides; formats/pretrained_key
finds the class a config names), and the one flag for a file the user named."""
import copy

import pytest
from mmengine.config import Config
from mmseg.registry import MODELS

import vpt_seg  # noqa: F401  (registers the backbones)
from vpt_seg.formats.pretrained_key import FLAG_NAMES, pretrained_in, rule_of, set_pretrained
from vpt_seg.models.frozen import FrozenBackboneMixin
from vpt_seg.tool_config import mark_named_pretrained

# (config of the module, the file, the key --cfg-options sets, what set_pretrained(None) leaves)
CASES = {
    'PromptedVisionTransformer': (
        dict(type='PromptedVisionTransformer',
             init_cfg=dict(type='Pretrained', checkpoint='vit.pth', prefix='backbone.')),
        'vit.pth', 'model.backbone.init_cfg.checkpoint', dict(init_cfg=None)),
    'VisionTransformer': (  # MMSeg's own: MMSeg's layout
        dict(type='VisionTransformer', init_cfg=dict(type='Pretrained', checkpoint='vit.pth')),
        'vit.pth', 'model.backbone.init_cfg.checkpoint', dict(init_cfg=None)),
    'PromptedTimmViT': (
        dict(type='PromptedTimmViT', model_name='vit_tiny_patch16_224', checkpoint='hub/'),
        'hub/', 'model.backbone.checkpoint', dict(checkpoint=None)),
    'CoOpTextEncoder': (
        dict(type='CoOpTextEncoder', checkpoint='clip.safetensors'),
        'clip.safetensors', 'model.head.text_encoder.checkpoint', dict(checkpoint=None)),
}


@pytest.mark.parametrize('kind', sorted(CASES))
def test_each_class_reads_and_sets_its_own_key(kind):
    cfg, path, option, cleared = copy.deepcopy(CASES[kind])
    rule = rule_of(cfg)
    assert issubclass(rule, FrozenBackboneMixin)
    assert rule.pretrained_option == option
    assert pretrained_in(cfg) == rule.pretrained_in(cfg) == path
    set_pretrained(cfg, 'other.pth')
    assert pretrained_in(cfg) == 'other.pth'
    set_pretrained(cfg, None)
    assert pretrained_in(cfg) is None
    assert {k: cfg[k] for k in cleared} == cleared
    assert cfg['type'] == kind  # nothing else changes


def test_mmseg_layout_names_a_whole_pretrained_init_cfg():
    """What load_task_model(..., pretrained=) and serving's shared backbone write: a
    Pretrained init_cfg naming the file (other init_cfg keys go with the old file)."""
    cfg = dict(type='PromptedVisionTransformer', init_cfg=None)
    assert pretrained_in(cfg) is None
    set_pretrained(cfg, 'mine.pth')
    assert cfg['init_cfg'] == dict(type='Pretrained', checkpoint='mine.pth')


@pytest.mark.parametrize('kind, options, named', [
    ('PromptedVisionTransformer', {'model.backbone.init_cfg.checkpoint': 'f'}, True),
    ('PromptedVisionTransformer', {'model.backbone.init_cfg': dict(checkpoint='f')}, True),
    ('PromptedVisionTransformer', {'model.backbone.checkpoint': 'f'}, False),
    ('PromptedVisionTransformer', {'model.backbone.init_cfgs': 'f'}, False),
    ('PromptedTimmViT', {'model.backbone.checkpoint': 'f'}, True),
    ('PromptedTimmViT', {'model.backbone.init_cfg.checkpoint': 'f'}, False),
    ('VisionTransformer', {'model.backbone.init_cfg.checkpoint': 'f'}, False),  # not ours
])
def test_the_tools_mark_a_file_named_on_the_command_line(kind, options, named):
    cfg = Config(dict(model=dict(backbone=dict(type=kind))))
    backbone = mark_named_pretrained(cfg, options).model.backbone
    assert backbone.get('prefer_configured', False) is named
    assert not any(flag in backbone for flag in FLAG_NAMES[1:])  # one name only


def test_the_flag_has_one_name_and_the_earlier_one_is_still_read():
    arch = dict(type='PromptedVisionTransformer', img_size=(32, 32), patch_size=16,
                embed_dims=32, num_layers=2, num_heads=2, mlp_ratio=2, num_prompts=2)
    assert MODELS.build(dict(arch)).prefer_configured is False
    assert MODELS.build(dict(arch, prefer_configured=True)).prefer_configured is True
    assert MODELS.build(dict(arch, prefer_init_cfg=True)).prefer_configured is True
    with pytest.raises(TypeError, match='prefer_checkpoint'):  # used by no config or doc
        MODELS.build(dict(arch, prefer_checkpoint=True))
