"""Every config builds; the ADE20k rows land on the paper's Table 3 parameter counts."""
import glob
import os.path as osp
import subprocess
import sys

import pytest
from helpers import ROOT, run_tool
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmseg.registry import MODELS

from vpt_seg.tuners.tuning import count_parameters, parameter_report

#: SETR-PUP on frozen timm ViT-Ls (PromptedTimmViT): tuned parameters in millions
#: (heads 13.14M + prompts 24 x P x 1024 + biases), as tools/count_params.py prints them.
TIMM_CONFIGS = {
    'setr_vpt_dinov2_ade20k.py': ('vit_large_patch14_reg4_dinov2.lvd142m', 13.39),
    'setr_vpt-bias_dinov2_ade20k.py': ('vit_large_patch14_reg4_dinov2.lvd142m', 15.87),
    'setr_vpt_eva02_ade20k.py': ('eva02_large_patch14_224.mim_m38m', 13.39),
    'setr_vpt-bias_eva02_ade20k.py': ('eva02_large_patch14_224.mim_m38m', 15.95),
    'setr_lora_dinov2_ade20k.py': ('vit_large_patch14_reg4_dinov2.lvd142m', 13.93),
    'setr_adaptformer_dinov2_ade20k.py': ('vit_large_patch14_reg4_dinov2.lvd142m', 16.32),
}
ADE_CONFIGS = sorted(p for p in glob.glob(osp.join(ROOT, 'configs', 'setr_*.py'))
                     if osp.basename(p) not in TIMM_CONFIGS)

# Tunable parameters of SETR on ViT-L, Table 3 of Jia et al. (ECCV 2022), in millions.
TABLE3 = {
    'setr_head_ade20k.py': 13.18,
    'setr_bias_ade20k.py': 13.46,
    'setr_vpt-deep_ade20k.py': 13.43,
    'setr_vpt_ade20k.py': 13.43,
    'setr_vpt-bias_ade20k.py': 15.79,
}
#: Rows beside Table 3 (not in the paper): tuned parameters in millions, and the exact
#: count of the method's own part (parameter_report's row) on a ViT-L/16.
LORA_VIT_L = 24 * 2 * (1024 * 8 + 8 * 1024)             # rank 8 on q and v
ADAPTER_VIT_L = 24 * (1024 * 64 + 64 + 64 * 1024 + 1024)  # width 64, with biases
TUNERS = {
    'setr_lora_ade20k.py': (13.93, 'LoRA', LORA_VIT_L),
    'setr_adaptformer_ade20k.py': (16.32, 'adapters', ADAPTER_VIT_L),
    'setr_lora_dinov2_ade20k.py': (13.93, 'LoRA', LORA_VIT_L),
    'setr_adaptformer_dinov2_ade20k.py': (16.32, 'adapters', ADAPTER_VIT_L),
}


def _check_tuners(name, model):
    """The LoRA/AdaptFormer rows: their part's exact count, and the optimizer gives it the
    prompts' 10x learning rate (configs/_base_/vpt_backbone.py)."""
    total, part, exact = TUNERS[name]
    backbone = model.backbone
    report = parameter_report(model, backbone, getattr(backbone, 'prompt', None))
    assert report[part]['tuned'] == report[part]['total'] == exact, report
    assert count_parameters(model, tuned_only=True) / 1e6 == pytest.approx(total, abs=0.01)
    assert report['prompts']['tuned'] == 0
    cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
    optim = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    base_lr = cfg.optim_wrapper.optimizer.lr
    tuner = getattr(backbone, 'lora' if part == 'LoRA' else 'adapter')
    ids = {id(p) for p in tuner.parameters()}
    groups = [g for g in optim.param_groups if any(id(p) in ids for p in g['params'])]
    assert sum(p.numel() for g in groups for p in g['params']) == exact
    assert all(g['lr'] == pytest.approx(10 * base_lr) for g in groups)
    assert all(g['weight_decay'] == cfg.optim_wrapper.optimizer.weight_decay for g in groups)


