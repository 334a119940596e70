import pytest
import torch

from vpt_seg.prompt import (VisualPrompt, insert_prompts, remove_prompts, replace_prompts,
                            xavier_bound)


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
