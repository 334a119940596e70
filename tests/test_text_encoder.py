"""CoOpTextEncoder: the official CoOp equations over a tiny CLIP's own modules, the
zero-shot templates against open_clip, truncation, the cache, new class names, errors."""
import itertools

import open_clip
import pytest
import torch
from safetensors.torch import save_file

import vpt_seg  # noqa: F401  (before mmseg)

# isort: split
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from vpt_seg.models import text_encoder as text_encoder_module

init_default_scope('mmseg')
CLASSES = ['cat', 'traffic_light', 'bed ', 'fire hydrant', 'person']
NAMES = ['cat', 'traffic light', 'bed', 'fire hydrant', 'person']
TOWER = dict(embed_dims=64, num_layers=1, num_heads=1, output_dims=32)


def encoder(path, **kw):
    cfg = dict(type='CoOpTextEncoder', vocabulary=CLASSES, checkpoint=path, **TOWER)
    cfg.update(kw)
    enc = MODELS.build(cfg)
    enc.init_weights()
    return enc


# ------------------------------------------------------- the official equations
def official(clip, names, ctx, n_ctx, position, ctx_init):
    """KaiyangZhou/CoOp trainers/coop.py, PromptLearner.forward and TextEncoder.forward,
    over the tiny CLIP's modules and the full 77-token sequence."""
    tok = open_clip.get_tokenizer('ViT-B-16')
    prefix = ctx_init if ctx_init else ' '.join(['X'] * n_ctx)
    tokenized = tok([prefix + ' ' + name + '.' for name in names])            # (K, 77)
    embedding = clip.token_embedding(tokenized)
    name_lens = [len(tok.encode(name)) for name in names]
    token_prefix, token_suffix = embedding[:, :1], embedding[:, 1 + n_ctx:]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(len(names), -1, -1)
    if position == 'end':
        prompts = torch.cat([token_prefix, ctx, token_suffix], dim=1)
    else:
        half, rows = n_ctx // 2, []
        for i, n in enumerate(name_lens):
            pre, name, rest = token_prefix[i:i + 1], token_suffix[i:i + 1, :n], \
                token_suffix[i:i + 1, n:]
            c = ctx[i:i + 1]
            rows.append(torch.cat([pre, c[:, :half], name, c[:, half:], rest], 1)
                        if position == 'middle' else torch.cat([pre, name, c, rest], 1))
        prompts = torch.cat(rows, 0)
    x = prompts + clip.positional_embedding
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokenized.argmax(-1)] @ clip.text_projection
    return prompts, x / x.norm(dim=-1, keepdim=True), tokenized


CASES = list(itertools.product(('end', 'middle', 'front'), (False, True), (None, 'a photo of a')))


@pytest.mark.parametrize('position,csc,ctx_init', CASES,
                         ids=[f'{p}-{"csc" if c else "unified"}-{"init" if i else "random"}'
                              for p, c, i in CASES])
def test_official_equations(clip_file, position, csc, ctx_init):
    path, clip = clip_file
    enc = encoder(path, n_ctx=6, csc=csc, ctx_init=ctx_init, class_position=position).train()
    n_ctx = 4 if ctx_init else 6  # ctx_init: its BPE token count
    assert enc.ctx.shape == ((len(NAMES), n_ctx, 64) if csc else (n_ctx, 64))
    if ctx_init:  # the context starts as the words' embeddings (each class's, with CSC)
        tok = open_clip.get_tokenizer('ViT-B-16')
        words = clip.token_embedding(tok(ctx_init))[0, 1:1 + n_ctx]
        assert torch.equal(enc.ctx.detach(), words.detach().expand_as(enc.ctx))
    else:
        assert 0.015 < enc.ctx.std().item() < 0.025  # N(0, 0.02)
    with torch.no_grad():
        enc.ctx.add_(0.05 * torch.randn_like(enc.ctx))  # every class its own context
        prompts, feats, tokenized = official(clip, NAMES, enc.ctx, n_ctx, position, ctx_init)
    L = enc.token_ids.shape[1]
    assert torch.equal(enc.token_ids, tokenized[:, :L])  # our tokens are the official ones
    assert torch.allclose(enc.prompt_embeddings(), prompts[:, :L], atol=1e-6)
    ours = enc()
    assert ours.shape == (len(NAMES), 32)
    assert torch.allclose(ours, clip.logit_scale.exp() * feats, atol=1e-5)
    ours.square().sum().backward()
    tuned = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert tuned == ['prompt.ctx']
    assert enc.ctx.grad is not None and enc.ctx.grad.abs().sum() > 0
    if csc:  # each class's context gets its own gradient
        assert (enc.ctx.grad.flatten(1).abs().sum(1) > 0).all()
    assert all(p.grad is None for n, p in enc.named_parameters() if n != 'prompt.ctx')


