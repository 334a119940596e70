"""PromptedTimmViT against timm's own models, per family, and the paper's recurrences.

Each family is a tiny model timm itself builds (width 32, 3 layers, 3x3 patches), saved
with random weights as the hub publishes it (model.safetensors); the equality tests run on
$VPT_SEG_TEST_DEVICE (CPU by default)."""
import copy
import glob
import json
import logging
import os.path as osp
import re
import shutil

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import ROOT, run_tool
from mmengine.logging import MMLogger
from mmseg.registry import MODELS
from safetensors.torch import save_file
from timm.layers import apply_rot_embed_cat

from vpt_seg.tuners.tuning import bias_parameters

TINY = dict(embed_dim=32, depth=3, num_heads=2)
GRID = 3  # tiny inputs: GRID x GRID patches (img_size = GRID * patch)

#: One tiny model per family, built by timm itself: (name, patch size).
FAMILIES = [
    ('vit_base_patch16_224.augreg_in21k', 16),
    ('deit3_base_patch16_224', 16),
    ('vit_base_patch14_dinov2', 14),
    ('vit_base_patch14_reg4_dinov2', 14),
    ('eva02_base_patch14_224', 14),
    ('eva02_large_patch14_448', 14),
    ('vit_base_patch16_clip_224', 16),
    ('vit_base_patch16_siglip_224', 16),
    ('vit_base_patch16_224.mae', 16),
]
IDS = ['vit_augreg', 'deit3', 'dinov2', 'dinov2_reg4', 'eva02_b', 'eva02_l448', 'clip', 'siglip',
       'mae']


def reference(name, patch, **kwargs):
    """timm's own model of the family (random weights, eval mode)."""
    return timm.create_model(name, pretrained=False, num_classes=0, img_size=GRID * patch,
                             dynamic_img_size=True, **dict(TINY, **kwargs)).eval()


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Each family's tiny model saved as the hub publishes it: model.safetensors."""
    out = {}
    for name, patch in FAMILIES:
        torch.manual_seed(0)
        ref = reference(name, patch)
        with torch.no_grad():  # layer-scale gammas and zero biases would hide mistakes
            for p in ref.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        path = tmp_path_factory.mktemp(name.replace('.', '_')) / 'model.safetensors'
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
        out[name] = (str(path), ref)
    return out


def build(name, patch, checkpoint, **kwargs):
    cfg = dict(type='PromptedTimmViT', model_name=name, checkpoint=checkpoint,
               model_kwargs=dict(TINY), img_size=GRID * patch, out_indices=(0, 1, 2))
    cfg.update(kwargs)
    model = MODELS.build(cfg)
    model.init_weights()
    return model.eval()


def image(patch, batch=2, grid=GRID):
    return torch.randn(batch, 3, grid * patch, grid * patch)


def last_norm(ref):
    """The LayerNorm final_norm applies: norm, or fc_norm where norm is Identity (EVA02)."""
    return ref.fc_norm if isinstance(ref.norm, torch.nn.Identity) else ref.norm


