"""The fast path (vpt_seg.models.vit_ops) against MMSeg's own layers (fast_path=False)."""
import copy

import pytest
import torch
from mmseg.registry import MODELS

from vpt_seg.models import vit_ops

TINY = dict(type='PromptedVisionTransformer', img_size=(32, 32), patch_size=8, embed_dims=32,
            num_layers=4, num_heads=4, out_indices=(1, 3), patch_bias=True,
            norm_cfg=dict(type='LN', eps=1e-6))

ROWS = {  # the Table 3 rows, tiny
    'head': dict(num_prompts=0),
    'bias': dict(num_prompts=0, tune_bias=True),
    'vpt-shallow': dict(num_prompts=5, deep=False),
    'vpt-deep': dict(num_prompts=3),
    'vpt-bias': dict(num_prompts=3, tune_bias=True),
    'full': dict(num_prompts=0, freeze=False),
}


def pair(**kwargs):
    """The same backbone (same weights) on the fast and on the reference path."""
    fast = MODELS.build(dict(TINY, **kwargs))
    fast.init_weights()
    for p in fast.parameters():  # non-trivial biases and prompts everywhere
        torch.nn.init.normal_(p, std=0.2) if p.dim() < 2 else None
    ref = copy.deepcopy(fast)
    ref.fast_path = False
    assert fast.fast_path
    return fast, ref


def forward_backward(model, image):
    """Outputs, and the gradients of a fixed linear loss for every tuned parameter and
    for the input image (which flows back through every block, frozen or not)."""
    image = image.detach().requires_grad_(True)
    outs = model(image)
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return outs, dict(grads, input=image.grad)


@pytest.mark.parametrize('row', list(ROWS))
@pytest.mark.parametrize('options', [dict(), dict(final_norm=True, out_origin=True),
                                     dict(with_cp=True), dict(with_cls_token=False)])
def test_outputs_and_gradients_equal_mmseg_layers(row, options):
    fast, ref = pair(**ROWS[row], **options)
    fast.train(), ref.train()
    image = torch.randn(2, 3, 24, 40)
    outs_f, grads_f = forward_backward(fast, image)
    outs_r, grads_r = forward_backward(ref, image)
    for a, b in zip(outs_f, outs_r):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert grads_f.keys() == grads_r.keys()
    for name in grads_f:
        assert grads_f[name] is not None, name
        torch.testing.assert_close(grads_f[name], grads_r[name], atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f'{row}, grad of {name}: {m}')


def test_bf16_autocast_close_to_reference():
    fast, ref = pair(**ROWS['vpt-bias'])
    image = torch.randn(2, 3, 32, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs_f, grads_f = forward_backward(fast, image)
        outs_r, grads_r = forward_backward(ref, image)
    for a, b in zip(outs_f, outs_r):  # the residual stream stays fp32 in both, as in MMSeg
        torch.testing.assert_close(a.float(), b.float(), atol=0.1, rtol=0.05)
    g_f, g_r = grads_f['prompt.embeddings'], grads_r['prompt.embeddings']
    assert torch.nn.functional.cosine_similarity(g_f.flatten(), g_r.flatten(), dim=0) > 0.99


def _saved_bytes(model, image):
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = model(image)
    return sum(saved), outs


def test_memory_switch_keeps_fewer_activations_and_the_same_gradients():
    """with_cp (activation checkpointing of the frozen blocks) stores far less for the
    backward pass and gives the same prompt gradients."""
    plain, _ = pair(**ROWS['vpt-deep'])
    cp = copy.deepcopy(plain)
    for layer in cp.layers:
        layer.with_cp = True
    image = torch.randn(2, 3, 32, 32)
    bytes_plain, outs_plain = _saved_bytes(plain, image)
    bytes_cp, outs_cp = _saved_bytes(cp, image)
    assert bytes_cp < bytes_plain / 3, (bytes_cp, bytes_plain)
    for a, b in zip(outs_plain, outs_cp):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(forward_backward(plain, image)[1]['prompt.embeddings'],
                               forward_backward(cp, image)[1]['prompt.embeddings'])


def test_frozen_blocks_keep_no_weight_sized_tensors_for_backward():
    """Frozen linear layers need no saved inputs for their (absent) weight gradients:
    what VPT-deep keeps per block is activations only, far below full fine-tuning."""
    vpt, _ = pair(**ROWS['vpt-deep'])
    full, _ = pair(**ROWS['full'])
    image = torch.randn(2, 3, 32, 32)
    assert _saved_bytes(vpt, image)[0] < 0.8 * _saved_bytes(full, image)[0]


def test_dropout_and_drop_path_follow_train_mode_when_fine_tuning():
    fast, ref = pair(**ROWS['full'], drop_rate=0.2, attn_drop_rate=0.2, drop_path_rate=0.3)
    image = torch.randn(2, 3, 32, 32)
    fast.train()
    a, b = fast(image)[-1], fast(image)[-1]
    assert not torch.allclose(a, b)  # stochastic while training
    fast.eval(), ref.eval()
    torch.testing.assert_close(fast(image)[-1], ref(image)[-1], atol=1e-5, rtol=1e-5)


def test_frozen_body_has_no_dropout_while_training():
    fast, _ = pair(**ROWS['vpt-deep'], drop_rate=0.5, attn_drop_rate=0.5, drop_path_rate=0.5)
    fast.train()
    image = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fast(image)[-1], fast(image)[-1])


