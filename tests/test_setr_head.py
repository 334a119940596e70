"""LeanSETRUPHead against MMSeg's SETRUPHead: same function, less kept for backward."""
import os.path as osp

import mmseg
import pytest
import torch
from helpers import ROOT
from mmengine.config import Config
from mmseg.registry import MODELS
from torch.utils.flop_counter import FlopCounterMode

HEADS = {  # (num_convs, up_scale, kernel_size) of SETR's heads on ADE20k, tiny widths
    'pup-decode': dict(num_convs=4, up_scale=2, kernel_size=3),
    'pup-aux': dict(num_convs=2, up_scale=4, kernel_size=3),
    'naive': dict(num_convs=1, up_scale=4, kernel_size=1),
}


def pair(**kwargs):
    cfg = dict(in_channels=16, channels=8, in_index=0, num_classes=5, dropout_ratio=0,
               norm_cfg=dict(type='BN', requires_grad=True), align_corners=False, **kwargs)
    ref = MODELS.build(dict(cfg, type='SETRUPHead'))
    ref.init_weights()
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.3)
    lean = MODELS.build(dict(cfg, type='LeanSETRUPHead'))
    lean.load_state_dict(ref.state_dict(), strict=True)  # same names, same checkpoints
    assert lean.fast_path
    return lean, ref


def run(head, feats):
    feats = [f.detach().requires_grad_(True) for f in feats]
    out = head(feats)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad for n, p in head.named_parameters()}
    return out, dict(grads, input=feats[0].grad)


@pytest.mark.parametrize('kind', list(HEADS))
@pytest.mark.parametrize('train', [True, False])
def test_same_outputs_and_gradients_as_setr_up_head(kind, train):
    """In float64, so that only the order of the operations can differ."""
    lean, ref = pair(**HEADS[kind])
    lean.double().train(train), ref.double().train(train)
    feats = [torch.randn(2, 16, 6, 5, dtype=torch.float64)]
    out_l, g_l = run(lean, feats)
    out_r, g_r = run(ref, feats)
    scale = HEADS[kind]['up_scale'] ** HEADS[kind]['num_convs']
    assert out_l.shape == out_r.shape == (2, 5, 6 * scale, 5 * scale)
    torch.testing.assert_close(out_l, out_r, atol=1e-10, rtol=1e-10)
    assert g_l.keys() == g_r.keys()
    for name in g_l:
        torch.testing.assert_close(g_l[name], g_r[name], atol=1e-9, rtol=1e-9,
                                   msg=lambda m: f'{kind}, grad of {name}: {m}')


def _samples(n, size, num_classes=5, seed=0):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        labels = torch.randint(0, num_classes, (1, *size), generator=g)
        labels[:, :2] = 255  # ignored pixels
        samples.append(SegDataSample(gt_sem_seg=PixelData(data=labels)))
    return samples


@pytest.mark.parametrize('kind', list(HEADS))
def test_same_losses_and_gradients_as_setr_up_head(kind):
    """loss() recomputes the full-resolution part in backward: same values, same grads."""
    lean, ref = pair(**HEADS[kind])
    lean.double().train(), ref.double().train()
    feats = [torch.randn(2, 16, 6, 5, dtype=torch.float64)]
    scale = HEADS[kind]['up_scale'] ** HEADS[kind]['num_convs']
    samples = _samples(2, (6 * scale, 5 * scale))
    results = []
    for head in (lean, ref):
        x = [f.detach().requires_grad_(True) for f in feats]
        losses = head.loss(x, samples, {})
        losses['loss_ce'].backward()
        results.append((losses, {n: p.grad for n, p in head.named_parameters()}, x[0].grad))
    (l_lean, g_lean, x_lean), (l_ref, g_ref, x_ref) = results
    assert l_lean.keys() == l_ref.keys() == {'loss_ce', 'acc_seg'}
    for key in l_ref:
        torch.testing.assert_close(l_lean[key], l_ref[key], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(x_lean, x_ref, atol=1e-10, rtol=1e-9)
    for name in g_ref:
        torch.testing.assert_close(g_lean[name], g_ref[name], atol=1e-10, rtol=1e-9)


def test_loss_keeps_no_full_resolution_logits():
    lean, ref = pair(**HEADS['pup-aux'])
    lean.train(), ref.train()
    feats = [torch.randn(2, 16, 4, 4)]
    samples = _samples(2, (64, 64))
    full_res = 2 * 5 * 64 * 64 * 4  # (B, K, H, W) fp32
    kept = []
    for head in (lean, ref):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
            head.loss([f.requires_grad_(True) for f in feats], samples, {})
        kept.append(saved)
    assert max(kept[0]) < full_res <= max(kept[1])
    assert sum(kept[0]) < 0.5 * sum(kept[1])


def _saved_bytes(head, feats):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
        head([f.requires_grad_(True) for f in feats])
    return sum(saved)


def test_keeps_less_for_backward_and_computes_less():
    lean, ref = pair(**HEADS['pup-aux'])
    feats = [torch.randn(2, 16, 8, 8)]
    assert _saved_bytes(lean, feats) < 0.8 * _saved_bytes(ref, feats)
    flops = []
    for head in (lean, ref):
        with FlopCounterMode(display=False) as counter:
            head(feats)
        flops.append(counter.get_total_flops())
    assert flops[0] < flops[1]


def test_dropout_or_switch_off_is_exactly_setr_up_head():
    lean, ref = pair(**HEADS['pup-decode'])
    lean.fast_path = False
    feats = [torch.randn(2, 16, 4, 4)]
    lean.eval(), ref.eval()
    assert torch.equal(lean(feats), ref(feats))
    drop = MODELS.build(dict(type='LeanSETRUPHead', in_channels=16, channels=8, num_classes=5,
                             dropout_ratio=0.1, norm_cfg=dict(type='BN')))
    calls = []
    drop.dropout.register_forward_hook(lambda *a: calls.append(1))
    drop.train()(feats)
    assert calls  # dropout before the classifier: MMSeg's order, not the lean one


def test_shipped_pup_config_keeps_mmsegs_heads_but_the_type():
    ours = Config.fromfile(osp.join(ROOT, 'configs', 'setr_vpt_ade20k.py')).model
    stock = Config.fromfile(osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs', 'setr',
                                     'setr_vit-l_pup_8xb2-160k_ade20k-512x512.py')).model
    for a, b in zip([ours.decode_head, *ours.auxiliary_head],
                    [stock.decode_head, *stock.auxiliary_head]):
        assert a.type == 'LeanSETRUPHead' and b.type == 'SETRUPHead'
        assert dict(a, type=None) == dict(b, type=None)
    assert len(ours.auxiliary_head) == len(stock.auxiliary_head)


def test_environment_switch_puts_everything_back_on_mmseg(monkeypatch):
    monkeypatch.setenv('VPT_SEG_FAST_PATH', '0')
    head = MODELS.build(dict(type='LeanSETRUPHead', in_channels=16, channels=8,
                             num_classes=5, norm_cfg=dict(type='BN')))
    vit = MODELS.build(dict(type='PromptedVisionTransformer', img_size=(32, 32), patch_size=8,
                            embed_dims=32, num_layers=2, num_heads=4))
    assert not head.fast_path and not vit.fast_path
    monkeypatch.setenv('VPT_SEG_FAST_PATH', '1')
    assert MODELS.build(dict(type='PromptedVisionTransformer', img_size=(32, 32), patch_size=8,
                             embed_dims=32, num_layers=2, num_heads=4)).fast_path
