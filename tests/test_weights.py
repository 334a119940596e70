"""Pretrained ViTs as published (timm, JAX .npz, MMSeg) in the prompted backbone.

The reference is timm itself: a tiny timm ViT with random weights is saved in each
format, loaded into ``PromptedVisionTransformer``, and its features must equal timm's
own intermediate features; resampled position embeddings must equal what timm's own
loaders make for a model built at the new size.
"""
import ast
import os.path as osp
import re

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer as TimmViT
from timm.models.vision_transformer import _load_weights

import vpt_seg  # noqa: F401  (before mmseg)

# isort: split
from helpers import ROOT, tool
from mmseg.models.backbones import VisionTransformer as MMSegViT

from vpt_seg.formats import weight_files
from vpt_seg.formats import weights as ckpt_lib
from vpt_seg.models import PromptedVisionTransformer, prompted_vit

TINY = dict(patch_size=16, embed_dim=32, depth=3, num_heads=2)
ATOL = 2e-5  # float32 rounding: MMSeg's nn.MultiheadAttention vs timm's Attention


def timm_vit(img_size=64, seed=0, **kwargs):
    """A tiny timm ViT, every tensor random (biases and norms too), in eval mode."""
    torch.manual_seed(seed)
    args = dict(TINY, img_size=img_size, num_classes=5)
    args.update(kwargs)
    model = TimmViT(**args).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(1.0 if name.endswith('norm1.weight') else 0.0, 0.2)
    return model