# --------------------------------------------------------------- equality, no prompts
@pytest.mark.parametrize('final_norm', [False, True])
@pytest.mark.parametrize('name,patch', FAMILIES, ids=IDS)
def test_no_prompts_equals_timm_forward_intermediates(files, name, patch, final_norm, device):
    path, ref = files[name]
    ref = copy.deepcopy(ref).to(device)
    m = build(name, patch, path, final_norm=final_norm).to(device)
    x = image(patch).to(device)
    with torch.no_grad():
        ours = m(x)
        theirs = ref.forward_intermediates(x, indices=[0, 1, 2], output_fmt='NCHW',
                                           intermediates_only=True, norm=False)
        if final_norm:
            if isinstance(ref.norm, torch.nn.Identity):  # EVA02: fc_norm, token-wise
                tokens = ref.forward_intermediates(x, indices=[2], output_fmt='NLC',
                                                   intermediates_only=True)[0]
                theirs[2] = ref.fc_norm(tokens).reshape(2, GRID, GRID, -1).permute(0, 3, 1, 2)
            else:
                theirs[2] = ref.forward_intermediates(x, indices=[2], output_fmt='NCHW',
                                                      intermediates_only=True, norm=True)[0]
    assert len(ours) == 3
    for a, b in zip(ours, theirs):
        assert a.shape == (2, 32, GRID, GRID)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_eva02_final_norm_is_fc_norm_token_wise(files):
    """timm's EVA02 has norm=Identity and the MIM final norm in fc_norm (after the pool):
    final_norm applies fc_norm to every token of the last layer, and only there."""
    name, patch = 'eva02_base_patch14_224', 14
    path, ref = files[name]
    assert isinstance(ref.norm, torch.nn.Identity) and isinstance(ref.fc_norm, torch.nn.LayerNorm)
    plain, normed = build(name, patch, path), build(name, patch, path, final_norm=True)
    assert 'fc_norm.weight' not in dict(plain.vit.named_parameters())
    x = image(patch)
    with torch.no_grad():
        a, b = plain(x), normed(x)
        expect = F.layer_norm(a[2].permute(0, 2, 3, 1), (32,), ref.fc_norm.weight,
                              ref.fc_norm.bias, ref.fc_norm.eps).permute(0, 3, 1, 2)
    torch.testing.assert_close(a[:2], b[:2], rtol=0, atol=0)
    torch.testing.assert_close(b[2], expect, rtol=1e-5, atol=1e-5)


def test_final_norm_without_a_norm_is_refused():
    with pytest.raises(ValueError, match='no last LayerNorm'):
        MODELS.build(dict(type='PromptedTimmViT', model_name='vit_base_patch16_224',
                          model_kwargs=dict(TINY, final_norm=False), img_size=48,
                          final_norm=True))