def test_templates_match_open_clip(clip_file):
    """n_ctx=0: the hand-written prompts, as open_clip's encode_text sees them, with
    CLIP's prompt ensembling."""
    path, clip = clip_file
    templates = ['a photo of a {}.', 'a drawing of the {}.']
    tok = open_clip.get_tokenizer('ViT-B-16')
    with torch.no_grad():
        per = torch.stack([clip.encode_text(tok([t.format(n) for n in NAMES]), normalize=True)
                           for t in templates])
        mean = per.mean(0)
        ref = clip.logit_scale.exp() * mean / mean.norm(dim=-1, keepdim=True)
        single = clip.logit_scale.exp() * per[0]
    enc = encoder(path, n_ctx=0, templates=templates).eval()
    assert enc.ctx is None and not any(p.requires_grad for p in enc.parameters())
    assert torch.allclose(enc(), ref, atol=1e-5)
    one = encoder(path, n_ctx=0, templates='a photo of a {}.')
    assert torch.allclose(one(), single, atol=1e-5)
    vild = encoder(path, n_ctx=0, templates='vild', dataset_name='ade20k', vocabulary=None)
    assert vild.num_classes == 150 and 'bed' in vild.class_names  # MMSeg's 'bed ' cleaned
    assert len(vild.templates) == 14


def test_bin_file_and_hub_folder(clip_file, tmp_path):
    """open_clip_pytorch_model.bin (torch.load, weights only) in a hub folder reads as the
    safetensors file does."""
    path, clip = clip_file
    torch.save(clip.state_dict(), str(tmp_path / 'open_clip_pytorch_model.bin'))
    a, b = encoder(str(tmp_path), n_ctx=3), encoder(path, n_ctx=3)
    b.load_state_dict(a.state_dict())  # the same context
    with torch.no_grad():
        assert torch.equal(a(), b())


def test_checkpointing_same_features_and_gradients(clip_file):
    path, _ = clip_file
    plain, cp = encoder(path, n_ctx=3).train(), encoder(path, n_ctx=3, with_cp=True).train()
    cp.load_state_dict(plain.state_dict())
    a, b = plain(), cp()
    assert torch.allclose(a, b, atol=1e-6)
    a.square().sum().backward()
    b.square().sum().backward()
    assert torch.allclose(plain.ctx.grad, cp.ctx.grad, atol=1e-6)


def test_truncation_keeps_features(clip_file):
    """The causal mask: cutting after the longest prompt's end token changes nothing."""
    path, _ = clip_file
    enc = encoder(path, n_ctx=5, class_position='middle').eval()
    L = enc.token_ids.shape[1]
    assert L == int(enc.eot_index.max()) + 1 < 77
    full_ids = torch.zeros(len(NAMES), 77, dtype=torch.long)
    full_ids[:, :L] = enc.token_ids
    full_order = torch.arange(77).repeat(len(NAMES), 1)
    full_order[:, :L] = enc.token_order
    with torch.no_grad():
        prompts = enc.prompt(enc.text.token_embedding(full_ids), full_order)   # (K, 77, D)
        full = text_encoder_module.encode_prompts(enc.text, prompts, enc.eot_index)
        cut = text_encoder_module.encode_prompts(enc.text, enc.prompt_embeddings(),
                                                 enc.eot_index)
    assert torch.allclose(cut, full, atol=1e-6)


def test_cache(clip_file, monkeypatch):
    path, _ = clip_file
    calls = []
    real = text_encoder_module.encode_prompts

    def counting(*args):
        calls.append(1)
        return real(*args)
    monkeypatch.setattr(text_encoder_module, 'encode_prompts', counting)
    enc = encoder(path, n_ctx=4).eval()
    with torch.no_grad():
        first = enc()
        assert torch.equal(enc(), first) and len(calls) == 1  # cached
    # A training step changes the context: the cache must not survive it.
    enc.train()
    opt = torch.optim.SGD([enc.ctx], lr=0.5)
    enc().sum().backward()
    enc().sum().backward()
    assert len(calls) == 3  # training computes every call (a graph each step)
    opt.step()
    enc.eval()
    with torch.no_grad():
        after = enc()
        assert len(calls) == 4 and not torch.allclose(after, first)
        enc.ctx.add_(1.0)  # an in-place change without train(): the key sees it
        enc()
        assert len(calls) == 5
        enc.set_classes(['dog', 'cat'])  # another class list
        assert enc().shape == (2, 32) and len(calls) == 6
        enc()
        assert len(calls) == 6