def backbone(path, img_size=64, final_norm=True, **kwargs):
    args = dict(img_size=img_size, patch_size=16, embed_dims=32, num_layers=3, num_heads=2,
                out_indices=(0, 1, 2), patch_bias=True, final_norm=final_norm,
                norm_cfg=dict(type='LN', eps=1e-6), num_prompts=0, freeze=True,
                init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    args.update(kwargs)
    model = PromptedVisionTransformer(**args)
    model.init_weights()
    return model.eval()


def timm_features(model, x):
    """timm's patch tokens after each block, NCHW; the last one through the final norm."""
    with torch.no_grad():
        feats = model.forward_intermediates(x, norm=False, intermediates_only=True)
        last = model.forward_intermediates(x, indices=[len(model.blocks) - 1], norm=True,
                                           intermediates_only=True)
    return feats[:-1] + last


def write_jax_npz(model, path):
    """Write a timm ViT in the original JAX layout (``ViT-L_16.npz``)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    C, H = model.embed_dim, model.blocks[0].attn.num_heads
    out = {
        'embedding/kernel': sd['patch_embed.proj.weight'].transpose(2, 3, 1, 0),  # HWIO
        'embedding/bias': sd['patch_embed.proj.bias'],
        'cls': sd['cls_token'],
        'Transformer/posembed_input/pos_embedding': sd['pos_embed'],
        'Transformer/encoder_norm/scale': sd['norm.weight'],
        'Transformer/encoder_norm/bias': sd['norm.bias'],
        'head/kernel': sd['head.weight'].T,
        'head/bias': sd['head.bias'],
    }
    for i in range(len(model.blocks)):
        p, b = f'blocks.{i}.', f'Transformer/encoderblock_{i}/'
        mha = b + 'MultiHeadDotProductAttention_1/'
        out[b + 'LayerNorm_0/scale'], out[b + 'LayerNorm_0/bias'] = sd[p + 'norm1.weight'], \
            sd[p + 'norm1.bias']
        out[b + 'LayerNorm_2/scale'], out[b + 'LayerNorm_2/bias'] = sd[p + 'norm2.weight'], \
            sd[p + 'norm2.bias']
        weights = np.split(sd[p + 'attn.qkv.weight'], 3)
        biases = np.split(sd[p + 'attn.qkv.bias'], 3)
        for name, w, bias in zip(('query', 'key', 'value'), weights, biases):
            out[f'{mha}{name}/kernel'] = w.T.reshape(C, H, C // H)
            out[f'{mha}{name}/bias'] = bias.reshape(H, C // H)
        out[mha + 'out/kernel'] = sd[p + 'attn.proj.weight'].T.reshape(H, C // H, C)
        out[mha + 'out/bias'] = sd[p + 'attn.proj.bias']
        for j, fc in enumerate(('fc1', 'fc2')):
            out[f'{b}MlpBlock_3/Dense_{j}/kernel'] = sd[f'{p}mlp.{fc}.weight'].T
            out[f'{b}MlpBlock_3/Dense_{j}/bias'] = sd[f'{p}mlp.{fc}.bias']
    np.savez(path, **out)
    return path


def save(model, tmp_path, fmt):
    """Save a timm ViT as a user would find it: safetensors, .pth, .bin, .npz, or
    converted to MMSeg format, or inside an MMSeg segmentor checkpoint."""
    sd = model.state_dict()
    if fmt == 'safetensors':
        save_file(sd, str(tmp_path / 'vit.safetensors'))
        return tmp_path / 'vit.safetensors'
    if fmt in ('pth', 'bin'):
        torch.save(sd, tmp_path / f'vit.{fmt}')
        return tmp_path / f'vit.{fmt}'
    if fmt == 'npz':
        return write_jax_npz(model, tmp_path / 'ViT.npz')
    mm = ckpt_lib.convert_timm_to_mmseg(sd)
    if fmt == 'mmseg':
        torch.save({k: v for k, v in mm.items() if not k.startswith('head')},
                   tmp_path / 'vit_mmseg.pth')
        return tmp_path / 'vit_mmseg.pth'
    assert fmt == 'segmentor'  # a whole MMSeg model: backbone.* plus a decode head
    state = {f'backbone.{k}': v for k, v in mm.items() if not k.startswith('head')}
    state['decode_head.conv_seg.weight'] = torch.zeros(5, 32, 1, 1)
    torch.save({'meta': {'epoch': 3}, 'state_dict': state}, tmp_path / 'seg.pth')
    return tmp_path / 'seg.pth'


@pytest.fixture
def logs(monkeypatch):
    lines = []
    monkeypatch.setattr(prompted_vit, 'print_log', lambda msg, **kw: lines.append(msg))
    return lines


# ----------------------------------------------------------------- equivalence
@pytest.mark.parametrize('fmt', ['safetensors', 'pth', 'bin', 'npz', 'mmseg', 'segmentor'])
def test_features_equal_timm(tmp_path, logs, fmt):
    ref = timm_vit()
    model = backbone(save(ref, tmp_path, fmt))
    assert not any(p.requires_grad for p in model.parameters())  # still frozen
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = model(x)
    want = timm_features(ref, x)
    assert len(outs) == 3
    for out, w in zip(outs, want):
        assert out.shape == w.shape == (2, 32, 4, 4)
        torch.testing.assert_close(out, w, atol=ATOL, rtol=0)
    (line,) = logs
    assert 'loaded 42 tensors (patch-embedding bias included)' in line
    assert 'left at initial value 0' in line
    assert 'resampled' not in line
    assert ('head.weight' in line) == (fmt not in ('mmseg', 'segmentor'))
    if fmt == 'segmentor':
        assert "under 'backbone.', 1 other keys ignored" in line


def test_jax_writer_matches_timm_reader(tmp_path):
    """The synthetic .npz is in the real layout: timm's own JAX loader reads it back."""
    ref = timm_vit()
    fresh = timm_vit(seed=5)
    _load_weights(fresh, str(write_jax_npz(ref, tmp_path / 'ViT.npz')))
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, atol=0, rtol=0)