# ---------------------------------------------------------- the paper, written out
def _eva_block(block, x, rope, skip):
    """timm's EvaBlock written out, with RoPE on the tokens after the first ``skip``."""
    attn = block.attn
    B, N, C = x.shape
    h = block.norm1(x)
    q, k, v = (proj(h).reshape(B, N, attn.num_heads, -1).transpose(1, 2)
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    q = torch.cat([q[:, :, :skip], apply_rot_embed_cat(q[:, :, skip:], rope)], 2)
    k = torch.cat([k[:, :, :skip], apply_rot_embed_cat(k[:, :, skip:], rope)], 2)
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
    a = attn.proj(attn.norm(a))
    x = x + (block.gamma_1 * a if block.gamma_1 is not None else a)
    f = block.mlp(block.norm2(x))
    return x + (block.gamma_2 * f if block.gamma_2 is not None else f)


def paper_forward(ref, m, x):
    """VPT (Jia et al., eqs. 5-7) over timm's blocks, K = prefix tokens ([CLS], registers):
    deep:    [x_i, _, E_i] = L_i([x_{i-1}, P_{i-1}, E_{i-1}]);
    shallow: [x_1, Z_1, E_1] = L_1([x_0, P, E_0]), then Z_i flows on.
    Prompts get no position embedding and no rotary embedding; maps drop them."""
    K = ref.num_prefix_tokens
    tokens = ref.patch_embed(x)
    if isinstance(ref, timm.models.eva.Eva):
        seq, rope = ref._pos_embed(tokens)
    else:
        seq, rope = ref._pos_embed(tokens), None
    seq = ref.norm_pre(seq)
    P = m.prompt.embeddings
    n = P.shape[1]
    outs = []
    for i, block in enumerate(ref.blocks):
        if i == 0:
            seq = torch.cat([seq[:, :K], P[0].expand(len(x), -1, -1), seq[:, K:]], 1)
        elif m.prompt.deep:
            seq = torch.cat([seq[:, :K], P[i].expand(len(x), -1, -1), seq[:, K + n:]], 1)
        seq = _eva_block(block, seq, rope, K + n) if rope is not None else block(seq)
        patches = seq[:, K + n:]
        outs.append(patches.reshape(len(x), GRID, GRID, -1).permute(0, 3, 1, 2))
    return outs


@pytest.mark.parametrize('deep', [True, False], ids=['deep', 'shallow'])
@pytest.mark.parametrize('name,patch', FAMILIES, ids=IDS)
def test_prompts_follow_the_paper(files, name, patch, deep, device):
    path, ref = files[name]
    ref = copy.deepcopy(ref).to(device)
    m = build(name, patch, path, num_prompts=3, deep=deep).to(device)
    x = image(patch).to(device)
    with torch.no_grad():
        ours, theirs = m(x), paper_forward(ref, m, x)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_rope_skips_prefix_and_prompt_slots(files):
    """RoPE rotates the patches only: each EVA block skips [CLS] and the prompt slots it
    sees (none before a later first prompted layer)."""
    name, patch = 'eva02_base_patch14_224', 14
    path, _ = files[name]
    x = image(patch)
    with torch.no_grad():
        m = build(name, patch, path, num_prompts=3)
        prompted = m(x)[2]
        assert [b.attn.num_prefix_tokens for b in m.vit.blocks] == [1 + 3] * 3
        later = build(name, patch, path, num_prompts=3, prompt_layers=[1])
        later(x)
        assert [b.attn.num_prefix_tokens for b in later.vit.blocks] == [1, 4, 4]
        assert not torch.allclose(prompted, build(name, patch, path)(x)[2])


@pytest.mark.parametrize('name,patch', [FAMILIES[3], FAMILIES[4], FAMILIES[7]],
                         ids=[IDS[3], IDS[4], IDS[7]])
def test_mixed_batch_through_the_one_layer_loop_gives_each_task_its_own(files, name, patch):
    """run_prompted_layers with two tasks on one frozen timm ViT (3 deep prompts; 1 shallow
    prompt from layer 1 on): timm's attn_mask hides the unused slots, RoPE skips them."""
    from functools import partial

    from vpt_seg.tuners.prompt import PromptGroup, run_prompted_layers
    path, _ = files[name]
    a = build(name, patch, path, num_prompts=3, deep=True)
    b = build(name, patch, path, num_prompts=1, prompt_layers=[1])
    x = image(patch, batch=4)
    ia, ib = torch.tensor([0, 2]), torch.tensor([1, 3])
    with torch.no_grad():
        tokens, hw = a.embed_patches(x)
        tokens = a.norm_pre(a.add_prefix(tokens, hw))
        groups = [PromptGroup(a.prompt, ia, a.out_indices),
                  PromptGroup(b.prompt, ib, b.out_indices)]
        block = partial(a.run_block, rope=a.rotary_embedding(hw))
        feats = run_prompted_layers(tokens, groups, block, 3, a.num_prefix_tokens, a.norm_out)
        for model, index, out in ((a, ia, feats[0]), (b, ib, feats[1])):
            for got, alone in zip([model.to_map(out[i], hw) for i in sorted(out)], model(x[index])):
                torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- what is tuned
@pytest.mark.parametrize('tune_bias', [False, True], ids=['prompts', 'prompts+bias'])
@pytest.mark.parametrize('name,patch', [FAMILIES[3], FAMILIES[4], FAMILIES[7]],
                         ids=[IDS[3], IDS[4], IDS[7]])
def test_gradients_reach_only_tuned_parameters(files, name, patch, tune_bias, device):
    path, _ = files[name]
    m = build(name, patch, path, num_prompts=2, tune_bias=tune_bias, prompt_dropout=0.1)
    m.to(device).train()
    sum(o.square().mean() for o in m(image(patch).to(device))).backward()
    biases = {id(p) for _, p in bias_parameters(m.vit)}
    for pname, p in m.named_parameters():
        tuned = pname == 'prompt.embeddings' or (tune_bias and id(p) in biases)
        assert p.requires_grad == tuned, pname
        if not tuned:
            assert p.grad is None, pname
    assert m.prompt.embeddings.grad.abs().sum() > 0
    if tune_bias:
        assert m.vit.blocks[0].attn.proj.bias.grad.abs().sum() > 0


def test_tune_bias_says_which_biases_are_tuned(files):
    """EVA02 has no key bias: the log line says so instead of leaving it to guesswork."""
    name, patch = 'eva02_base_patch14_224', 14
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        m = build(name, patch, files[name][0], tune_bias=True)
    finally:
        logger.removeHandler(handler)
    line = next(r.getMessage() for r in records if 'tune_bias' in r.getMessage())
    assert 'blocks.*.attn.q_proj.bias' in line and 'blocks.*.attn.v_proj.bias' in line
    assert 'without a bias' in line and 'blocks.*.attn.k_proj' in line
    assert not m.vit.blocks[0].attn.k_proj.weight.requires_grad


def test_train_mode_keeps_frozen_parts_in_eval(files):
    name, patch = FAMILIES[3]
    m = build(name, patch, files[name][0], num_prompts=2, prompt_dropout=0.5,
              model_kwargs=dict(TINY, drop_path_rate=0.5, proj_drop_rate=0.5))
    m.train()
    assert m.training and m.prompt.training and not m.vit.training
    assert not any(mod.training for mod in m.vit.modules())


def test_with_cp_gives_the_same_outputs_and_gradients(files):
    name, patch = FAMILIES[4]
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        m = build(name, patch, files[name][0], num_prompts=2, tune_bias=True, with_cp=with_cp)
        torch.manual_seed(1)
        out = m(image(patch))
        sum(o.sum() for o in out).backward()
        grads.append([out[-1].detach()] + [p.grad for p in m.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------- patch 14 on crops that are not multiples
def test_patch_size_16_resamples_a_patch14_model_like_timm(files):
    """512 crops on DINOv2/14: build with patch_size=16; the patch kernel and position grid
    are resampled once at load, exactly as timm itself loads the file into a patch-16 model."""
    name, patch = 'vit_base_patch14_reg4_dinov2', 14
    path, _ = files[name]
    m = build(name, patch, path, patch_size=16, img_size=64, out_indices=(2,))
    assert m.patch_size == 16 and m.vit.patch_embed.proj.weight.shape[-2:] == (16, 16)
    x = torch.randn(2, 3, 64, 64)  # 64 = 4 x 16, not a multiple of 14
    ref = timm.create_model(name, pretrained=False, num_classes=0, img_size=64, patch_size=16,
                            dynamic_img_size=True, **TINY).eval()
    timm.models.load_checkpoint(
        ref, path, filter_fn=timm.models.vision_transformer.checkpoint_filter_fn, strict=False)
    with torch.no_grad():
        ours = m(x)[0]
        theirs = ref.forward_intermediates(x, indices=[2], intermediates_only=True)[0]
    assert ours.shape == (2, 32, 4, 4)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # Without the override, at sizes that are multiples of 14, it is timm's own model.
    native, x14 = build(name, patch, path, out_indices=(2,)), image(14)
    with torch.no_grad():
        torch.testing.assert_close(native(x14)[0], files[name][1].forward_intermediates(
            x14, indices=[2], intermediates_only=True)[0], rtol=1e-5, atol=1e-5)


def test_patch_size_16_for_eva02_too(files):
    name, patch = 'eva02_base_patch14_224', 14
    m = build(name, patch, files[name][0], patch_size=16, img_size=64, num_prompts=2)
    assert [o.shape for o in m(torch.randn(1, 3, 64, 64))] == [(1, 32, 4, 4)] * 3


def test_input_not_a_multiple_of_the_patch_is_a_clear_error(files):
    name, patch = FAMILIES[2]
    m = build(name, patch, files[name][0])
    with pytest.raises(ValueError, match='not a multiple of the patch size 14.*patch_size=16'):
        m(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match='img_size 64x64 is not a multiple'):
        build(name, patch, None, img_size=64)


def test_other_input_sizes_resample_the_position_grid(files):
    name, patch = FAMILIES[0]
    path, ref = files[name]
    m = build(name, patch, path)
    x = image(patch, grid=5)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[2], ref.forward_intermediates(
            x, indices=[2], intermediates_only=True)[0], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- files
def _same_weights(m, ref):
    theirs = ref.state_dict()
    for k, v in m.vit.state_dict().items():
        assert torch.equal(v, theirs[k]), k


@pytest.mark.parametrize('layout', ['safetensors', 'hub-bin', 'hub-safetensors', 'pth',
                                    'meta-pth'])
def test_checkpoint_round_trip_in_the_published_formats(files, tmp_path, layout):
    name, patch = FAMILIES[3]
    path, ref = files[name]
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if layout == 'safetensors':
        target = path
    elif layout.startswith('hub'):
        target = tmp_path / 'hub'
        target.mkdir()
        if layout == 'hub-bin':
            torch.save(state, target / 'pytorch_model.bin')
        else:
            save_file(state, str(target / 'model.safetensors'))
        (target / 'config.json').write_text(json.dumps(
            dict(architecture=name, num_classes=0, pretrained_cfg=dict(tag='lvd142m'))))
    elif layout == 'pth':
        target = tmp_path / 'checkpoint.pth'
        torch.save(dict(state_dict={f'module.{k}': v for k, v in state.items()}, epoch=3), target)
    else:  # DINOv2 as Meta publishes it: register_tokens, mask_token, [CLS] slot in pos_embed
        target = tmp_path / 'dinov2_vitb14_reg4_pretrain.pth'
        meta = dict(state, register_tokens=state.pop('reg_token'), mask_token=torch.zeros(1, 32))
        meta['pos_embed'] = torch.cat([torch.zeros(1, 1, 32), state['pos_embed']], 1)
        torch.save(meta, target)
    m = build(name, patch, str(target))
    _same_weights(m, ref)
    assert m.pretrained_file == str(target)


def test_task_state_dict_holds_only_tuned_and_reloads_frozen(files, tmp_path):
    name, patch = FAMILIES[4]
    path, _ = files[name]
    trained = build(name, patch, path, num_prompts=2, tune_bias=True)
    with torch.no_grad():
        trained.prompt.embeddings.add_(1.0)
        trained.vit.blocks[0].attn.proj.bias.add_(1.0)
    state = trained.state_dict()
    tuned = {k for k, p in trained.named_parameters() if p.requires_grad}
    assert set(state) == tuned | {'signature'}
    torch.save(state, tmp_path / 'task.pth')
    fresh = MODELS.build(dict(type='PromptedTimmViT', model_name=name, checkpoint=path,
                              model_kwargs=dict(TINY), img_size=GRID * patch,
                              out_indices=(0, 1, 2), num_prompts=2, tune_bias=True)).eval()
    fresh.load_state_dict(torch.load(tmp_path / 'task.pth'))  # frozen: from `checkpoint`
    x = image(patch)
    with torch.no_grad():
        for a, b in zip(fresh(x), trained(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert fresh.frozen_digest() == trained.frozen_digest()


def test_task_checkpoint_refuses_other_frozen_weights_and_other_backbones(files, tmp_path):
    name, patch = FAMILIES[3]
    path, _ = files[name]
    trained = build(name, patch, path, num_prompts=2)
    state = trained.state_dict()
    other = build(FAMILIES[2][0], 14, files[FAMILIES[2][0]][0], num_prompts=2)  # no registers
    with pytest.raises(ValueError, match='another ViT.*num_prefix_tokens 5 in the checkpoint'):
        other.load_state_dict(state)
    # Same architecture, other frozen weights: refused by the recorded sha256.
    digest = trained.frozen_digest()
    ref2 = reference(name, patch)
    save_file({k: v.contiguous() for k, v in ref2.state_dict().items()},
              str(tmp_path / 'o.safetensors'))
    fresh = MODELS.build(dict(type='PromptedTimmViT', model_name=name,
                              checkpoint=str(tmp_path / 'o.safetensors'), model_kwargs=dict(TINY),
                              img_size=GRID * patch, out_indices=(0, 1, 2), num_prompts=2))
    state._metadata[''] = dict(state._metadata.get('', {}), frozen_sha256=digest, pretrained=[])
    with pytest.raises(ValueError, match='holds the frozen weights this task was trained on'):
        fresh.load_state_dict(state)
    # Some frozen weights but not all: refused, naming them.
    leaked = dict(trained.state_dict())
    leaked['vit.blocks.0.attn.proj.weight'] = trained.vit.blocks[0].attn.proj.weight.detach()
    with pytest.raises(ValueError, match='vit.blocks.0.attn.proj.weight'):
        build(name, patch, path, num_prompts=2).load_state_dict(leaked)


def test_named_checkpoint_is_the_users_word(files, tmp_path):
    """--cfg-options model.backbone.checkpoint=... sets prefer_configured (the tools'
    mark_named_pretrained): a task then loads its frozen weights from that file only,
    whose sha256 must match; an inherited checkpoint leaves the recorded file first."""
    from mmengine.config import Config

    from vpt_seg.tool_config import mark_named_pretrained
    cfg = Config(dict(model=dict(backbone=dict(type='PromptedTimmViT', model_name='x'))))
    assert 'prefer_configured' not in mark_named_pretrained(
        copy.deepcopy(cfg), {'model.backbone.num_prompts': 1}).model.backbone
    assert mark_named_pretrained(cfg, {'model.backbone.checkpoint': 'f'}).model.backbone[
        'prefer_configured'] is True
    name, patch = FAMILIES[3]
    path, _ = files[name]
    state = build(name, patch, path, num_prompts=2).state_dict()
    other = tmp_path / 'other.safetensors'
    save_file({k: v.contiguous() for k, v in reference(name, patch).state_dict().items()},
              str(other))
    kwargs = dict(type='PromptedTimmViT', model_name=name, checkpoint=str(other),
                  model_kwargs=dict(TINY), img_size=GRID * patch, num_prompts=2)
    MODELS.build(kwargs).load_state_dict(state)  # recorded file first: loads
    with pytest.raises(ValueError, match='other.safetensors'):
        MODELS.build(dict(kwargs, prefer_configured=True)).load_state_dict(state)


def test_full_checkpoint_with_save_frozen(files):
    name, patch = FAMILIES[0]
    path, ref = files[name]
    m = build(name, patch, path, num_prompts=2, save_frozen=True)
    state = m.state_dict()
    assert 'vit.blocks.0.attn.qkv.weight' in state
    fresh = MODELS.build(dict(type='PromptedTimmViT', model_name=name, model_kwargs=dict(TINY),
                              img_size=GRID * patch, out_indices=(0, 1, 2), num_prompts=2))
    fresh.load_state_dict(state)
    _same_weights(fresh, ref)


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize('model_name', ['resnet18', 'swin_tiny_patch4_window7_224',
                                        'vit_base_r50_s16_224', 'no_such_model'])
def test_not_a_vit_names_the_supported_families(model_name):
    with pytest.raises(ValueError, match='DINOv2.*EVA02.*SigLIP'):
        MODELS.build(dict(type='PromptedTimmViT', model_name=model_name))


def test_weights_of_another_model_name_the_keys_and_shapes(files):
    name, patch = FAMILIES[0]
    wider = files[FAMILIES[6][0]][0]  # CLIP: norm_pre, no patch bias
    with pytest.raises(ValueError, match=r'another model.*not in this model: norm_pre'):
        build(name, patch, wider)
    big = reference(name, patch, embed_dim=64)
    path = osp.join(osp.dirname(files[name][0]), 'big.safetensors')
    save_file({k: v.contiguous() for k, v in big.state_dict().items()}, path)
    with pytest.raises(ValueError, match=r'shapes differ: cls_token: \(1, 1, 64\) in the file, '
                                         r'\(1, 1, 32\) here'):
        build(name, patch, path)


def test_hub_folder_of_another_architecture_is_refused(files, tmp_path):
    name, patch = FAMILIES[3]
    save_file({k: v.contiguous() for k, v in files[name][1].state_dict().items()},
              str(tmp_path / 'model.safetensors'))
    (tmp_path / 'config.json').write_text(json.dumps(dict(architecture='eva02_base_patch14_224')))
    with pytest.raises(ValueError, match="architecture 'eva02_base_patch14_224'"):
        build(name, patch, str(tmp_path))


def test_missing_file_names_the_path_and_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r'nowhere\.safetensors.*model\.backbone\.checkpoint'):
        build('vit_base_patch16_224', 16, str(tmp_path / 'nowhere.safetensors'))
    with pytest.raises(FileNotFoundError, match='folder without model.safetensors'):
        build('vit_base_patch16_224', 16, str(tmp_path))
    with pytest.raises(ValueError, match='local files only'):
        build('vit_base_patch16_224', 16, 'hf-hub:timm/vit_base_patch16_224.augreg_in21k')


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / 'model.safetensors'
    bad.write_bytes(b'not weights')
    with pytest.raises(ValueError, match='model.safetensors'):
        build('vit_base_patch16_224', 16, str(bad))


@pytest.mark.parametrize('options,match', [
    (dict(model_kwargs=dict(TINY, patch_drop_rate=0.5)), 'patch dropout'),
    (dict(model_kwargs=dict(TINY, pretrained=True)), 'set by the backbone'),
    (dict(model_kwargs=dict(TINY, img_size=32)), 'set by the backbone'),
    (dict(freeze=False, tune_bias=True), 'tune_bias=True tunes biases of a frozen'),
    (dict(out_indices=(3,)), 'outside the 3 layers'),
    (dict(prompt_layers=[5], num_prompts=2), 'outside the 3 layers'),
    (dict(model_kwargs=dict(TINY, no_such_option=1)), 'timm cannot build'),
    (dict(init_cfg=dict(type='Pretrained', checkpoint='x.pth')), "checkpoint='x.pth'"),
])
def test_options_the_family_cannot_honour(options, match):
    with pytest.raises(ValueError, match=match):
        build('vit_base_patch16_224', 16, None, **options)


def test_signature_records_the_architecture(files):
    name, patch = FAMILIES[3]
    m = build(name, patch, files[name][0])
    assert dict(zip(m.signature_fields, m.signature.tolist())) == dict(
        embed_dims=32, num_layers=3, num_heads=2, patch_size=14, in_channels=3,
        feedforward_channels=128, num_prefix_tokens=5)


# ------------------------------------------------------------------- end to end
DEMO = osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_dinov2_ade20k.py')


def test_demo_dinov2_task_trains_and_tests(tmp_path):
    """tools/train.py, tools/test.py, MMSeg's init_model and tools/export_task.py on the
    tiny DINOv2-with-registers demo config; the task file tests with only its pretrained
    folder beside it."""
    from mmengine.config import Config

    from vpt_seg.datasets.synthetic import make_ade20k
    data = make_ade20k(str(tmp_path / 'data'), num_train=8, num_val=2, size=(64, 64), seed=0)
    cfg = Config.fromfile(DEMO)
    torch.manual_seed(0)
    name, kwargs = cfg.model.backbone.model_name, cfg.model.backbone.model_kwargs
    ref = timm.create_model(name, pretrained=False, num_classes=0, img_size=56, **kwargs)
    weights = tmp_path / 'dinov2' / 'model.safetensors'
    weights.parent.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(weights))
    options = ['--cfg-options', f'model.backbone.checkpoint={weights.parent}'] + [
        f'{loader}.dataset.data_root={data}'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]

    def run(tool, *args):  # the command, in a forked child (tests/helpers.py)
        proc = run_tool(tool, *args)
        assert proc.returncode == 0, f'{tool}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
        return proc.stdout + proc.stderr

    work = tmp_path / 'work'
    train = run('train.py', DEMO, '--work-dir', str(work), *options, 'train_cfg.max_iters=4',
                'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=4',
                'param_scheduler.0.end=4')
    ckpt = work / 'iter_4.pth'
    state = torch.load(ckpt, weights_only=True)['state_dict']
    backbone = {k for k in state if k.startswith('backbone.')}
    assert backbone == {'backbone.prompt.embeddings', 'backbone.signature'}
    log = run('test.py', DEMO, str(ckpt), '--work-dir', str(tmp_path / 't'), *options)
    assert 'loading the frozen backbone' in log

    def miou(text):
        found = re.findall(r'mIoU: ([\d.]+)', text)
        assert found, text[-2000:]
        return float(found[-1])
    assert 0 <= miou(log) <= 100 and miou(log) == miou(train)  # same weights, same numbers

    # MMSeg's API: init_model (the frozen weights come from the file the checkpoint records).
    from mmseg.apis import inference_model, init_model
    model = init_model(DEMO, str(ckpt), device='cpu')
    assert torch.equal(model.backbone.prompt.embeddings, state['backbone.prompt.embeddings'])
    # ... resampled to patch 8 on a 4x4 grid as timm itself loads the file into such a model
    resampled = timm.create_model(name, pretrained=False, num_classes=0, img_size=32,
                                  patch_size=8, **kwargs)
    timm.models.load_checkpoint(resampled, str(weights), filter_fn=timm.models.
                                vision_transformer.checkpoint_filter_fn)
    theirs = resampled.state_dict()
    for k, v in model.backbone.vit.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    val = sorted(glob.glob(osp.join(data, 'images', 'validation', '*.jpg')))[0]
    assert inference_model(model, val).pred_sem_seg.data.shape[-2:] == (64, 64)

    # A task file, shared with only its pretrained folder beside it, tests the same.
    shared = tmp_path / 'shared'
    shared.mkdir()
    run('export_task.py', DEMO, str(ckpt), str(shared / 'task.safetensors'), *options)
    shutil.copytree(weights.parent, shared / weights.parent.name)
    moved = run('test.py', DEMO, str(shared / 'task.safetensors'), '--work-dir',
                str(tmp_path / 't2'), '--cfg-options', *options[2:])  # config's checkpoint
    assert f'loading the frozen backbone from {shared / weights.parent.name}' in moved
    assert miou(moved) == miou(train)
    # A named --cfg-options model.backbone.checkpoint is the user's word, as init_cfg is
    # for the MMSeg layout: the file must exist, the neighbour does not stand in for it.
    named = run_tool('test.py', DEMO, str(shared / 'task.safetensors'), '--work-dir',
                     str(tmp_path / 't3'), '--cfg-options',
                     'model.backbone.checkpoint=/nowhere', *options[2:], cwd=str(tmp_path))
    assert named.returncode != 0 and '/nowhere' in named.stdout + named.stderr

    # ... and serves in one batch with a bias-tuned task on the same frozen DINOv2
    # (tools/serve.py with the hub folder as the shared backbone; --verify compares each
    # task with its own model alone and exits 1 above 1e-3).
    bias = ['model.backbone.tune_bias=True', 'model.backbone.num_prompts=0']
    run('train.py', DEMO, '--work-dir', str(tmp_path / 'bias'), *options, *bias,
        'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2', 'param_scheduler.0.end=2')
    run('export_task.py', DEMO, str(tmp_path / 'bias' / 'iter_2.pth'),
        str(shared / 'bias.safetensors'), *options, *bias)
    served = run('serve.py', str(shared / weights.parent.name),
                 f'seg={shared / "task.safetensors"}', f'bias={shared / "bias.safetensors"}',
                 '--images', osp.join(data, 'images', 'validation'),
                 '--out-dir', str(tmp_path / 'served'), '--verify')
    assert '2 images x 2 tasks served on one backbone' in served
    for task in ('seg', 'bias'):
        assert re.search(rf'{task}: largest difference to its own model alone at \S+: ', served)
        assert len(glob.glob(str(tmp_path / 'served' / task / '*_overlay.png'))) == 2
