import pytest
import torch

from vpt_seg.tuners.prompt import (
    PromptGroup,
    VisualPrompt,
    insert_prompts,
    remove_prompts,
    replace_prompts,
    run_prompted_layers,
    xavier_bound,
)


def _tokens(B=2, N=5, C=4, start=0.):
    return torch.arange(B * N * C, dtype=torch.float32).reshape(B, N, C) + start


def test_insert_replace_remove_round_trip():
    x = _tokens(N=5)                      # [CLS] + 4 patches
    p = -_tokens(N=3) - 1                 # 3 prompts
    y = insert_prompts(x, p, num_prefix=1)
    assert y.shape == (2, 8, 4)
    assert torch.equal(y[:, :1], x[:, :1]) and torch.equal(y[:, 1:4], p)
    assert torch.equal(y[:, 4:], x[:, 1:])
    q = p * 10
    z = replace_prompts(y, q, num_prefix=1)
    assert torch.equal(z[:, 1:4], q) and torch.equal(z[:, 4:], x[:, 1:])
    assert torch.equal(remove_prompts(z, 3, num_prefix=1), x)


@pytest.mark.parametrize('deep,layers,expected', [
    (True, None, (0, 1, 2, 3)),
    (False, None, (0,)),
    (True, [1, 2], (1, 2)),
])
def test_prompted_layers_and_parameter_shape(deep, layers, expected):
    vp = VisualPrompt(3, 8, num_layers=4, deep=deep, layers=layers)
    assert vp.layers == expected
    assert vp.embeddings.shape == (len(expected), 3, 8)
    x = torch.randn(2, 1 + 6, 8)
    seq = x
    for i in range(4):
        before = seq
        seq = vp(seq, i)
        if i in expected:
            assert seq.shape[1] == 1 + 3 + 6
            assert torch.equal(seq[:, 1:4], vp.embeddings[expected.index(i)].expand(2, -1, -1))
        else:
            assert seq is before  # pass-through (prompt outputs carried on, or none yet)
        assert vp.carries_prompts(i) == (i >= expected[0])
        assert vp.strip(seq, i).shape[1] == 7  # prompts never leave a layer's output
    assert torch.equal(vp.strip(seq, 3)[:, 1:], x[:, 1:])


def test_xavier_uniform_init_bound():
    vp = VisualPrompt(50, 64, num_layers=3, patch_size=16, in_channels=3)
    bound = xavier_bound(16, 3, 64)
    assert bound == pytest.approx((6 / (3 * 16 * 16 + 64)) ** 0.5)
    assert vp.embeddings.abs().max() <= bound
    assert vp.embeddings.abs().max() > 0.9 * bound  # uniform fills the interval


def test_disabled_prompt_is_identity_without_parameters():
    vp = VisualPrompt(0, 8, num_layers=4)
    assert list(vp.parameters()) == [] and vp.state_dict() == {}
    x = torch.randn(2, 7, 8)
    for i in range(4):
        assert vp(x, i) is x and vp.strip(x, i) is x