def test_new_class_names(clip_file):
    """A unified context moves to other class names: the token buffers are not saved."""
    path, clip = clip_file
    enc = encoder(path, n_ctx=4).eval()
    with torch.no_grad():
        enc.ctx.normal_(std=0.1)
    state = enc.state_dict()
    assert set(state) == {'signature', 'prompt.ctx'}  # no tower, no token buffers
    other = encoder(path, n_ctx=4, vocabulary=['dog', 'red car']).eval()
    other.load_state_dict(state)
    with torch.no_grad():
        _, ref, _ = official(clip, ['dog', 'red car'], enc.ctx, 4, 'end', None)
        assert torch.allclose(other(), clip.logit_scale.exp() * ref, atol=1e-5)
        enc.set_classes(['dog', 'red_car'])
        assert torch.allclose(enc(), other(), atol=1e-6)
    csc = encoder(path, n_ctx=4, csc=True)
    with pytest.raises(ValueError, match=r'csc=True.*5 it was trained on'):
        csc.set_classes(['dog', 'red car'])


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize('kw,match', [
    (dict(vocabulary=['cat', ' '.join(['word'] * 80)]),
     r"class 'word word.*is 99 tokens \(80 for the name"),
    (dict(vocabulary=['cat', '']), r'position\(s\) \[1\] are empty'),
    (dict(vocabulary=['cat', 'dog', 'cat']), r"duplicate class name\(s\) \['cat'\]"),
    (dict(vocabulary=['traffic light', 'traffic_light']), r"duplicate.*'traffic light'"),
    (dict(vocabulary=None), r'exactly one of vocabulary'),
    (dict(dataset_name='ade20k'), r'exactly one of vocabulary'),
    (dict(ctx_init=' '.join(['a'] * 74)), r'tokenizes to 74 tokens \(BPE\), more than fit.*73'),
    (dict(class_position='start'), r"class_position='start'.*'end', 'middle', 'front'"),
    (dict(n_ctx=-1), r'n_ctx=-1: expected an integer >= 0'),
    (dict(n_ctx=74), r'n_ctx=74 is out of range.*at most 73'),
    (dict(n_ctx=72), r"class 'fire hydrant': its prompt is 78 tokens \(3 for the name"),
    (dict(n_ctx=0), r'n_ctx=0 learns no context: give hand-written templates'),
    (dict(templates=['a photo of a {}.']), r'templates are the hand-written prompts of n_ctx=0'),
    (dict(n_ctx=0, templates=['a photo']), r"one '\{\}'"),
    (dict(n_ctx=0, templates='nope'), r"'vild', 'imagenet'"),
    (dict(n_ctx=0, csc=True, templates='vild'), r'csc=True makes a context per class'),
])
def test_bad_options(kw, match):
    cfg = dict(type='CoOpTextEncoder', vocabulary=CLASSES, **TOWER)
    cfg.update(kw)
    with pytest.raises(ValueError, match=match):
        MODELS.build(cfg)


@pytest.mark.parametrize('kw,match', [
    (dict(embed_dims=32, num_heads=1), r'embed_dims=32 here, 64 in the file \(token_embedding'),
    (dict(output_dims=16), r'output_dims=16 here, 32 in the file \(text_projection\)'),
    (dict(num_layers=2), r'num_layers=2 here, 1 in the file'),
    (dict(total_vocab_size=49500), r'total_vocab_size=49500 here, 49408 in the file'),
])
def test_tower_shape_must_fit_the_file(clip_file, kw, match):
    path, _ = clip_file
    with pytest.raises(ValueError, match=match):
        encoder(path, **kw)


def test_file_without_text_tower(clip_file, tmp_path):
    _, clip = clip_file
    image_only = tmp_path / 'open_clip_model.safetensors'
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()
               if k.startswith('visual.')}, str(image_only))
    with pytest.raises(ValueError, match=r'holds no CLIP text tower.*missing token_embedding'
                                         r'.*top-level keys are visual.*image tower only'):
        encoder(str(tmp_path))  # the hub folder finds the file
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match=r'folder without open_clip_model.safetensors'):
        encoder(str(tmp_path / 'empty'))
    with pytest.raises(FileNotFoundError, match=r'CLIP weights not found.*'
                                                r'model.head.text_encoder.checkpoint'):
        encoder(str(tmp_path / 'nothing_here'))


def test_torchscript_refused(tmp_path):
    """OpenAI's original CLIP .pt is a TorchScript archive: never loaded."""
    script = torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    path = tmp_path / 'ViT-B-16.pt'
    script.save(str(path))
    with pytest.raises(ValueError, match=r'TorchScript archive.*never runs.*huggingface-cli '
                                         r'download timm/vit_base_patch16_clip_224.openai'):
        encoder(str(path))


def test_csc_task_with_another_class_count(clip_file):
    path, _ = clip_file
    state = encoder(path, n_ctx=4, csc=True).state_dict()
    other = encoder(path, n_ctx=4, csc=True, vocabulary=['dog', 'cat'])
    with pytest.raises(ValueError, match=r'class-specific context \(csc=True\) for 5 classes, '
                                         r'and the config names 2'):
        other.load_state_dict(state)
    unified = encoder(path, n_ctx=4)
    with pytest.raises(ValueError, match=r'context prompt.ctx is \(5, 4, 64\), here \(4, 64\)'):
        unified.load_state_dict(state)
