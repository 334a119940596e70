"""MultiTaskViT: a mixed-task batch through one frozen ViT equals each task run alone."""
import pytest
import torch

import vpt_seg  # noqa: F401  (before mmseg)

# isort: split
from helpers import ARCH, tiny_pretrained, trained_like
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS

from vpt_seg.formats.loading import load_task_model
from vpt_seg.serving.multitask import MultiTaskViT, build_shared_backbone

init_default_scope('mmseg')


def backbone(pretrained, **kw):
    return dict(type='PromptedVisionTransformer', **dict(ARCH, **kw),
                init_cfg=dict(type='Pretrained', checkpoint=pretrained))


def seg(pretrained, in_index=-1, **kw):
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[100., 110., 120.],
                               std=[50., 60., 70.], bgr_to_rgb=True),
        backbone=backbone(pretrained, **kw),
        decode_head=dict(type='SETRUPHead', in_channels=32, channels=8, in_index=in_index,
                         num_classes=5, num_convs=2, up_scale=2, kernel_size=3,
                         norm_cfg=dict(type='BN'), align_corners=False, dropout_ratio=0,
                         loss_decode=dict(type='CrossEntropyLoss')))


def cls(pretrained, head='LinearClsHead', **kw):
    return dict(type='VPTClassifier', backbone=backbone(pretrained, **kw),
                head=dict(type=head, in_channels=32, num_classes=7))


# name -> config: prompt lengths 0..6, deep / shallow / layers 1-2, bias tuning on and
# off, several outputs, another img_size (position embeddings resized), both kinds.
TASKS = {
    'seg_deep': lambda p: seg(p, in_index=0, num_prompts=4, deep=True, out_indices=(1, 3)),
    'seg_shallow_bias': lambda p: seg(p, num_prompts=2, deep=False, tune_bias=True,
                                      out_indices=3),
    'seg_img48': lambda p: seg(p, num_prompts=3, deep=True, out_indices=2, img_size=(48, 48)),
    'cls_deep_bias': lambda p: cls(p, num_prompts=6, deep=True, tune_bias=True),
    'cls_shallow_mlp': lambda p: cls(p, 'MLPClsHead', num_prompts=3, deep=False),
    'cls_layers12': lambda p: cls(p, num_prompts=5, prompt_layers=[1, 2]),
    'cls_bias_only': lambda p: cls(p, num_prompts=0, tune_bias=True),
    # LoRA and AdaptFormer tasks beside them: per-sample low-rank and adapter terms
    'seg_lora': lambda p: seg(p, lora=dict(rank=2, targets=('q', 'v', 'proj', 'fc1', 'fc2')),
                              out_indices=3),
    'cls_lora_vpt': lambda p: cls(p, num_prompts=2, lora=dict(rank=3, alpha=6,
                                                              targets=('k', 'v'))),
    'seg_adapter': lambda p: seg(p, in_index=0, adapter=dict(width=4), out_indices=(1, 3)),
    'seg_everything': lambda p: seg(p, num_prompts=2, tune_bias=True, lora=dict(rank=2),
                                    adapter=dict(width=3, scale=0.5), out_indices=3),
}


def _task_file(cfg, path, seed):
    """Train-like task: random tuned weights, saved as a task checkpoint."""
    model = trained_like(cfg, seed=seed, scale=0.2, batchnorm=True)
    torch.save(dict(state_dict=model.state_dict()), path)  # tuned weights only


@pytest.fixture(scope='module')
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('mt')
    pretrained = tiny_pretrained(str(tmp / 'vit.pth'), final_norm=True)
    mt = MultiTaskViT(build_shared_backbone(backbone(pretrained)))
    for seed, (name, make) in enumerate(TASKS.items()):
        cfg = Config(dict(model=make(pretrained)))
        path = str(tmp / f'{name}.pth')
        _task_file(cfg.model, path, seed)
        mt.add_task(name, load_task_model(cfg, path))
    return mt.eval(), pretrained, tmp


