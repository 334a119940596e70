"""LoRA on both backbone families: the merged model, the init, the gradients, the options.

The reference for each family is the model whose frozen weights have ``(alpha / r) B A``
merged in, computed here from the tensors (not by the package's own folding), run by
MMSeg's own layers (``fast_path=False``) or by timm's own forward."""
import copy

import pytest
import torch
from mmseg.registry import MODELS

import vpt_seg  # noqa: F401  (registers the backbones)

# isort: split

C = 32
MMSEG = dict(type='PromptedVisionTransformer', img_size=(32, 32), patch_size=8, embed_dims=C,
             num_layers=3, num_heads=4, mlp_ratio=2, out_indices=(0, 2), patch_bias=True,
             norm_cfg=dict(type='LN', eps=1e-6))
TIMM = [('vit_base_patch14_reg4_dinov2', 14), ('eva02_base_patch14_224', 14),
        ('vit_base_patch16_clip_224', 16)]
ALL = ('q', 'k', 'v', 'proj', 'fc1', 'fc2')


def timm_cfg(name, patch, **kwargs):
    return dict(type='PromptedTimmViT', model_name=name, img_size=3 * patch,
                model_kwargs=dict(embed_dim=C, depth=3, num_heads=2), out_indices=(0, 2),
                **kwargs)


def build(cfg, **kwargs):
    torch.manual_seed(0)
    m = MODELS.build(dict(cfg, **kwargs))
    m.init_weights()
    with torch.no_grad():  # non-trivial frozen biases and layer scales
        for n, p in m.named_parameters():
            if not n.startswith(('prompt', 'lora', 'adapter')):
                p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def randomize_lora(m):
    """B starts at zero; give A and B values so the update is not zero."""
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in m.lora.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2)


def merge_mmseg(m, ref):
    """``W += (alpha / r) B A`` on MMSeg's tensors (q/k/v are row blocks of in_proj)."""
    scale = m.lora.alpha / m.lora.rank
    with torch.no_grad():
        for i, sites in enumerate(m.lora.layers):
            layer = ref.layers[i]
            weights = {'proj': layer.attn.attn.out_proj.weight,
                       'fc1': layer.ffn.layers[0][0].weight, 'fc2': layer.ffn.layers[1].weight}
            for site, low in sites.items():
                update = scale * low.B @ low.A
                if site in 'qkv':
                    j = 'qkv'.index(site)
                    layer.attn.attn.in_proj_weight[j * C:(j + 1) * C] += update
                else:
                    weights[site] += update


def merge_timm(m, vit):
    """The same on a timm model: packed ``attn.qkv`` rows or EVA's q/k/v projections,
    SwiGLU's two input projections for fc1."""
    scale = m.lora.alpha / m.lora.rank
    with torch.no_grad():
        for i, sites in enumerate(m.lora.layers):
            block = vit.blocks[i]
            for site, low in sites.items():
                update = scale * low.B @ low.A
                if site in 'qkv' and hasattr(block.attn, 'qkv') and block.attn.qkv is not None:
                    d = block.attn.qkv.out_features // 3
                    j = 'qkv'.index(site)
                    block.attn.qkv.weight[j * d:(j + 1) * d] += update
                elif site in 'qkv':
                    getattr(block.attn, f'{site}_proj').weight.add_(update)
                elif site == 'proj':
                    block.attn.proj.weight.add_(update)
                else:
                    getattr(block.mlp, site).weight.add_(update)


CASES = [('mmseg', None)] + [(name, patch) for name, patch in TIMM]
IDS = ['mmseg', 'dinov2_reg4', 'eva02', 'clip']


def family_cfg(name, patch, **kwargs):
    return dict(MMSEG, **kwargs) if name == 'mmseg' else timm_cfg(name, patch, **kwargs)