@pytest.mark.parametrize('path', ADE_CONFIGS, ids=osp.basename)
def test_ade20k_config_builds_with_the_paper_setup(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports['imports'] == ['vpt_seg']
    assert cfg.model.backbone.type == 'PromptedVisionTransformer'
    assert cfg.model.backbone.patch_bias is True
    assert cfg.model.decode_head.num_classes == 150 and cfg.crop_size == (512, 512)
    # label maps of large images in bounded memory, also under --tta
    assert (cfg.model.type, cfg.tta_model.type) == ('BoundedEncoderDecoder',
                                                    'BoundedSegTTAModel')
    model = MODELS.build(cfg.model)
    backbone = model.backbone
    assert (backbone.cls_token.shape[-1], len(backbone.layers),
            backbone.patch_size) == (1024, 24, 16)
    name = osp.basename(path)
    if name in TABLE3:
        tuned = count_parameters(model, tuned_only=True) / 1e6
        assert tuned == pytest.approx(TABLE3[name], rel=0.01), name
    if name in TUNERS:
        _check_tuners(name, model)
    if 'full' in name:
        assert count_parameters(model, tuned_only=True) == count_parameters(model)
    else:  # the pretrained weights stay frozen (LoRA's A/B and adapters are the method's)
        assert not any(p.requires_grad for n, p in backbone.named_parameters()
                       if n.endswith('weight') and n.split('.')[0] not in ('lora', 'adapter'))


@pytest.mark.parametrize('name', sorted(TIMM_CONFIGS))
def test_timm_ade20k_configs_build_at_full_size(name):
    """DINOv2-L/14 (registers) and EVA02-L/14 on the SETR-PUP base: 512 crops on a
    32x32 grid (patch embedding resampled to 16 at load), ViT-L's out_indices."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
    model_name, tuned = TIMM_CONFIGS[name]
    backbone_cfg = cfg.model.backbone
    assert backbone_cfg.type == 'PromptedTimmViT' and backbone_cfg.model_name == model_name
    assert backbone_cfg.checkpoint.startswith('pretrain/') and cfg.crop_size == (512, 512)
    assert 'patch_bias' not in backbone_cfg and 'init_cfg' not in backbone_cfg
    model = MODELS.build(cfg.model)
    vit = model.backbone
    assert (vit.vit.embed_dim, len(vit.vit.blocks), vit.patch_size) == (1024, 24, 16)
    assert vit.out_indices == (9, 14, 19, 23) and vit.img_size == (512, 512)
    assert count_parameters(model, tuned_only=True) / 1e6 == pytest.approx(tuned, abs=0.01)
    assert not any(p.requires_grad for n, p in vit.named_parameters()
                   if n.endswith('weight') and n.split('.')[0] not in ('lora', 'adapter'))
    if name in TUNERS:
        _check_tuners(name, model)
    assert (cfg.model.type, cfg.tta_model.type) == ('BoundedEncoderDecoder',
                                                    'BoundedSegTTAModel')


#: CoOp on OpenAI's CLIP ViT-B/16: tuned parameters (the context, 16 x 512; with VPT-deep
#: also 8 prompts x 768 in each of the 12 layers).
COOP_CONFIGS = {'coop_cls_imagefolder.py': 16 * 512,
                'vpt-coop_cls_imagefolder.py': 16 * 512 + 12 * 8 * 768}
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]


@pytest.mark.parametrize('name', sorted(COOP_CONFIGS))
def test_coop_configs_build_at_full_size_with_clip_normalisation(name):
    """CoOp's model on ViT-B/16 OpenAI (both towers from one open_clip file), CLIP's
    normalisation and bicubic resizing, the context (and prompts) the only tuned part."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
    backbone_cfg, text_cfg = cfg.model.backbone, cfg.model.head.text_encoder
    assert backbone_cfg.model_name == 'vit_base_patch16_clip_quickgelu_224'
    assert backbone_cfg.checkpoint == text_cfg.checkpoint == \
        'pretrain/clip_vit_b16/open_clip_model.safetensors'
    assert (text_cfg.n_ctx, text_cfg.ctx_init, text_cfg.csc, text_cfg.class_position) == \
        (16, None, False, 'end')
    assert cfg.model.data_preprocessor.mean == pytest.approx([m * 255 for m in OPENAI_MEAN])
    assert all(step.get('interpolation') == 'bicubic'
               for step in cfg.train_pipeline + cfg.test_pipeline if step.type == 'Resize')
    assert (cfg.optim_wrapper.optimizer.type, cfg.optim_wrapper.optimizer.lr,
            cfg.train_dataloader.batch_size) == ('SGD', 0.002, 32)
    assert cfg.optim_wrapper.constructor == 'TunedOptimWrapperConstructor'
    model = MODELS.build(cfg.model)
    assert model.backbone.visual_projection.out_features == model.head.in_channels == 512
    assert model.data_preprocessor.mean.flatten().tolist() == pytest.approx(
        [m * 255 for m in OPENAI_MEAN])
    assert count_parameters(model, tuned_only=True) == COOP_CONFIGS[name]
    optim = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    assert sum(p.numel() for g in optim.param_groups for p in g['params']) == COOP_CONFIGS[name]


@pytest.mark.parametrize('path', ['demo/setr_vpt_tiny_ade20k.py',
                                  'demo/setr_vpt_tiny_dinov2_ade20k.py', 'study/vpt-deep.py',
                                  'study/head.py', 'study/full.py', 'study/lora.py',
                                  'study/adaptformer.py'])
def test_small_segmentation_configs_use_the_bounded_segmentor(path):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', path))
    assert cfg.model.type == 'BoundedEncoderDecoder'
    if 'tta_model' in cfg:
        assert cfg.tta_model.type == 'BoundedSegTTAModel'


def test_count_params_tool_prints_parts_and_task_file_size():
    out = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'count_params.py'),
         osp.join(ROOT, 'configs', 'setr_vpt_ade20k.py')],
        capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows['prompts'][:2] == ['0.25M', '0.25M']
    assert rows['heads'][0] == '13.14M' and rows['total'][0] == '13.39M'
    assert 'task file' in out and 'MiB' in out