def _check(outputs, reference, tasks, kinds):
    for task, out, ref in zip(tasks, outputs, reference):
        assert out.shape == ref.shape, task
        assert out.shape[0] == (5 if kinds[task] == 'seg' else 7)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4, msg=task)


def test_mixed_batch_equals_each_task_alone(served):
    mt, _, _ = served
    names = list(TASKS)
    tasks = [names[i % len(names)] for i in range(2 * len(names))][::-1]
    torch.manual_seed(1)
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in tasks]
    with torch.no_grad():
        inputs = mt.preprocess(images, tasks)
        mixed = mt(inputs, tasks)
        alone = mt.run_alone(inputs, tasks)
    _check(mixed, alone, tasks, mt.kinds)
    # ... and equals one image at a time (no leakage between samples through padding)
    with torch.no_grad():
        single = [mt(inputs[i:i + 1], [t])[0] for i, t in enumerate(tasks)]
    _check(mixed, single, tasks, mt.kinds)


def test_mixed_batch_at_another_input_size(served):
    """Inputs larger than every img_size: each task resizes its own position embeddings."""
    mt, _, _ = served
    tasks = ['seg_img48', 'cls_layers12', 'seg_shallow_bias', 'cls_deep_bias']
    inputs = torch.randn(len(tasks), 3, 40, 56)
    with torch.no_grad():
        _check(mt(inputs, tasks), mt.run_alone(inputs, tasks), tasks, mt.kinds)


def test_task_weights_are_shared_not_copied(served):
    mt, _, _ = served
    shared = mt.backbone.layers[0].attn.attn.in_proj_weight
    for name, model in mt.tasks.items():
        assert model.backbone.layers[0].attn.attn.in_proj_weight is shared, name
    bias = mt.tasks['cls_deep_bias'].backbone.layers[0].attn.attn.in_proj_bias
    assert bias is not mt.backbone.layers[0].attn.attn.in_proj_bias


def test_incompatible_tasks_are_clear_errors(served):
    mt, pretrained, tmp = served
    # another width
    other = str(tmp / 'vit48.pth')
    torch.save(VisionTransformer(final_norm=True, **dict(ARCH, embed_dims=48)).state_dict(),
               other)
    cfg = cls(other, num_prompts=2)
    cfg['backbone']['embed_dims'] = 48
    cfg['head']['in_channels'] = 48
    with pytest.raises(ValueError, match='another ViT'):
        mt.add_task('wide', MODELS.build(cfg))
    # same architecture, other frozen weights (another pretrained file)
    other = tiny_pretrained(str(tmp / 'vit_other.pth'), seed=99, final_norm=True)
    model = MODELS.build(cls(other, num_prompts=2))
    model.init_weights()
    with pytest.raises(ValueError, match='another pretrained file'):
        mt.add_task('other_weights', model)
    # a fully fine-tuned backbone cannot be shared
    with pytest.raises(ValueError, match='freeze=True'):
        mt.add_task('full', MODELS.build(cls(pretrained, freeze=False)))
    with pytest.raises(KeyError, match='unknown tasks'):
        mt(torch.randn(1, 3, 32, 32), ['nope'])
    with pytest.raises(RuntimeError, match='eval mode'):
        mt.train()
    assert 'wide' not in mt.tasks and 'other_weights' not in mt.tasks