def image(name, patch):
    torch.manual_seed(2)
    return torch.randn(2, 3, 32, 32) if name == 'mmseg' else torch.randn(2, 3, 3 * patch,
                                                                         3 * patch)


@pytest.mark.parametrize('num_prompts', [0, 2])
@pytest.mark.parametrize('name,patch', CASES, ids=IDS)
def test_lora_equals_the_model_with_the_update_merged(name, patch, num_prompts):
    lora = dict(rank=2, alpha=3, targets=ALL)
    m = build(family_cfg(name, patch, num_prompts=num_prompts, lora=lora))
    randomize_lora(m)
    x = image(name, patch)
    if name == 'mmseg':  # MMSeg's own layers, merged weights
        ref = build(dict(MMSEG, num_prompts=num_prompts, fast_path=False))
        own = dict(ref.named_parameters())
        with torch.no_grad():
            for n, p in m.named_parameters():
                if not n.startswith('lora.'):
                    own[n].copy_(p)
        merge_mmseg(m, ref)
        with torch.no_grad():
            theirs = ref(x)
    else:
        ref = copy.deepcopy(m)
        ref.lora = None
        merge_timm(m, ref.vit)
        with torch.no_grad():
            if num_prompts:  # the prompted forward without LoRA (pinned to timm elsewhere)
                theirs = ref(x)
            else:  # timm's own forward
                theirs = ref.vit.forward_intermediates(x, indices=[0, 2], output_fmt='NCHW',
                                                       intermediates_only=True, norm=False)
    with torch.no_grad():
        ours = m(x)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and LoRA does change the function (the update is not lost on the way)
    plain = copy.deepcopy(m)
    plain.lora = None
    with torch.no_grad():
        assert (plain(x)[-1] - ours[-1]).abs().max() > 1e-3


@pytest.mark.parametrize('name,patch', CASES, ids=IDS)
def test_a_fresh_lora_task_computes_the_frozen_model(name, patch):
    m = build(family_cfg(name, patch, lora=dict(rank=4, targets=ALL)))
    assert all(torch.count_nonzero(low.B) == 0 for layer in m.lora.layers
               for low in layer.values())
    plain = copy.deepcopy(m)
    plain.lora = None
    x = image(name, patch)
    with torch.no_grad():
        for a, b in zip(m(x), plain(x)):
            assert torch.equal(a, b)


@pytest.mark.parametrize('tune_bias', [False, True])
@pytest.mark.parametrize('name,patch', CASES, ids=IDS)
def test_gradients_reach_only_lora_prompts_and_what_else_is_tuned(name, patch, tune_bias):
    m = build(family_cfg(name, patch, num_prompts=2, tune_bias=tune_bias,
                         lora=dict(rank=2, targets=('q', 'v', 'fc2'))))
    randomize_lora(m)
    m.train()
    sum(o.square().sum() for o in m(image(name, patch))).backward()
    tuned = {n for n, p in m.named_parameters() if p.requires_grad}
    graded = {n for n, p in m.named_parameters()
              if p.grad is not None and p.grad.abs().sum() > 0}
    lora = {n for n in tuned if n.startswith('lora.')}
    assert len(lora) == 3 * 3 * 2  # layers x sites x (A, B)
    assert {n for n in tuned if not n.startswith(('lora.', 'prompt.'))} == (
        {n for n in tuned if n.rsplit('.', 1)[-1] in ('bias', 'in_proj_bias', 'q_bias', 'v_bias')}
        if tune_bias else set())
    # everything tuned gets a gradient except what cannot act on the outputs read
    # (biases of the unread last layer's tail are still read: out_indices has 2)
    assert lora <= graded
    assert graded <= tuned


def test_lora_with_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for with_cp in (False, True):
        m = build(dict(MMSEG, lora=dict(rank=2, targets=ALL), adapter=dict(width=4),
                       with_cp=with_cp))
        randomize_lora(m)
        m.train()
        m(image('mmseg', None))[-1].sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k])