def test_dropout_only_in_training():
    vp = VisualPrompt(20, 16, num_layers=2, dropout=0.5)
    x = torch.zeros(1, 3, 16)
    vp.train()
    assert (vp(x, 0)[:, 1:21] == 0).any()
    vp.eval()
    assert torch.equal(vp(x, 0)[:, 1:21], vp.embeddings[0][None])


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_tokens=-1), 'num_tokens'),
    (dict(dropout=1.0), 'dropout'),
    (dict(init='kaiming'), 'init'),
    (dict(layers=[0, 7]), 'outside'),
])
def test_invalid_options_are_clear_errors(kwargs, match):
    args = dict(num_tokens=2, embed_dims=8, num_layers=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        VisualPrompt(**args)


def _attend(i, x, mask):
    """A toy block that mixes tokens (attention with the identity projections)."""
    scores = x @ x.transpose(1, 2) / x.shape[-1] ** 0.5                 # (B, N, N)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, 0], float('-inf'))
    return x + torch.tanh(scores.softmax(-1) @ x) * (i + 1)


@pytest.mark.parametrize('num_prefix', [0, 1, 5])
def test_mixed_groups_equal_each_group_alone(num_prefix):
    """run_prompted_layers on a batch of several tasks (other lengths, deep, shallow,
    a later first layer, none) gives each task what it gets alone."""
    torch.manual_seed(0)
    L, C = 4, 8
    prompts = [VisualPrompt(3, C, L, deep=True, num_prefix=num_prefix),
               VisualPrompt(5, C, L, deep=False, num_prefix=num_prefix),
               VisualPrompt(2, C, L, layers=[2, 3], num_prefix=num_prefix),
               VisualPrompt(0, C, L, num_prefix=num_prefix)]
    outs = [(1, 3), (3,), (0, 2, 3), (1,)]
    x = torch.randn(8, num_prefix + 6, C)
    index = [torch.tensor([0, 5]), torch.tensor([1, 2]), torch.tensor([3, 7]),
             torch.tensor([4, 6])]
    norm = torch.nn.LayerNorm(C)
    groups = [PromptGroup(p, idx, o, final_norm=k % 2 == 0)
              for k, (p, idx, o) in enumerate(zip(prompts, index, outs))]
    mixed = run_prompted_layers(x, groups, _attend, L, num_prefix, norm)
    for g, got in zip(groups, mixed):
        alone, = run_prompted_layers(x[g.index], [g._replace(index=None)], _attend, L,
                                     num_prefix, norm)
        assert sorted(got) == sorted(g.out_indices) == sorted(alone)
        for layer in got:
            assert got[layer].shape == (2, num_prefix + 6, C)
            torch.testing.assert_close(got[layer], alone[layer], rtol=1e-5, atol=1e-6)


def test_single_group_follows_the_recurrences():
    """One group: prompts inserted after the prefix at the first prompted layer, replaced
    at every later one, stripped from the outputs (VPT-deep written out)."""
    torch.manual_seed(0)
    L, C, K = 3, 8, 1
    prompt = VisualPrompt(4, C, L, deep=True, num_prefix=K)
    x = torch.randn(2, K + 5, C)
    got, = run_prompted_layers(x, [PromptGroup(prompt, None, (0, 2))], _attend, L, K)
    ref, h = {}, x
    for i in range(L):
        p = prompt.embeddings[i].expand(2, -1, -1)
        h = _attend(i, torch.cat([h[:, :K], p, h[:, K:] if i == 0 else h[:, K + 4:]], 1), None)
        ref[i] = torch.cat([h[:, :K], h[:, K + 4:]], 1)
    for layer in (0, 2):
        torch.testing.assert_close(got[layer], ref[layer])


@pytest.mark.parametrize('kwargs,message', [
    # what --cfg-options model.backbone.num_prompts=abc / =2.5 hand the backbone
    (dict(num_tokens='abc'), "num_prompts (num_tokens) must be an integer >= 0 (prompt "
     "tokens per prompted layer; 0 = no prompts), got 'abc' (str)"),
    (dict(num_tokens=2.5), 'num_prompts (num_tokens) must be an integer >= 0 (prompt tokens '
     'per prompted layer; 0 = no prompts), got 2.5 (float)'),
    (dict(num_tokens=True), 'num_prompts (num_tokens) must be an integer >= 0'),
    (dict(num_tokens=None), 'num_prompts (num_tokens) must be an integer >= 0'),
    (dict(deep='yes'), "deep must be True (VPT-deep) or False (VPT-shallow), got 'yes' (str)"),
    (dict(deep=2), 'deep must be True .* got 2 \\(int\\)'),
    (dict(layers=3), 'prompt_layers must be None or a list of layer indices in 0..3, e.g. '
     '\\[0, 1, 2\\] \\(overrides deep\\), got 3 \\(int\\)'),
    (dict(layers='012'), "prompt_layers must be None or a list .* got '012' \\(str\\)"),
    (dict(layers=[0, 1.5]), 'prompt_layers must be None or a list .* got \\[0, 1.5\\]'),
    (dict(layers=[0, 7]), 'prompt layers \\[7\\] are outside the 4 layers of the ViT'),
    (dict(dropout='abc'), "prompt_dropout \\(dropout\\) must be a probability in \\[0, 1\\), "
     "got 'abc' \\(str\\)"),
    (dict(dropout=1.0), 'prompt_dropout \\(dropout\\) must be a probability in \\[0, 1\\)'),
    (dict(dropout=-0.1), 'prompt_dropout \\(dropout\\) must be a probability'),
])
def test_option_of_the_wrong_type_is_named_with_what_it_accepts(kwargs, message):
    args = dict(num_tokens=2, embed_dims=8, num_layers=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message if '\\' in message else None) as err:
        VisualPrompt(**args)
    if '\\' not in message:
        assert message in str(err.value)


@pytest.mark.parametrize('option,value', [('num_prompts', 'abc'), ('num_prompts', 2.5),
                                          ('prompt_dropout', 'abc'), ('deep', 'abc')])
def test_backbone_option_from_the_command_line_is_a_value_error(option, value):
    """``--cfg-options model.backbone.num_prompts=abc``: a ValueError naming the option
    when the backbone is built, not a TypeError from deep inside it."""
    from mmseg.registry import MODELS

    import vpt_seg  # noqa: F401
    cfg = dict(type='PromptedVisionTransformer', img_size=(16, 16), patch_size=8,
               embed_dims=8, num_layers=2, num_heads=2, num_prompts=2)
    cfg[option] = value
    with pytest.raises(ValueError, match=option):
        MODELS.build(cfg)


def test_valid_options_are_normalised():
    vp = VisualPrompt(3, 8, num_layers=4, deep=1, layers=(2, 1, 2), dropout=0)
    assert vp.layers == (1, 2) and vp.num_tokens == 3 and vp.deep