def test_backbone_file_without_final_norm_serves_segmentation_tasks(tmp_path):
    """MMSeg's ViT defaults to final_norm=False, so the demo's pretrained file has no final
    norm: the shared backbone follows the file, and a task that reads it is refused."""
    torch.manual_seed(3)
    vit = VisionTransformer(final_norm=False, **ARCH)
    vit.init_weights()
    pretrained = str(tmp_path / 'vit_no_norm.pth')
    torch.save(vit.state_dict(), pretrained)
    shared = build_shared_backbone(backbone(pretrained))
    assert not shared.final_norm and not hasattr(shared, 'norm1')
    mt = MultiTaskViT(shared)
    for seed, (name, cfg) in enumerate({
            'deep': seg(pretrained, in_index=0, num_prompts=4, out_indices=(1, 3)),
            'shallow_bias': seg(pretrained, num_prompts=2, deep=False, tune_bias=True,
                                out_indices=3)}.items()):
        path = str(tmp_path / f'{name}.pth')
        _task_file(cfg, path, seed)
        mt.add_task(name, load_task_model(Config(dict(model=cfg)), path))
    mt.eval()
    tasks = ['deep', 'shallow_bias', 'shallow_bias', 'deep']
    inputs = torch.randn(len(tasks), 3, 32, 32)
    with torch.no_grad():
        _check(mt(inputs, tasks), mt.run_alone(inputs, tasks), tasks, mt.kinds)
    # a classifier reads the final norm: this backbone cannot serve it
    with_norm = VisionTransformer(final_norm=True, **ARCH)
    with_norm.load_state_dict(vit.state_dict(), strict=False)
    other = str(tmp_path / 'vit_norm.pth')
    torch.save(with_norm.state_dict(), other)
    model = MODELS.build(cls(other, num_prompts=2))
    model.init_weights()
    with pytest.raises(ValueError, match='reads the final norm'):
        mt.add_task('cls', model)
    assert build_shared_backbone(backbone(other)).final_norm  # a file with one: built


# ------------------------------------------------------- timm ViTs (DINOv2, EVA02)
TIMM_TINY = dict(embed_dim=32, depth=3, num_heads=2)


def _timm_file(tmp, model_name, seed=0, **kwargs):
    """A tiny timm model of the family with random weights, as the hub publishes it."""
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    ref = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=28,
                            **TIMM_TINY, **kwargs)
    with torch.no_grad():  # zero biases and unit gammas would hide mistakes
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp / f'{model_name}_{seed}{"_".join(kwargs)}' / 'model.safetensors'
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return str(path)


def timm_seg(model_name, checkpoint, **kw):
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[100., 110., 120.],
                               std=[50., 60., 70.], bgr_to_rgb=True),
        backbone=dict(type='PromptedTimmViT', model_name=model_name, checkpoint=checkpoint,
                      model_kwargs=dict(TIMM_TINY), img_size=28, out_indices=(1, 2), **kw),
        decode_head=dict(type='SETRUPHead', in_channels=32, channels=8, in_index=-1,
                         num_classes=5, num_convs=2, up_scale=2, kernel_size=3,
                         norm_cfg=dict(type='BN'), align_corners=False, dropout_ratio=0,
                         loss_decode=dict(type='CrossEntropyLoss')))


TIMM_TASKS = {  # prompt-only and bias-tuned tasks together
    'deep': dict(num_prompts=3, deep=True),
    'shallow_bias': dict(num_prompts=2, deep=False, tune_bias=True),
    'bias_only': dict(num_prompts=0, tune_bias=True),
    'later_layers': dict(num_prompts=4, prompt_layers=[1, 2], final_norm=True),
    'lora': dict(lora=dict(rank=2, targets=('q', 'k', 'v', 'proj', 'fc1', 'fc2'))),
    'adapter_vpt': dict(num_prompts=2, adapter=dict(width=4, scale=0.5)),
}