@pytest.mark.parametrize('lora,match', [
    (dict(rank=0), r'lora\.rank must be an integer >= 1'),
    (dict(rank=2.5), r'lora\.rank must be an integer'),
    (dict(alpha=0), r'lora\.alpha must be a number > 0'),
    (dict(targets=['qkv']), r"lora\.targets \['qkv'\] name no layer"),
    (dict(targets=[]), r'lora\.targets must be a non-empty list'),
    (dict(dropout=1.0), r'lora\.dropout must be a probability'),
    (dict(ranks=4), r"lora: unknown keys \['ranks'\]"),
])
@pytest.mark.parametrize('name,patch', [CASES[0], CASES[2]], ids=['mmseg', 'eva02'])
def test_bad_lora_options_name_the_option(name, patch, lora, match):
    with pytest.raises(ValueError, match=match):
        MODELS.build(family_cfg(name, patch, lora=lora))


def test_eva_with_packed_qkv_and_separate_biases_is_refused_for_qkv_targets():
    cfg = timm_cfg('eva02_base_patch14_224', 14, lora=dict(targets=['q']))
    cfg['model_kwargs'] = dict(cfg['model_kwargs'], qkv_fused=True)
    with pytest.raises(ValueError, match='packs q/k/v with separate q/v biases'):
        MODELS.build(cfg)
    cfg['lora'] = dict(targets=['proj', 'fc1'])  # reachable
    m = MODELS.build(cfg)
    assert set(m.lora.layers[0]) == {'proj', 'fc1_g', 'fc1_x'}


def test_swiglu_fc1_names_both_input_projections():
    m = MODELS.build(timm_cfg('eva02_base_patch14_224', 14, lora=dict(targets=['fc1', 'k'])))
    assert set(m.lora.layers[0]) == {'fc1_g', 'fc1_x', 'k'}


def test_lora_task_checkpoint_onto_a_backbone_without_lora_names_the_option(tmp_path):
    m = build(dict(MMSEG, lora=dict(rank=2, targets=('q', 'fc1'))))
    state = {f'backbone.{k}': v for k, v in m.state_dict().items()}
    plain = build(MMSEG)
    with pytest.raises(ValueError, match=r'holds lora weights .* this backbone has lora=None'
                                          r'.*set model\.backbone\.lora'):
        plain.load_state_dict({k[9:]: v for k, v in state.items()}, strict=False)
    other = build(dict(MMSEG, lora=dict(rank=2, targets=('q',))))
    with pytest.raises(ValueError, match=r"lora\.layers\.0\.fc1\.A.*without these layers"):
        other.load_state_dict({k[9:]: v for k, v in state.items()}, strict=False)


def test_lora_parameters_are_a_part_of_their_own_in_the_report():
    from vpt_seg.tuners.tuning import parameter_report
    m = build(dict(MMSEG, num_prompts=2, lora=dict(rank=2, targets=('q', 'v'))))
    report = parameter_report(m, m, m.prompt)
    assert report['LoRA'] == dict(tuned=3 * 2 * (2 * C + C * 2), total=3 * 2 * (2 * C + C * 2))
    assert report['prompts']['tuned'] == 3 * 2 * C
    assert report['backbone biases']['tuned'] == 0
    assert report['total']['tuned'] == report['LoRA']['tuned'] + report['prompts']['tuned']


@pytest.mark.parametrize('name,patch', CASES, ids=IDS)
def test_fold_lora_merges_the_update_into_the_weights(name, patch):
    m = build(family_cfg(name, patch, num_prompts=2, tune_bias=True,
                         lora=dict(rank=2, alpha=4, targets=ALL)))
    randomize_lora(m)
    x = image(name, patch)
    with torch.no_grad():
        before = m(x)
        m.fold_lora()
        after = m(x)
    assert m.lora is None and not any(n.startswith('lora') for n, _ in m.named_parameters())
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