def test_per_sample_biases_equal_one_model_per_sample():
    """The serving lookup: sample b gets task b's biases, as if run through its own model."""
    base, _ = pair(**ROWS['vpt-bias'])
    tasks = [copy.deepcopy(base) for _ in range(2)]
    for t in tasks[1:]:
        for _, p in t.named_parameters():
            if p.requires_grad:
                p.data.add_(0.3)
    image = torch.randn(2, 3, 32, 32)
    batch = vit_ops.TaskBatch(tasks, [torch.tensor([0]), torch.tensor([1])], shared=base)
    x, _ = vit_ops.patch_embed(base.patch_embed, image, batch)
    mixed = vit_ops.block(base.layers[1], x, batch=batch)
    for b, t in enumerate(tasks):
        x_t, _ = vit_ops.patch_embed(t.patch_embed, image[b:b + 1])
        torch.testing.assert_close(x[b:b + 1], x_t, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mixed[b:b + 1], vit_ops.block(t.layers[1], x_t),
                                   atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed[0], mixed[1])


def test_unsupported_backbone_is_refused_with_the_switch_named():
    with pytest.raises(ValueError, match='fast_path=False'):
        MODELS.build(dict(TINY, norm_cfg=dict(type='BN')))
    MODELS.build(dict(TINY, norm_cfg=dict(type='BN'), fast_path=False))  # reference path


def test_training_on_either_path_gives_the_same_run(monkeypatch):
    """Ten SGD steps of the demo config (SETR-PUP + VPT-deep, prompt dropout, four losses)
    on the fast path and with VPT_SEG_FAST_PATH=0: the same losses and final prompts."""
    import os.path as osp

    from mmengine.config import Config

    from vpt_seg.experiments.benchmark import build, make_batch
    cfg = Config.fromfile(osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                                   'configs', 'demo', 'setr_vpt_tiny_ade20k.py'))
    runs = []
    for flag in ('1', '0'):
        monkeypatch.setenv('VPT_SEG_FAST_PATH', flag)
        torch.manual_seed(0)
        model, optim_wrapper, _ = build(cfg, stock=False, device=torch.device('cpu'))
        assert model.backbone.fast_path == (flag == '1')
        assert model.decode_head.fast_path == (flag == '1')
        model.train()
        losses = []
        for step in range(10):
            log_vars = model.train_step(make_batch(4, (32, 32), 150, seed=step), optim_wrapper)
            losses.append(float(log_vars['loss'].detach()))
        runs.append((losses, model.backbone.prompt.embeddings.detach().clone()))
    (fast, p_fast), (ref, p_ref) = runs
    assert fast[-1] < fast[0]
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(ref), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(p_fast, p_ref, atol=1e-5, rtol=1e-4)