@pytest.mark.parametrize('model_name,tasks', [
    ('vit_base_patch14_reg4_dinov2', list(TIMM_TASKS)),
    ('eva02_base_patch14_224', list(TIMM_TASKS)),  # RoPE; q/k/v as separate linears
], ids=['dinov2-reg4', 'eva02'])
def test_timm_tasks_share_one_frozen_backbone(tmp_path, model_name, tasks):
    """A mixed batch on one frozen timm ViT (registers, RoPE) gives each task what its
    own model gives alone; bias-tuned tasks get their biases per sample (hooks)."""
    pretrained = _timm_file(tmp_path, model_name)
    mt = MultiTaskViT(build_shared_backbone(timm_seg(model_name, pretrained)['backbone']))
    assert mt.backbone.final_norm  # the family has a last norm: built for tasks that read it
    for seed, name in enumerate(tasks):
        cfg = Config(dict(model=timm_seg(model_name, pretrained, **TIMM_TASKS[name])))
        path = str(tmp_path / f'{name}.pth')
        _task_file(cfg.model, path, seed)
        mt.add_task(name, load_task_model(cfg, path))
    mt.eval()
    order = [tasks[i % len(tasks)] for i in range(2 * len(tasks) + 1)][::-1]
    inputs = torch.randn(len(order), 3, 28, 42)
    with torch.no_grad():
        mixed, alone = mt(inputs, order), mt.run_alone(inputs, order)
    for task, out, ref in zip(order, mixed, alone):
        assert out.shape == (5, 28, 42)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4, msg=task)
    for name in ('lora', 'adapter_vpt'):  # their terms act (a zero update would pass too)
        model = mt.tasks[name]
        tuner = model.backbone.lora if name == 'lora' else model.backbone.adapter
        keep = [p.clone() for p in tuner.parameters()]
        with torch.no_grad():
            for p in tuner.parameters():
                p.zero_()
            idx = [i for i, t in enumerate(order) if t == name]
            off = mt(inputs[idx], [name] * len(idx))
            for p, k in zip(tuner.parameters(), keep):
                p.copy_(k)
        assert (off[0] - mixed[idx[0]]).abs().max() > 1e-4, name
    if 'shallow_bias' in tasks:  # the hooks really changed something
        shared = mt.backbone.vit.blocks[0].norm1.bias
        tuned = mt.tasks['shallow_bias'].backbone.vit.blocks[0].norm1.bias
        assert tuned is not shared and not torch.equal(tuned, shared)


def test_timm_tasks_that_cannot_share_are_clear_errors(tmp_path):
    name = 'vit_base_patch14_reg4_dinov2'
    pretrained = _timm_file(tmp_path, name)
    mt = MultiTaskViT(build_shared_backbone(timm_seg(name, pretrained)['backbone']))
    other = _timm_file(tmp_path, name, seed=1)   # same architecture, other weights
    task = MODELS.build(timm_seg(name, other, num_prompts=2))
    task.init_weights()
    with pytest.raises(ValueError, match='another pretrained file'):
        mt.add_task('other_weights', task)
    plain = 'vit_base_patch14_dinov2'  # another architecture: no registers
    task = MODELS.build(timm_seg(plain, _timm_file(tmp_path, plain), num_prompts=2))
    with pytest.raises(ValueError, match='another ViT'):
        mt.add_task('plain', task)
    mmseg_task = MODELS.build(seg(str(tmp_path / 'none.pth'), num_prompts=2))
    with pytest.raises(ValueError, match='PromptedVisionTransformer, the shared backbone is '
                                         'a PromptedTimmViT'):
        mt.add_task('mmseg', mmseg_task)
    # EVA with a fused q/k/v projection: its q/v biases are applied inside the attention
    eva = 'eva02_base_patch14_224'
    eva_file = _timm_file(tmp_path, eva, qkv_fused=True)
    cfg = timm_seg(eva, eva_file)
    cfg['backbone']['model_kwargs']['qkv_fused'] = True
    mt_eva = MultiTaskViT(build_shared_backbone(cfg['backbone']))
    cfg = timm_seg(eva, eva_file, num_prompts=2, tune_bias=True)
    cfg['backbone']['model_kwargs']['qkv_fused'] = True
    task = MODELS.build(cfg)
    task.init_weights()
    with pytest.raises(ValueError, match="q/v biases inside EVA"):
        mt_eva.add_task('eva_bias', task)
