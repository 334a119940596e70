"""AdaptFormer's adapter on both backbone families: its equation written out here over
the libraries' own modules, the init, the gradients and the options."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from test_lora import CASES, IDS, MMSEG, build, family_cfg, image


def randomize_adapter(m):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in m.adapter.parameters():
            p.copy_(torch.randn_like(p) * 0.2)


def branch(m, i, h):
    """s * up(ReLU(down(h))), from the adapter's tensors."""
    a = m.adapter.layers[i]
    return m.adapter.scale * F.linear(F.relu(F.linear(h, a.down.weight, a.down.bias)),
                                      a.up.weight, a.up.bias)


def mmseg_reference(m, x):
    """x_l' = x + Attn(LN1(x)); x_{l+1} = x_l' + MLP(LN2(x_l')) + s * adapter(LN2(x_l')),
    over MMSeg's own modules."""
    tokens, hw = m.patch_embed(x)
    tokens = torch.cat([m.cls_token.expand(len(x), -1, -1), tokens], 1)
    tokens = m._pos_embeding(tokens, hw, m.pos_embed)
    outs = []
    for i, layer in enumerate(m.layers):
        tokens = layer.attn(layer.ln1(tokens), identity=tokens)
        h = layer.ln2(tokens)
        tokens = layer.ffn(h, identity=tokens) + branch(m, i, h)
        if i in m.out_indices:
            outs.append(tokens[:, 1:].transpose(1, 2).reshape(len(x), -1, *hw))
    return outs


def timm_reference(m, x):
    """The same over timm's modules; the adapter branch is outside LayerScale (ls2,
    EVA's gamma_2) and drop-path."""
    vit = m.vit
    tokens = vit.patch_embed(x)
    eva = isinstance(vit, timm.models.eva.Eva)
    tokens, rope = vit._pos_embed(tokens) if eva else (vit._pos_embed(tokens), None)
    tokens = vit.norm_pre(tokens)
    K, grid = vit.num_prefix_tokens, x.shape[-1] // m.patch_size
    outs = []
    for i, blk in enumerate(vit.blocks):
        a = blk.attn(blk.norm1(tokens), rope=rope) if eva else blk.attn(blk.norm1(tokens))
        a = (a if blk.gamma_1 is None else blk.gamma_1 * a) if eva else blk.ls1(a)
        tokens = tokens + a
        h = blk.norm2(tokens)
        f = blk.mlp(h)
        f = (f if blk.gamma_2 is None else blk.gamma_2 * f) if eva else blk.ls2(f)
        tokens = tokens + f + branch(m, i, h)
        if i in m.out_indices:
            outs.append(tokens[:, K:].reshape(len(x), grid, grid, -1).permute(0, 3, 1, 2))
    return outs


@pytest.mark.parametrize('name,patch', CASES, ids=IDS)
def test_adapter_equals_adaptformer_written_out(name, patch):
    cfg = family_cfg(name, patch, adapter=dict(width=5, scale=0.7))
    if name != 'mmseg':
        cfg['model_kwargs'] = dict(cfg['model_kwargs'], init_values=0.5)  # LayerScale on
    m = build(cfg)
    randomize_adapter(m)
    x = image(name, patch)
    with torch.no_grad():
        ours = m(x)
        theirs = mmseg_reference(m, x) if name == 'mmseg' else timm_reference(m, x)
        plain = copy.deepcopy(m)
        plain.adapter = None
        assert (plain(x)[-1] - ours[-1]).abs().max() > 1e-3  # the branch acts
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name,patch', CASES, ids=IDS)
def test_a_fresh_adapter_task_computes_the_frozen_model(name, patch):
    m = build(family_cfg(name, patch, adapter=dict(width=8)))
    for a in m.adapter.layers:
        assert torch.count_nonzero(a.up.weight) == 0 and torch.count_nonzero(a.up.bias) == 0
        assert torch.count_nonzero(a.down.weight) > 0 and torch.count_nonzero(a.down.bias) == 0
    plain = copy.deepcopy(m)
    plain.adapter = None
    x = image(name, patch)
    with torch.no_grad():
        for a, b in zip(m(x), plain(x)):
            assert torch.equal(a, b)


def test_mmseg_random_init_does_not_redraw_the_zero_up_projection():
    """MMSeg's VisionTransformer.init_weights (no pretrained file) re-initialises every
    nn.Linear it holds; the adapter's up-projection must stay zero."""
    m = MODELS.build(dict(MMSEG, adapter=dict(width=8)))
    m.init_weights()
    assert all(torch.count_nonzero(a.up.weight) == 0 for a in m.adapter.layers)


@pytest.mark.parametrize('name,patch', CASES, ids=IDS)
def test_gradients_reach_only_the_adapters_and_prompts(name, patch):
    m = build(family_cfg(name, patch, num_prompts=2, adapter=dict(width=4)))
    randomize_adapter(m)
    m.train()
    assert m.adapter.training and not any(
        mod.training for n, mod in m.named_modules() if n.startswith(('vit.', 'layers.')))
    m(image(name, patch))[-1].square().sum().backward()
    tuned = {n for n, p in m.named_parameters() if p.requires_grad}
    graded = {n for n, p in m.named_parameters() if p.grad is not None}
    assert tuned == {n for n, _ in m.named_parameters() if n.startswith(('adapter.', 'prompt.'))}
    assert graded == tuned


@pytest.mark.parametrize('adapter,match', [
    (dict(width=0), r'adapter\.width must be an integer >= 1'),
    (dict(scale='0.1'), r'adapter\.scale must be a number'),
    (dict(dropout=-0.1), r'adapter\.dropout must be a probability'),
    (dict(bottleneck=8), r"adapter: unknown keys \['bottleneck'\]"),
    (64, r'adapter must be None or a dict'),
])
@pytest.mark.parametrize('name,patch', [CASES[0], CASES[1]], ids=['mmseg', 'dinov2_reg4'])
def test_bad_adapter_options_name_the_option(name, patch, adapter, match):
    with pytest.raises(ValueError, match=match):
        MODELS.build(family_cfg(name, patch, adapter=adapter))


def test_adapter_task_checkpoint_onto_a_backbone_without_adapters_names_the_option():
    m = build(dict(MMSEG, adapter=dict(width=4)))
    with pytest.raises(ValueError, match=r'holds adapter weights .*adapter=None'):
        build(MMSEG).load_state_dict(m.state_dict(), strict=False)
