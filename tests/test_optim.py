"""vpt_seg.engine.optim: TunedOptimWrapperConstructor gives the optimizer tuned parameters
only, with the prompt policy of its config and MMEngine's paramwise rules for the rest."""
import logging

import pytest
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmseg.registry import MODELS
from torch import nn

from vpt_seg.engine.optim import TunedOptimWrapperConstructor
from vpt_seg.tuners.tuning import bias_parameters

TINY_VIT = dict(img_size=(32, 32), patch_size=8, embed_dims=32, num_layers=2, num_heads=4,
                out_indices=(1,), patch_bias=True, norm_cfg=dict(type='LN', eps=1e-6))
LR, WD = 0.1, 0.05


class WithHead(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.backbone = MODELS.build(dict(type='PromptedVisionTransformer', **TINY_VIT,
                                          **kwargs))
        self.head = nn.Linear(32, 5)


def build(model, optimizer=None, **paramwise_cfg):
    return build_optim_wrapper(model, dict(
        constructor='TunedOptimWrapperConstructor',
        optimizer=optimizer or dict(type='AdamW', lr=LR, weight_decay=WD),
        paramwise_cfg=paramwise_cfg)).optimizer


def groups_by_param(model, optimizer):
    """``{parameter name: its param group}``; each parameter in one group."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            assert names[id(p)] not in out, f'{names[id(p)]} in two groups'
            out[names[id(p)]] = group
    return out


@pytest.mark.parametrize('kwargs', [dict(num_prompts=3), dict(num_prompts=3, deep=False),
                                    dict(num_prompts=3, tune_bias=True),
                                    dict(num_prompts=0, tune_bias=True)])
def test_only_tuned_parameters_reach_the_optimizer(kwargs):
    model = WithHead(**kwargs)
    given = groups_by_param(model, build(model))
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(given) == tuned
    assert not any(k.startswith('backbone.') and 'prompt' not in k and 'bias' not in k
                   for k in given)  # no frozen weight, not even in a group of its own
    assert {'head.weight', 'head.bias'} <= set(given)


@pytest.mark.parametrize('policy, lr, wd', [
    (dict(), LR, 0.),                                       # default: no decay on prompts
    (dict(prompt_decay_mult=1.), LR, WD),
    (dict(prompt_decay_mult=0.5, prompt_lr_mult=10.), 10 * LR, 0.5 * WD),
    (dict(prompt_lr_mult=0.), 0., 0.)])
def test_prompt_group_follows_the_configured_policy(policy, lr, wd):
    model = WithHead(num_prompts=3, tune_bias=True)
    given = groups_by_param(model, build(model, **policy))
    prompt = given['backbone.prompt.embeddings']
    assert prompt['params'] == [model.backbone.prompt.embeddings]
    assert prompt['lr'] == pytest.approx(lr)
    assert prompt['weight_decay'] == pytest.approx(wd)
    # the policy is the prompts' only: the rest keeps the optimizer's settings
    for name in ('head.weight', 'backbone.layers.0.ffn.layers.1.bias'):
        assert given[name]['lr'] == pytest.approx(LR), name
        assert given[name]['weight_decay'] == pytest.approx(WD), name


def test_without_weight_decay_the_prompt_group_sets_none():
    model = WithHead(num_prompts=2)
    optimizer = build(model, optimizer=dict(type='SGD', lr=LR), prompt_decay_mult=1.)
    prompt = groups_by_param(model, optimizer)['backbone.prompt.embeddings']
    assert prompt['weight_decay'] == 0  # SGD's default, not base_wd * mult
    assert prompt['lr'] == LR


@pytest.mark.parametrize('paramwise, expect', [
    # MMEngine's own options keep their meaning on tuned parameters, with full prefixes
    (dict(custom_keys={'layers.1.ffn': dict(lr_mult=3.)}),
     {'backbone.layers.1.ffn.layers.0.0.bias': (3 * LR, WD),
      'backbone.layers.0.ffn.layers.0.0.bias': (LR, WD), 'head.bias': (LR, WD)}),
    (dict(custom_keys={'head': dict(lr_mult=10., decay_mult=0.)}),
     {'head.weight': (10 * LR, 0.), 'backbone.patch_embed.projection.bias': (LR, WD)}),
    (dict(bias_decay_mult=0.),
     {'head.bias': (LR, 0.), 'head.weight': (LR, WD),
      'backbone.layers.0.attn.attn.out_proj.bias': (LR, 0.)}),
    (dict(norm_decay_mult=0.),
     {'backbone.layers.0.ln1.bias': (LR, 0.), 'backbone.layers.0.ffn.layers.1.bias': (LR, WD)}),
])
def test_mmengine_paramwise_options_apply_to_tuned_parameters(paramwise, expect):
    model = WithHead(num_prompts=2, tune_bias=True)
    given = groups_by_param(model, build(model, **paramwise))
    for name, (lr, wd) in expect.items():
        assert given[name].get('lr', LR) == pytest.approx(lr), name
        assert given[name].get('weight_decay', WD) == pytest.approx(wd), name
    assert given['backbone.prompt.embeddings']['weight_decay'] == 0.


def test_every_bias_of_a_bias_tuned_backbone_is_given():
    model = WithHead(num_prompts=0, tune_bias=True)
    given = groups_by_param(model, build(model))
    biases = {f'backbone.{n}' for n, _ in bias_parameters(model.backbone)}
    assert set(given) == biases | {'head.weight', 'head.bias'}


def test_the_log_holds_one_summary_line_and_no_per_parameter_lines():
    logger = MMLogger.get_instance('test_optim_log')
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    try:
        model = WithHead(num_prompts=2)  # 2 x 2 x 32 prompts + 165 head tuned, of 32,453
        build(model, custom_keys={'head': dict(lr_mult=2.)})
    finally:
        logger.removeHandler(handler)
    assert [m for m in records if m.startswith('Optimizer:')] == \
        ['Optimizer: tuned 293 of 32.5K parameters (0.90%): prompts 128, heads 165']
    assert not [m for m in records if 'requires_grad' in m or 'paramwise_options' in m]
    assert not [f for f in logger.filters  # the filter is removed after building
                if type(f).__name__ == '_DropParamwiseLines']


def test_constructor_is_registered_and_pops_its_own_options():
    ctor = TunedOptimWrapperConstructor(dict(type='OptimWrapper', optimizer=dict(
        type='SGD', lr=LR, weight_decay=WD)), dict(prompt_lr_mult=2, prompt_decay_mult=0.5))
    assert (ctor.prompt_lr_mult, ctor.prompt_decay_mult) == (2.0, 0.5)
    assert 'prompt_lr_mult' not in ctor.paramwise_cfg
    assert 'prompt_decay_mult' not in ctor.paramwise_cfg
