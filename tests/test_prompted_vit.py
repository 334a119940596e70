"""PromptedVisionTransformer against MMSeg's VisionTransformer and the paper's equations."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.optim import build_optim_wrapper
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS

from vpt_seg.engine import optim as vpt_optim
from vpt_seg.models import PromptedVisionTransformer
from vpt_seg.tuners.tuning import bias_parameters, format_count, is_tuned

TINY = dict(img_size=(32, 32), patch_size=8, embed_dims=32, num_layers=4, num_heads=4,
            out_indices=(1, 3), patch_bias=True, norm_cfg=dict(type='LN', eps=1e-6))


def build(**kwargs):
    cfg = dict(type='PromptedVisionTransformer', **TINY)
    cfg.update(kwargs)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


# ------------------------------------------------------------ the paper, written out
def _attention(x, attn, num_heads):
    B, N, C = x.shape
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(B, N, num_heads, C // num_heads).transpose(1, 2) for t in (q, k, v))
    weights = (q @ k.transpose(-2, -1) / (C // num_heads) ** 0.5).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(B, N, C)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def _layer(x, layer, num_heads):
    x = x + _attention(layer.ln1(x), layer.attn.attn, num_heads)
    fc1, fc2 = layer.ffn.layers[0][0], layer.ffn.layers[1]
    return x + fc2(F.gelu(fc1(layer.ln2(x))))


def paper_forward(m, image, num_heads=4):
    """Eqs. (4)-(7) of Jia et al.: E_0 = patch embeddings + position, x_0 = [CLS];
    deep: [x_i, _, E_i] = L_i([x_{i-1}, P_{i-1}, E_{i-1}]);
    shallow: [x_1, Z_1, E_1] = L_1([x_0, P, E_0]), then the prompt outputs Z_i flow on."""
    conv = m.patch_embed.projection
    E = F.conv2d(image, conv.weight, conv.bias, stride=conv.stride).flatten(2).transpose(1, 2)
    h, w = image.shape[-2] // m.patch_size, image.shape[-1] // m.patch_size
    pos = m.resize_pos_embed(m.pos_embed, (h, w), (m.img_size[0] // m.patch_size,
                                                   m.img_size[1] // m.patch_size), 'bicubic')
    x0 = m.cls_token.expand(len(image), -1, -1) + pos[:, :1]
    E = E + pos[:, 1:]
    P = m.prompt.embeddings
    B = len(image)
    outs = []
    seq = torch.cat([x0, P[0].expand(B, -1, -1), E], 1)
    for i, layer in enumerate(m.layers):
        if m.prompt.deep and i > 0:
            seq = torch.cat([seq[:, :1], P[i].expand(B, -1, -1), seq[:, 1 + P.shape[1]:]], 1)
        seq = _layer(seq, layer, num_heads)
        if i in m.out_indices:
            patches = seq[:, 1 + P.shape[1]:]
            outs.append(patches.transpose(1, 2).reshape(B, -1, h, w))
    return outs


@pytest.mark.parametrize('deep', [True, False])
@pytest.mark.parametrize('size', [(32, 32), (24, 40)])
def test_forward_matches_paper_equations(deep, size):
    m = build(num_prompts=3, deep=deep, interpolate_mode='bicubic').eval()
    image = torch.randn(2, 3, *size)
    for ours, ref in zip(m(image), paper_forward(m, image)):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('options', [
    dict(),
    dict(out_origin=True, final_norm=True),
    dict(with_cls_token=False),
    dict(output_cls_token=True, out_indices=(3,)),
    dict(pre_norm=True),
])
@pytest.mark.parametrize('freeze', [True, False])
def test_no_prompts_equals_mmseg_vision_transformer(options, freeze):
    kwargs = {**TINY, **options}
    ref = VisionTransformer(**kwargs)
    ref.init_weights()
    ours = PromptedVisionTransformer(num_prompts=0, freeze=freeze, save_frozen=True, **kwargs)
    assert ours.load_state_dict(ref.state_dict(), strict=True).missing_keys == []
    ref.eval(), ours.eval()
    image = torch.randn(2, 3, 32, 48)  # non-square, not the pretraining size
    for a, b in zip(ref(image), ours(image)):
        for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            assert u.shape == v.shape
            torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('num_prompts,deep,tune_bias', [
    (4, True, False), (4, False, False), (4, True, True), (0, True, True), (0, True, False)])
def test_gradients_reach_only_tuned_parameters(num_prompts, deep, tune_bias):
    m = build(num_prompts=num_prompts, deep=deep, tune_bias=tune_bias).train()
    loss = sum(o.square().mean() for o in m(torch.randn(2, 3, 32, 32)))
    if not num_prompts and not tune_bias:  # head-only: no backward pass through the ViT at all
        assert not loss.requires_grad
        assert not any(p.requires_grad for p in m.parameters())
        return
    loss.backward()
    biases = {id(p) for _, p in bias_parameters(m) if p is not m.prompt.embeddings}
    for name, p in m.named_parameters():
        expected = name.startswith('prompt.') or (tune_bias and id(p) in biases)
        assert is_tuned(p) == expected, name
        assert (p.grad is not None and p.grad.abs().sum() > 0) == expected, name
    if tune_bias:
        assert sum(1 for _ in bias_parameters(m)) == 1 + 4 * 6  # patch + 6 per layer


def test_optimizer_steps_change_prompts_and_biases_only():
    m = build(num_prompts=4, tune_bias=True).train()
    frozen_before = {k: v.clone() for k, v in m.named_parameters() if not v.requires_grad}
    tuned_before = {k: v.clone() for k, v in m.named_parameters() if v.requires_grad}
    wrapper = build_optim_wrapper(m, dict(
        constructor='TunedOptimWrapperConstructor',
        optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.1),
        paramwise_cfg=dict(prompt_decay_mult=0.)))
    optimizer = wrapper.optimizer
    given = {id(p) for g in optimizer.param_groups for p in g['params']}
    assert given == {id(p) for p in m.parameters() if p.requires_grad}
    prompt_group = [g for g in optimizer.param_groups if g['params'][0] is m.prompt.embeddings]
    assert prompt_group[0]['weight_decay'] == 0.
    for _ in range(3):
        loss = sum(o.square().mean() for o in m(torch.randn(2, 3, 32, 32)))
        wrapper.update_params(loss)
    for k, v in m.named_parameters():
        if k in frozen_before:
            assert torch.equal(v, frozen_before[k]), k
        else:
            assert not torch.equal(v, tuned_before[k]), k


def test_optimizer_log_says_what_is_tuned_by_part(monkeypatch):
    lines = []
    monkeypatch.setattr(vpt_optim, 'print_log', lambda msg, **kw: lines.append(msg))
    model = torch.nn.Module()
    model.backbone = build(num_prompts=4, deep=True, tune_bias=True)
    model.decode_head = torch.nn.Linear(32, 5)
    build_optim_wrapper(model, dict(constructor='TunedOptimWrapperConstructor',
                                    optimizer=dict(type='SGD', lr=0.1)))
    total = sum(p.numel() for p in model.parameters())
    # prompts 4 layers x 4 x 32; biases: patch 32 + 4 layers x (ln1 32, qkv 96, proj 32,
    # ln2 32, fc1 128, fc2 32); head 32 x 5 + 5
    assert lines == [f'Optimizer: tuned 2.1K of {format_count(total)} parameters '
                     f'({100 * 2117 / total:.2f}%): prompts 512, backbone biases 1.4K, '
                     'heads 165']
    full = torch.nn.Linear(4, 2)  # no backbone: the totals only
    assert vpt_optim.tuned_summary(full) == 'tuned 10 of 10 parameters'


def test_optimizer_policy_of_lora_and_adapters():
    """tuner_lr_mult / tuner_decay_mult set the LoRA and adapter groups (the ADE20k base
    gives them the prompts' 10x); prompts keep their own policy."""
    m = build(num_prompts=2, lora=dict(rank=2), adapter=dict(width=4)).train()
    optimizer = build_optim_wrapper(m, dict(
        constructor='TunedOptimWrapperConstructor',
        optimizer=dict(type='SGD', lr=0.1, weight_decay=0.1),
        paramwise_cfg=dict(prompt_lr_mult=10., prompt_decay_mult=0., tuner_lr_mult=10.,
                           tuner_decay_mult=0.5))).optimizer
    policy = {id(p): (g['lr'], g['weight_decay']) for g in optimizer.param_groups
              for p in g['params']}
    assert policy[id(m.prompt.embeddings)] == pytest.approx((1.0, 0.0))
    tuner = list(m.lora.parameters()) + list(m.adapter.parameters())
    assert len(tuner) == 2 * 2 * 4 + 4 * 4  # per block: A, B of q and v; down, up (w, b)
    assert all(policy[id(p)] == pytest.approx((1.0, 0.05)) for p in tuner)
    assert set(policy) == {id(p) for p in m.parameters() if p.requires_grad}


def test_train_mode_keeps_frozen_parts_in_eval():
    m = build(num_prompts=2, prompt_dropout=0.5, drop_rate=0.5, drop_path_rate=0.5).train()
    assert m.prompt.training and m.training
    assert not any(mod.training for name, mod in m.named_modules()
                   if name and not name.startswith('prompt'))
    full = build(num_prompts=2, freeze=False).train()
    assert all(mod.training for mod in full.modules())


def test_task_state_dict_holds_only_tuned_and_reloads_frozen_from_pretrained(tmp_path):
    pretrained = build(num_prompts=0, save_frozen=True)
    torch.save(pretrained.state_dict(), tmp_path / 'vit.pth')
    cfg = dict(num_prompts=3, tune_bias=True,
               init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'vit.pth')))
    trained = build(**cfg)
    with torch.no_grad():
        for _, p in bias_parameters(trained):
            p.add_(1.0)
    task = trained.state_dict()
    tuned = {k for k, p in trained.named_parameters() if p.requires_grad}
    assert set(task) == tuned | {'signature'}
    torch.save(task, tmp_path / 'task.pth')

    fresh = MODELS.build(dict(type='PromptedVisionTransformer', **TINY, **cfg))  # no init_weights
    result = fresh.load_state_dict(torch.load(tmp_path / 'task.pth'), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    image = torch.randn(1, 3, 32, 32)
    for a, b in zip(trained.eval()(image), fresh.eval()(image)):
        torch.testing.assert_close(a, b)
    assert torch.equal(fresh.layers[0].ln1.weight, pretrained.layers[0].ln1.weight)


@pytest.mark.parametrize('other,match', [
    (dict(embed_dims=48, num_heads=4), 'embed_dims 48 in the checkpoint vs 32 here'),
    (dict(num_layers=6), 'num_layers 6 in the checkpoint vs 4 here'),
    (dict(num_heads=2), 'num_heads 2 in the checkpoint vs 4 here'),
])
@pytest.mark.parametrize('deep', [True, False])
def test_checkpoint_of_another_backbone_is_a_clear_error(other, match, deep):
    source = build(num_prompts=3, deep=deep, **other)
    target = build(num_prompts=3, deep=deep)
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(source.state_dict(), strict=False)
    # without the signature (an older file), shapes still catch what they can
    state = source.state_dict()
    state.pop('signature')
    if deep and 'num_heads' not in other:
        with pytest.raises(ValueError, match='does not fit') as err:
            target.load_state_dict(state, strict=False)
        assert 'prompt.embeddings' in str(err.value)


def test_pretrained_files_without_signature_still_load(tmp_path):
    src = build(num_prompts=0, save_frozen=True)
    state = src.state_dict()
    state.pop('signature')
    dst = MODELS.build(dict(type='PromptedVisionTransformer', **TINY))
    result = dst.load_state_dict(state, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(dst.signature, src.signature)


def test_patch_bias_in_checkpoint_but_not_in_model_is_a_clear_error():
    src = build(num_prompts=0, save_frozen=True)
    dst = MODELS.build(dict(type='PromptedVisionTransformer', **{**TINY, 'patch_bias': False}))
    with pytest.raises(ValueError, match='patch_bias=True'):
        dst.load_state_dict(src.state_dict(), strict=False)


def test_task_checkpoint_without_pretrained_file_is_a_clear_error():
    trained = build(num_prompts=2)
    fresh = MODELS.build(dict(type='PromptedVisionTransformer', num_prompts=2, **TINY))
    with pytest.raises(ValueError, match='only tuned parameters'):
        fresh.load_state_dict(trained.state_dict())


def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    m = MODELS.build(dict(type='PromptedVisionTransformer', **TINY, init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'nope.pth'))))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        m.init_weights()


