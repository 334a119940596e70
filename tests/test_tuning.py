"""vpt_seg.tuners.tuning: the one rule (tuned iff requires_grad), freezing, bias lookup, counts."""
import pytest
import torch
from mmseg.registry import MODELS
from torch import nn

from vpt_seg.tuners.tuning import (
    bias_parameters,
    count_parameters,
    format_count,
    freeze,
    frozen_state_keys,
    is_tuned,
    parameter_report,
)

C = 8  # embed dim of the tiny torch modules


class Tiny(nn.Module):
    """Every kind of bias the lookup must find, and layers without one."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 2)                       # weight, bias
        self.attn = nn.MultiheadAttention(C, 2)              # in_proj_bias, out_proj.bias
        self.norm = nn.LayerNorm(C)                          # weight, bias
        self.proj = nn.Linear(C, C, bias=False)              # weight only
        self.q_bias = nn.Parameter(torch.zeros(C))           # EVA / BEiT style
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.scale = nn.Parameter(torch.ones(C))             # not a bias
        self.register_parameter('bias_free', None)


TINY_BIASES = ['q_bias', 'v_bias', 'conv.bias', 'attn.in_proj_bias', 'attn.out_proj.bias',
               'norm.bias']
TINY_OTHERS = ['scale', 'conv.weight', 'attn.in_proj_weight', 'attn.out_proj.weight',
               'norm.weight', 'proj.weight']


def test_bias_parameters_finds_every_bias_by_attribute_name():
    m = Tiny()
    assert sorted(n for n, _ in bias_parameters(m)) == sorted(TINY_BIASES)
    params = dict(m.named_parameters())
    assert all(p is params[n] for n, p in bias_parameters(m))


def test_bias_parameters_is_structural_not_by_name_substring():
    """A weight under a module named like a bias is not a bias; a bias of a module whose
    path says nothing about biases is."""
    m = nn.Module()
    m.bias_layer = nn.Linear(C, C, bias=False)  # 'bias' in the module name, no bias
    m.x = nn.Module()
    m.x.y = nn.Linear(C, C)
    assert [n for n, _ in bias_parameters(m)] == ['x.y.bias']
    assert [n for n, _ in bias_parameters(nn.Linear(2, 2))] == ['bias']  # root module


@pytest.mark.parametrize('tune_bias, tuned', [(False, []), (True, TINY_BIASES)])
def test_freeze(tune_bias, tuned):
    m = Tiny()
    freeze(m, tune_bias=tune_bias)
    assert sorted(n for n, p in m.named_parameters() if is_tuned(p)) == sorted(tuned)
    assert sorted(frozen_state_keys(m)) == sorted(
        TINY_OTHERS + ([] if tune_bias else TINY_BIASES))


def test_freeze_turns_off_what_was_tuned_before():
    m = Tiny()
    freeze(m, tune_bias=True)
    freeze(m, tune_bias=False)
    assert not any(is_tuned(p) for p in m.parameters())


def test_is_tuned_follows_requires_grad_only():
    p = nn.Parameter(torch.zeros(2))
    assert is_tuned(p)
    p.requires_grad_(False)
    assert not is_tuned(p)


def test_frozen_state_keys_are_state_dict_keys():
    m = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    m[0].weight.requires_grad_(False)
    keys = frozen_state_keys(m)
    assert keys == ['0.weight']
    assert set(keys) <= set(m.state_dict())


def test_count_parameters():
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2, bias=False))  # 15 + 6
    assert count_parameters(m) == 21
    assert count_parameters(m, tuned_only=True) == 21
    freeze(m, tune_bias=True)
    assert count_parameters(m) == 21
    assert count_parameters(m, tuned_only=True) == 3
    freeze(m)
    assert count_parameters(m, tuned_only=True) == 0


@pytest.mark.parametrize('n, text', [
    (0, '0'), (999, '999'), (1000, '1.0K'), (1440, '1.4K'), (99_949, '99.9K'),
    (100_000, '0.10M'), (13_414_000, '13.41M'), (317_540_000, '317.54M')])
def test_format_count(n, text):
    assert format_count(n) == text


# ------------------------------------------------------------ on a tiny prompted ViT
TINY_VIT = dict(img_size=(32, 32), patch_size=8, embed_dims=32, num_layers=4, num_heads=4,
                out_indices=(1, 3), patch_bias=True, norm_cfg=dict(type='LN', eps=1e-6))
D, L, P, CLASSES = 32, 4, 3, 5
# patch conv bias, then per layer: ln1, in_proj (q, k, v), out_proj, ln2, fc1 (4x), fc2
BIASES = D + L * (D + 3 * D + D + D + 4 * D + D)
ALL_BACKBONE = (3 * 8 * 8 * D + D + D + 17 * D  # patch conv, [CLS], position (16 + 1)
                + L * (2 * D + 3 * D * D + 3 * D + D * D + D + 2 * D + 8 * D * D + 5 * D))
HEAD = D * CLASSES + CLASSES


class WithHead(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.backbone = MODELS.build(dict(type='PromptedVisionTransformer', **TINY_VIT,
                                          **kwargs))
        self.head = nn.Linear(D, CLASSES)


@pytest.mark.parametrize('deep', [True, False])
@pytest.mark.parametrize('tune_bias', [False, True])
def test_parameter_report_parts(deep, tune_bias):
    model = WithHead(num_prompts=P, deep=deep, tune_bias=tune_bias)
    bb = model.backbone
    report = parameter_report(model, bb, bb.prompt)
    prompts = P * D * (L if deep else 1)
    assert list(report) == ['prompts', 'backbone biases', 'backbone other', 'heads', 'total']
    assert report['prompts'] == dict(tuned=prompts, total=prompts)
    assert report['backbone biases'] == dict(tuned=BIASES if tune_bias else 0, total=BIASES)
    assert report['backbone other'] == dict(tuned=0, total=ALL_BACKBONE - BIASES)
    assert report['heads'] == dict(tuned=HEAD, total=HEAD)
    tuned = prompts + HEAD + (BIASES if tune_bias else 0)
    assert report['total'] == dict(tuned=tuned, total=prompts + ALL_BACKBONE + HEAD)
    assert report['total']['tuned'] == count_parameters(model, tuned_only=True)
    assert report['total']['total'] == count_parameters(model)


def test_parameter_report_without_prompt_module_counts_no_prompts():
    model = WithHead(num_prompts=0, tune_bias=True)
    report = parameter_report(model, model.backbone)
    assert report['prompts'] == dict(tuned=0, total=0)
    assert report['backbone biases'] == dict(tuned=BIASES, total=BIASES)
    assert report['total']['tuned'] == BIASES + HEAD
