"""The backbone contract (PromptedBackbone) and the one per-task mechanism (TaskBatch).

Both backbone families run one forward, ``forward_tasks``: ``forward(x)`` is its
one-task call, and a batch split into groups of the same task (what serving builds)
gives every sample what the model alone gives it, with prompts, biases, LoRA and
adapters all active. The mixed-task cases (different tasks side by side) are in
``test_multitask.py`` and ``test_vit_ops.py``."""
import copy

import pytest
import torch
from mmseg.registry import MODELS

import vpt_seg  # noqa: F401  (registers the backbones)
from vpt_seg.models.backbone import PromptedBackbone
from vpt_seg.models.prompted_vit import PromptedVisionTransformer
from vpt_seg.models.timm_vit import PromptedTimmViT
from vpt_seg.tuners.terms import ONE_TASK, TaskBatch

C = 32
TUNERS = dict(num_prompts=2, tune_bias=True, lora=dict(rank=2, targets=('q', 'fc1', 'fc2')),
              adapter=dict(width=4))
MMSEG = dict(type='PromptedVisionTransformer', img_size=(32, 32), patch_size=8, embed_dims=C,
             num_layers=2, num_heads=4, mlp_ratio=2, out_indices=(0, 1), patch_bias=True,
             final_norm=True, norm_cfg=dict(type='LN', eps=1e-6))
TIMM = dict(type='PromptedTimmViT', model_name='vit_base_patch14_reg4_dinov2', img_size=28,
            model_kwargs=dict(embed_dim=C, depth=2, num_heads=2), out_indices=(0, 1),
            final_norm=True)

#: The layout steps every backbone family implements (the rest is the base's).
STEPS = ('num_prefix_tokens', 'check_input', 'embed_patches', 'add_prefix', 'norm_pre',
         'run_block', 'norm_out', 'lora_sites', 'lora_weight', 'shared_structure',
         'configured_pretrained', 'load_pretrained')


def tuned(cfg):
    """A model with every tuner on and its tuned tensors away from their init."""
    torch.manual_seed(0)
    m = MODELS.build(dict(cfg, **TUNERS))
    with torch.no_grad():
        for _, p in m.named_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


@pytest.mark.parametrize('cfg', [MMSEG, TIMM], ids=['mmseg', 'timm'])
def test_forward_is_the_one_task_call_of_forward_tasks(cfg):
    m = tuned(cfg)
    size = 28 if cfg is TIMM else 32
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        alone = m(x)
        one, = m.forward_tasks(x, TaskBatch.one(m))
        # the same task in two groups of samples, as serving splits a batch
        groups = [torch.tensor([0, 2]), torch.tensor([1, 3])]
        split = m.forward_tasks(x, TaskBatch([m, m], groups, shared=m))
    assert len(alone) == 2
    for a, b in zip(alone, one):
        assert torch.equal(a, b)
    for idx, outs in zip(groups, split):
        for a, b in zip(alone, outs):
            torch.testing.assert_close(b, a[idx], rtol=1e-5, atol=1e-5)
    # the LoRA and adapter terms really act (a batch that dropped them would pass too)
    bare = copy.deepcopy(m)
    bare.lora = bare.adapter = None
    with torch.no_grad():
        assert not torch.allclose(bare(x)[-1], alone[-1])


def test_the_default_batch_adds_nothing():
    assert ONE_TASK.single and not ONE_TASK.active and not ONE_TASK.per_sample
    assert ONE_TASK.prompt_groups() == []


@pytest.mark.parametrize('cls', [PromptedVisionTransformer, PromptedTimmViT])
def test_each_family_implements_every_layout_step_and_inherits_the_forward(cls):
    assert issubclass(cls, PromptedBackbone)
    missing = [s for s in STEPS if getattr(cls, s) is getattr(PromptedBackbone, s)]
    assert not missing, f'{cls.__name__} does not implement {missing}'
    for shared in ('forward', 'forward_tasks', 'to_map', 'train', 'share_frozen'):
        assert getattr(cls, shared) is getattr(PromptedBackbone, shared), shared


def test_per_sample_biases_need_the_hooked_layers():
    """TaskBatch.hooked refuses a tuned parameter that is not a layer's output bias."""
    base = torch.nn.Sequential(torch.nn.Linear(2, 2))
    base.register_parameter('scale', torch.nn.Parameter(torch.ones(2)))
    task = copy.deepcopy(base)
    task.tune_bias = True
    for p in base.parameters():
        p.requires_grad_(False)
    task[0].weight.requires_grad_(False)
    task[0].bias.requires_grad_(False)  # only 'scale' is tuned: no hook can give it
    batch = TaskBatch([task, base], [torch.tensor([0]), torch.tensor([1])], shared=base)
    with pytest.raises(ValueError, match='scale: a tuned parameter inside Sequential'):
        with batch.hooked(base):
            pass