def test_jax_scanned_layout_and_prefix(tmp_path):
    """Stacked ``encoderblock/`` arrays and an ``opt/target/`` prefix convert the same."""
    ref = timm_vit()
    plain = dict(np.load(write_jax_npz(ref, tmp_path / 'a.npz')))
    scanned = {f'opt/target/{k}': v for k, v in plain.items()
               if not k.startswith('Transformer/encoderblock_')}
    for key in [k for k in plain if k.startswith('Transformer/encoderblock_0/')]:
        rest = key[len('Transformer/encoderblock_0/'):]
        scanned[f'opt/target/Transformer/encoderblock/{rest}'] = np.stack(
            [plain[f'Transformer/encoderblock_{i}/{rest}'] for i in range(3)])
    a = ckpt_lib.to_mmseg_state_dict(plain)
    b = ckpt_lib.to_mmseg_state_dict(scanned)
    assert (a.format, b.format, b.prefix, a.num_heads) == ('jax', 'jax', 'opt/target/', 2)
    assert a.state_dict.keys() == b.state_dict.keys()
    for key in a.state_dict:
        torch.testing.assert_close(a.state_dict[key], b.state_dict[key], atol=0, rtol=0)


# --------------------------------------------------------------- other sizes
@pytest.mark.parametrize('fmt,mode,size', [
    ('safetensors', 'bicubic', 96),   # timm's checkpoint_filter_fn: bicubic, antialias
    ('safetensors', 'bicubic', 32),   # shrinking: antialiased as timm does
    ('npz', 'bilinear', 128),         # timm's JAX loader: bilinear
])
def test_resampled_pos_embed_equals_timm(tmp_path, logs, fmt, mode, size):
    ref = timm_vit()
    path = save(ref, tmp_path, fmt)
    model = backbone(path, img_size=size, interpolate_mode=mode)
    # timm builds the model at the new size and resamples while loading the same file
    if fmt == 'npz':
        timm_new = timm_vit(img_size=size, seed=9)
        _load_weights(timm_new, str(path))
    else:
        timm_new = timm.create_model('vit_tiny_patch16_224', pretrained=True, img_size=size,
                                     pretrained_cfg_overlay=dict(file=str(path)),
                                     num_classes=5, **TINY).eval()
    assert model.pos_embed.shape == timm_new.pos_embed.shape == (1, 1 + (size // 16)**2, 32)
    torch.testing.assert_close(model.pos_embed.data, timm_new.pos_embed.data,
                               atol=1e-6, rtol=0)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        outs = model(x)
    for out, w in zip(outs, timm_features(timm_new, x)):
        torch.testing.assert_close(out, w, atol=ATOL, rtol=0)
    assert f'pos_embed resampled 4x4 -> {size // 16}x{size // 16} grid' in logs[0]


def test_inference_at_other_sizes_after_load(tmp_path, logs):
    """Sliding-window / multi-scale inputs of another size: MMSeg resizes pos_embed at
    run time; the rest of the network is the timm model's."""
    ref = timm_vit()
    model = backbone(save(ref, tmp_path, 'safetensors'), interpolate_mode='bicubic')
    x = torch.randn(1, 3, 128, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outs = model(x)
    at_size = timm_vit(img_size=(128, 96), seed=9)
    state = ref.state_dict()
    state['pos_embed'] = MMSegViT.resize_pos_embed(ref.pos_embed.data, (8, 6), (4, 4),
                                                   'bicubic')
    at_size.load_state_dict(state)
    for out, w in zip(outs, timm_features(at_size, x)):
        assert out.shape == (1, 32, 8, 6)
        torch.testing.assert_close(out, w, atol=ATOL, rtol=0)


# ------------------------------------------------------- prompts and summary
def test_prompts_left_at_init_and_summary(tmp_path, logs):
    ref = timm_vit()
    path = save(ref, tmp_path, 'safetensors')
    torch.manual_seed(7)
    model = PromptedVisionTransformer(
        img_size=64, patch_size=16, embed_dims=32, num_layers=3, num_heads=2,
        out_indices=(2,), patch_bias=True, norm_cfg=dict(type='LN', eps=1e-6),
        num_prompts=4, deep=True, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    prompts = model.prompt.embeddings.detach().clone()
    model.init_weights()
    torch.testing.assert_close(model.prompt.embeddings.data, prompts, atol=0, rtol=0)
    assert model.prompt.embeddings.requires_grad
    assert not model.cls_token.requires_grad
    torch.testing.assert_close(model.layers[1].ffn.layers[1].bias.data,
                               ref.blocks[1].mlp.fc2.bias.data, atol=0, rtol=0)
    (line,) = logs
    # final_norm=False: timm's final norm is unused, reported with the head
    assert 'ignored 4 (head.bias, head.weight, ln1.bias, ln1.weight)' in line
    assert 'left at initial value 1 (prompt.embeddings)' in line
    assert 'loaded 40 tensors' in line


def test_summary_says_when_the_file_has_no_patch_bias(tmp_path, logs):
    src = PromptedVisionTransformer(img_size=32, patch_size=16, embed_dims=32, num_layers=2,
                                    num_heads=2, patch_bias=False, num_prompts=0,
                                    save_frozen=True)
    torch.save(src.state_dict(), tmp_path / 'vit.pth')
    backbone(tmp_path / 'vit.pth', img_size=32, num_layers=2, out_indices=(1,),
             patch_bias=False, final_norm=False, norm_cfg=dict(type='LN'))
    (line,) = logs
    assert 'tensors (the file has no patch-embedding bias)' in line
    assert 'patch-embedding bias included' not in line


def test_layer_norm_eps_warning(tmp_path, logs):
    backbone(save(timm_vit(), tmp_path, 'safetensors'), norm_cfg=dict(type='LN'))
    assert 'LayerNorm eps=[1e-05]' in logs[0] and 'eps=1e-6' in logs[0]


def test_task_checkpoint_completes_from_timm_file(tmp_path, logs):
    """A task file (prompts only) reloads the frozen ViT from the timm file."""
    path = save(timm_vit(), tmp_path, 'safetensors')
    trained = backbone(path, num_prompts=2)
    task = trained.state_dict()
    assert sorted(task) == ['prompt.embeddings', 'signature']
    fresh = PromptedVisionTransformer(
        img_size=64, patch_size=16, embed_dims=32, num_layers=3, num_heads=2,
        out_indices=(0, 1, 2), patch_bias=True, final_norm=True,
        norm_cfg=dict(type='LN', eps=1e-6), num_prompts=2,
        init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    fresh.load_state_dict(task)
    for (name, a), b in zip(trained.named_parameters(), fresh.parameters()):
        torch.testing.assert_close(a.data, b.data, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize('size', [64, 96])
def test_mmseg_vit_checkpoint_loads_as_before(tmp_path, logs, size):
    """MMSeg's own ViT state dict loads as MMSeg's ``init_weights`` loads it: same
    values, and the same pos_embed resizing at another size."""
    torch.manual_seed(0)
    args = dict(patch_size=16, embed_dims=32, num_layers=3, num_heads=2, patch_bias=True,
                final_norm=True, norm_cfg=dict(type='LN', eps=1e-6))
    mm = MMSegViT(img_size=64, **args)
    with torch.no_grad():
        for p in mm.parameters():
            p.normal_(0, 0.2)
    torch.save(mm.state_dict(), tmp_path / 'mm.pth')
    before = MMSegViT(img_size=size, **args,
                      init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'mm.pth')))
    before.init_weights()
    model = backbone(tmp_path / 'mm.pth', img_size=size)
    for name, param in before.named_parameters():
        torch.testing.assert_close(model.get_parameter(name).data, param.data, atol=0, rtol=0)
    assert '(mmseg)' in logs[0] and 'ignored' not in logs[0]
    assert ('resampled 4x4 -> 6x6' in logs[0]) == (size == 96)


# ------------------------------------------------------------------- errors
def _save_sd(tmp_path, sd, name='bad.pth'):
    torch.save(sd, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize('case,match', [
    ('patch size', r'patch size: the file has 8x8 patches, the backbone 16x16'),
    ('width', r'width: the file has embed_dims=48, the backbone 32'),
    ('shallower', r'depth: the file has 2 transformer layers, the backbone 3'),
    ('deeper', r'depth: the file has 4 transformer layers, the backbone 3'),
    ('layer scale', r'keys the backbone has no place for: blocks\.0\.ls1\.gamma'),
    ('no final norm', r'final_norm=True, but the file has no final norm.*ln1\.bias'),
    ('mlp ratio', r'layers\.0\.ffn\.layers\.0\.0\.weight: \(64, 32\) in the file, '
                  r'\(128, 32\) here'),
])
def test_mismatched_vit_is_a_clear_error(tmp_path, case, match):
    kwargs = {'patch size': dict(patch_size=8), 'width': dict(embed_dim=48),
              'shallower': dict(depth=2), 'deeper': dict(depth=4),
              'layer scale': dict(init_values=0.1), 'no final norm': dict(final_norm=False),
              'mlp ratio': dict(mlp_ratio=2.0)}[case]
    path = save(timm_vit(**kwargs), tmp_path, 'safetensors')
    with pytest.raises(ValueError, match=match) as err:
        backbone(path)
    assert str(path) in str(err.value) and '(timm format)' in str(err.value)


def test_patch_bias_trap_is_an_error(tmp_path):
    path = save(timm_vit(), tmp_path, 'pth')
    with pytest.raises(ValueError, match='set patch_bias=True'):
        backbone(path, patch_bias=False)


def test_jax_head_count_is_checked(tmp_path):
    path = save(timm_vit(), tmp_path, 'npz')
    with pytest.raises(ValueError, match=r'2 attention heads, the backbone 4 \(num_heads\)'):
        backbone(path, num_heads=4)


@pytest.mark.parametrize('content', ['resnet', 'text', 'npz'])
def test_not_a_vit_file(tmp_path, content):
    if content == 'resnet':
        path = _save_sd(tmp_path, {'conv1.weight': torch.zeros(8, 3, 7, 7),
                                   'fc.weight': torch.zeros(5, 8)})
    elif content == 'text':
        path = tmp_path / 'notes.pth'
        path.write_text('not weights')
    else:
        path = tmp_path / 'other.npz'
        np.savez(path, **{'conv_root/kernel': np.zeros((7, 7, 3, 8), np.float32)})
    with pytest.raises(ValueError, match='not a ViT checkpoint'):
        backbone(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found: .*nope\.safetensors.*cfg-options"):
        backbone(tmp_path / 'nope.safetensors')


# ---------------------------------------------------------------- converter tool
def _tool():
    return tool('convert_vit')


def test_convert_tool_timm_model_offline(tmp_path, logs, capsys):
    out = tmp_path / 'pretrain' / 'x.pth'
    _tool().main(['--timm-model', 'vit_tiny_patch16_224', '--seed', '3', '--out', str(out),
                  '--model-args', 'depth=3', 'embed_dim=32', 'num_heads=2', 'img_size=64'])
    printed = capsys.readouterr().out
    assert 'embed_dims=32, num_layers=3, img_size=64, mlp_ratio=4, num_heads=2' in printed
    torch.manual_seed(3)
    ref = timm.create_model('vit_tiny_patch16_224', num_classes=0, img_size=64, **TINY).eval()
    model = backbone(out)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        outs = model(x)
    for o, w in zip(outs, timm_features(ref, x)):
        torch.testing.assert_close(o, w, atol=ATOL, rtol=0)
    assert '(mmseg)' in logs[0]


def test_convert_tool_file_with_resampling(tmp_path, logs):
    ref = timm_vit()
    src = save(ref, tmp_path, 'npz')
    out = tmp_path / 'vit96.pth'
    sd = _tool().main([str(src), '--out', str(out), '--img-size', '96'])
    assert not any(k.startswith('head') for k in sd)
    direct = backbone(src, img_size=96)  # resampled at load, from the .npz
    converted = backbone(out, img_size=96)  # resampled by the tool
    assert 'resampled' in logs[0] and 'resampled' not in logs[1]
    for (name, a), b in zip(direct.named_parameters(), converted.parameters()):
        torch.testing.assert_close(a.data, b.data, atol=0, rtol=0, msg=name)


def test_convert_tool_refuses_unmappable(tmp_path):
    src = save(timm_vit(init_values=0.1), tmp_path, 'safetensors')
    with pytest.raises(SystemExit, match=r'no place in MMSeg.*ls1\.gamma'):
        _tool().main([str(src), '--out', str(tmp_path / 'x.pth')])


DINOV2_DEMO = osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_dinov2_ade20k.py')


def _dinov2_folder(tmp_path, depth=4, name='reg4'):
    """A patch-14 DINOv2-reg file as the hub publishes it, at the demo config's size."""
    from vpt_seg.models.timm_vit import write_hub_folder
    torch.manual_seed(0)
    vit = timm.create_model('vit_small_patch14_reg4_dinov2', pretrained=False, num_classes=0,
                            embed_dim=32, depth=depth, num_heads=4, img_size=56)
    return write_hub_folder(vit, str(tmp_path / name), 'vit_small_patch14_reg4_dinov2')


def test_convert_tool_checks_a_timm_file_for_a_config(tmp_path, capsys, monkeypatch):
    """--config: the file is loaded into the config's PromptedTimmViT as training would,
    patch 14 resampled to the config's 8 and the 4x4 position grid to its 4x4, one line;
    the file is read once."""
    folder = _dinov2_folder(tmp_path)
    reads, read = [], weight_files._read_weights
    monkeypatch.setattr(weight_files, '_read_weights', lambda p: reads.append(p) or read(p))
    line = _tool().main([folder, '--config', DINOV2_DEMO])
    assert reads == [osp.join(folder, 'model.safetensors')]
    assert capsys.readouterr().out.strip() == line
    assert f'{folder} fits {DINOV2_DEMO}: vit_small_patch14_reg4_dinov2 (32 wide, 4 layers, ' \
           'patch 8)' in line
    assert 'resampled patch embedding 14x14 -> 8x8' in line
    assert 'position embedding 16 -> 16 tokens' not in line  # same grid: not resampled
    # the config's own checkpoint= when no file is given
    line = _tool().main(['--config', DINOV2_DEMO, '--cfg-options',
                         f'model.backbone.checkpoint={folder}'])
    assert 'fits' in line


@pytest.mark.parametrize('case, match', [
    ('size', r'does not fit .*another model_name or size\?\): missing from the file: '
             r'blocks\.3\.'),
    ('missing', r'does not fit .*not found'),
    ('mmseg', r'not PromptedTimmViT'),
])
def test_convert_tool_check_refuses_what_does_not_fit(tmp_path, case, match):
    args = {'size': [_dinov2_folder(tmp_path, depth=3), '--config', DINOV2_DEMO],
            'missing': [str(tmp_path / 'nope'), '--config', DINOV2_DEMO],
            'mmseg': [str(tmp_path / 'x.pth'), '--config',
                      osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_ade20k.py')]}[case]
    with pytest.raises(SystemExit, match=match):
        _tool().main(args)


# ------------------------------------------------------------- remote checkpoints
def test_every_remote_scheme_that_unpickles_is_read_safely():
    """MMEngine's loaders for these schemes end in torch.load / torch.hub's load_url
    (weights_only=False); each is replaced by one that reads with weights_only=True."""
    from mmengine.runner import CheckpointLoader

    from vpt_seg.engine import checkpoint_io
    for path in ('http://h/x.pth', 'https://h/x.pth', 'torchvision://resnet50',
                 'modelzoo://resnet50', 'open-mmlab://x', 'openmmlab://x', 'mmcls://x',
                 's3://bucket/x.pth', 'petrel://bucket/x.pth', 'open-mmlab:s3://b/x.pth',
                 'pavi://x', 'x.pth', 'http://h/task.safetensors'):
        loader = CheckpointLoader._get_checkpoint_loader(path)
        assert loader.__module__ == checkpoint_io.__name__, (path, loader)


def test_url_pickle_with_a_payload_is_refused_by_name(tmp_path, file_server):
    from conftest import payload_pickle
    from mmengine.runner import CheckpointLoader
    marker = tmp_path / 'marker'
    payload_pickle(file_server.root / 'vit.pth', marker)
    url = file_server.url('vit.pth')
    with pytest.raises(weight_files.UnreadableCheckpointError,
                       match=rf"'{url}' \(downloaded to .*\) is not a readable checkpoint: "
                             r'it stores the Python object (builtins\.)?exec,'):
        CheckpointLoader.load_checkpoint(url, map_location='cpu')
    with pytest.raises(weight_files.UnreadableCheckpointError, match=url):  # as init_cfg
        backbone(url)
    assert not marker.exists()
    assert file_server.requests == ['/vit.pth']  # downloaded once, then read from the cache
    assert (tmp_path / 'hub' / 'checkpoints' / 'vit.pth').is_file()


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_url_weights_load_like_the_local_file(tmp_path, logs, file_server, fmt):
    ref = timm_vit()
    local = save(ref, file_server.root, fmt)
    from_url = backbone(file_server.url(local.name))
    from_file = backbone(local)
    for (name, a), b in zip(from_file.named_parameters(), from_url.parameters()):
        torch.testing.assert_close(a.data, b.data, atol=0, rtol=0, msg=name)
    assert file_server.url(local.name) in logs[0]


def _demo_backbone(tmp_path, monkeypatch):
    """pretrain/tiny_vit.pth exactly as tools/demo.py writes it (its own function)."""
    from mmengine.config import Config

    from vpt_seg.experiments.demo import write_backbone
    config = Config.fromfile(osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_ade20k.py'))
    monkeypatch.chdir(tmp_path)
    return tmp_path / write_backbone(config)


def test_convert_tool_takes_the_file_demo_writes_and_checks_its_signature(
        tmp_path, monkeypatch, capsys):
    """tools/demo.py's stand-in backbone (a PromptedVisionTransformer's state dict, with its
    ``signature``) converts: num_heads from the signature, the signature left out, and the
    result loads strictly into MMSeg's VisionTransformer with the printed arguments.
    (Before: refused, '1 keys have no place ...: signature'.)"""
    src = _demo_backbone(tmp_path, monkeypatch)
    saved = torch.load(src, weights_only=True)
    assert 'signature' in saved
    out = tmp_path / 'converted.pth'
    _tool().main([str(src), '--out', str(out)])
    printed = capsys.readouterr().out
    assert 'its signature (vpt-seg\'s record of the architecture) fits the weights' in printed
    args = printed.strip().splitlines()[-1].strip()
    assert 'num_heads=4' in args
    call = ast.parse(f'dict({args})', mode='eval').body  # the tool's printout: k=literal
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    converted = torch.load(out, weights_only=True)
    assert 'signature' not in converted
    vit = MMSegViT(**kwargs)
    vit.load_state_dict(converted, strict=True)
    for key, value in converted.items():
        torch.testing.assert_close(value, saved[key], atol=0, rtol=0, msg=key)


def test_convert_tool_refuses_a_signature_that_is_not_the_weights(tmp_path, monkeypatch):
    src = _demo_backbone(tmp_path, monkeypatch)
    saved = torch.load(src, weights_only=True)
    saved['signature'][1] += 1  # num_layers
    torch.save(saved, src)
    with pytest.raises(SystemExit, match=re.escape(
            'its signature records another ViT than its weights (num_layers 5 recorded, 4 in '
            'the weights): the file was edited or put together from two models')):
        _tool().main([str(src), '--out', str(tmp_path / 'x.pth')])
    assert not (tmp_path / 'x.pth').exists()