@pytest.mark.parametrize('shape,match', [
    ((2, 3, 30, 32), 'not a multiple of the patch size'),
    ((2, 1, 32, 32), r'expects \(B, 3, H, W\)'),
    ((3, 32, 32), r'expects \(B, 3, H, W\)'),
])
def test_bad_input_sizes_are_clear_errors(shape, match):
    m = build(num_prompts=2, patch_pad=None)
    with pytest.raises(ValueError, match=match):
        m(torch.randn(*shape))


def test_corner_padding_keeps_mmseg_behaviour_for_other_sizes():
    m = build(num_prompts=2).eval()  # patch_pad='corner', MMSeg's default
    outs = m(torch.randn(1, 3, 30, 45))
    assert [o.shape for o in outs] == [(1, 32, 4, 6)] * 2


def test_frozen_exclude_conflicts_with_freeze():
    with pytest.raises(ValueError, match='frozen_exclude'):
        PromptedVisionTransformer(num_prompts=2, frozen_exclude=['bias'], **TINY)
    with pytest.raises(ValueError, match='tune_bias'):
        PromptedVisionTransformer(freeze=False, tune_bias=True, **TINY)


def test_deep_and_shallow_differ_and_prompts_change_outputs():
    deep = build(num_prompts=3, deep=True).eval()
    shallow = build(num_prompts=3, deep=False)
    shallow.load_state_dict({**deep.state_dict(), 'prompt.embeddings': deep.prompt.embeddings[:1]},
                            strict=False)
    shallow.eval()
    plain = build(num_prompts=0).eval()
    plain.load_state_dict(copy.deepcopy(deep.state_dict()), strict=False)
    image = torch.randn(1, 3, 32, 32)
    d, s, p = deep(image)[-1], shallow(image)[-1], plain(image)[-1]
    assert not torch.allclose(d, s) and not torch.allclose(s, p)