def test_count_params_tool_prints_the_timm_rows():
    proc = run_tool('count_params.py',  # in a forked child (tests/helpers.py)
                    osp.join(ROOT, 'configs', 'setr_vpt-bias_dinov2_ade20k.py'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    rows = {' '.join(line.split()[:-3]): line.split()[-3:] for line in out.splitlines()
            if line.strip()}
    assert rows['prompts'][:2] == ['2.46M', '2.46M']
    assert rows['backbone biases'][:2] == ['0.27M', '0.27M']
    assert rows['heads'][0] == '13.14M' and rows['total'][0] == '15.87M'


#: The CLIP segmentation rows (docs/coop.md#segmentation): what each changes from the
#: CoOp row of its size, the rest shared through configs/_base_/clip_seg_*.py.
CLIP_ROWS = {'coop': (16, None, 0, 'TextSegHead'), 'text': (0, 'vild', 0, 'TextSegHead'),
             'vpt-coop': (16, None, 10, 'TextSegHead'), 'linear': (None, None, 0, 'LeanSETRUPHead'),
             'vpt-linear': (None, None, 10, 'LeanSETRUPHead')}
CLIP_SIZES = {'b16': ('vit_base_patch16_clip_quickgelu_224', 'clip_vit_b16', 512, (3, 7, 11), None),
              'l14': ('vit_large_patch14_clip_quickgelu_224', 'clip_vit_l14', 768, (7, 15, 23),
                      16)}


# Both sizes, both head kinds, templates and prompts (tests/test_docs.py builds all ten).
@pytest.mark.parametrize('row,size', [('coop', 'b16'), ('linear', 'b16'), ('text', 'l14'),
                                      ('vpt-linear', 'l14')])
def test_clip_segmentation_configs_are_one_recipe(row, size):
    """Both towers from one open_clip file, the pixel path in CLIP's joint space, CLIP's
    normalisation, DenseCLIP's optimizer and schedule; only the row's own change differs."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', f'clip_{row}_vit-{size}_ade20k.py'))
    n_ctx, templates, prompts, head_type = CLIP_ROWS[row]
    model_name, folder, dims, out_indices, patch = CLIP_SIZES[size]
    backbone, head = cfg.model.backbone, cfg.model.decode_head
    clip = f'pretrain/{folder}/open_clip_model.safetensors'
    assert (backbone.model_name, backbone.checkpoint, backbone.out_indices,
            backbone.get('patch_size'), backbone.num_prompts) == (
                model_name, clip, out_indices, patch, prompts)
    assert backbone.keep_projection and backbone.final_norm and backbone.project_out
    assert cfg.crop_size == (512, 512) and backbone.img_size == (512, 512)
    assert (head.type, head.in_channels, head.in_index) == (head_type, dims, -1)
    assert [a.type for a in cfg.model.auxiliary_head] == [head_type] * 2
    if head_type == 'TextSegHead':
        text = head.text_encoder
        assert (text.checkpoint, text.dataset_name, text.n_ctx, text.get('templates'),
                text.get('output_dims', 512)) == (clip, 'ade20k', n_ctx, templates, dims)
        assert all(a.text_encoder == 'shared' for a in cfg.model.auxiliary_head)
    assert cfg.model.data_preprocessor.mean == pytest.approx([m * 255 for m in OPENAI_MEAN])
    optim = cfg.optim_wrapper
    assert (optim.optimizer.type, optim.optimizer.lr, optim.optimizer.weight_decay,
            optim.constructor) == ('AdamW', 1e-4, 1e-4, 'TunedOptimWrapperConstructor')
    assert [(s.type, s.begin, s.end) for s in cfg.param_scheduler] == [
        ('LinearLR', 0, 1500), ('PolyLR', 1500, 80000)]
    assert (cfg.train_cfg.max_iters, cfg.train_dataloader.batch_size) == (80000, 4)
    assert (cfg.model.type, cfg.tta_model.type) == ('BoundedEncoderDecoder',
                                                    'BoundedSegTTAModel')
