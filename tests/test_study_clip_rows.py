"""The study's tiny-CLIP segmentation rows (configs/study/clip): each builds on the study's
CLIP shape, is Table 3's target task in all but the model, and tunes exactly what it
claims: linear the decoder and its classifier, text the decoder only, coop the decoder
and the context, vpt-coop those and the image tower's prompts."""
import os.path as osp

import pytest
import torch
from helpers import ROOT, perturb_tuned
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from vpt_seg.experiments.clip_pretrain import CLIP_SHAPE, TRAIN_CONTEXT
from vpt_seg.models.tiny_clip import write_tiny_clip

CLIP_ROWS = osp.join(ROOT, 'configs', 'study', 'clip')
TABLE3_BASE = osp.join(ROOT, 'configs', 'study', '_base_', 'setr_tiny.py')
ROWS = ('linear', 'text', 'coop', 'vpt-coop')
TEXT_KEY = 'model.decode_head.text_encoder.checkpoint'


@pytest.fixture(scope='module')
def clip_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp('tiny_clip')
    write_tiny_clip(str(folder), seed=1, **CLIP_SHAPE)
    return str(folder / 'open_clip_model.safetensors')


def _cfg(row: str, clip: str) -> Config:
    """The row's config with the CLIP file passed as the study passes it: the backbone key
    always, the text encoder's where the config has one."""
    cfg = Config.fromfile(osp.join(CLIP_ROWS, f'{row}.py'))
    options = {'model.backbone.checkpoint': clip}
    if 'text_encoder' in cfg.model.decode_head:
        options[TEXT_KEY] = clip
    cfg.merge_from_dict(options)
    return cfg


def _build(cfg: Config):
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def _ids(params) -> set:
    return {id(p) for p in params}


def _expected(row: str, model) -> set:
    """The parameters the row says it tunes, found by module, not by name."""
    head = model.decode_head
    text = getattr(head, 'text_encoder', None)
    text_params = _ids(text.parameters()) if text is not None else set()
    decoder = {id(p) for p in head.parameters() if id(p) not in text_params}
    expected = set(decoder)
    if row in ('coop', 'vpt-coop'):
        expected |= _ids(text.prompt.parameters())
    if row == 'vpt-coop':
        expected |= _ids(model.backbone.prompt.parameters())
    return expected


@pytest.mark.parametrize('row', ROWS)
def test_clip_rows_are_table3_target_task(row, clip_file):
    """Same data, classes, pipelines, crop and schedule as the Table 3 rows, so mIoU is
    comparable; the decoder has the Table 3 head's widths; the text rows name the target
    task's classes."""
    cfg, table3 = _cfg(row, clip_file), Config.fromfile(TABLE3_BASE)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                'param_scheduler', 'train_cfg', 'crop_size', 'classes'):
        assert cfg[key] == table3[key], key
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.model.type == table3.model.type == 'BoundedEncoderDecoder'
    head = cfg.model.decode_head
    # the linear row's decoder is the text rows' (only the classifier differs), at the
    # Table 3 head's width and up-sampling; one stage fewer (the base config says why)
    text_head = _cfg('text', clip_file).model.decode_head
    decoder = ('in_channels', 'channels', 'in_index', 'num_convs', 'up_scale', 'kernel_size',
               'norm_cfg', 'align_corners')
    assert [head[k] for k in decoder] == [text_head[k] for k in decoder]
    assert (head.channels, head.up_scale, head.kernel_size, head.num_convs + 1) == (
        table3.model.decode_head.channels, table3.model.decode_head.up_scale,
        table3.model.decode_head.kernel_size, table3.model.decode_head.num_convs)
    assert ('text_encoder' in head) == (row != 'linear')
    if row == 'linear':
        assert head.num_classes == len(table3.classes)
    else:
        assert tuple(head.text_encoder.vocabulary) == table3.classes


@pytest.mark.parametrize('row', ROWS)
def test_clip_rows_tune_what_they_claim_and_one_step_reaches_exactly_that(row, clip_file):
    torch.manual_seed(0)
    cfg = _cfg(row, clip_file)
    model = _build(cfg)
    model.train()
    # the 32 px CLIP's 4x4 grid resampled to 8x8 for 64x64 crops; pixels in the joint space
    assert model.backbone.vit.pos_embed.shape[1] == 1 + 8 * 8
    feats = model.extract_feat(torch.randn(1, 3, 64, 64))
    assert feats[-1].shape == (1, CLIP_SHAPE['embed_dim'], 8, 8)
    assert model.decode_head(feats).shape == (1, 8, 32, 32)  # resized to the labels by MMSeg

    tuned = {id(p) for p in model.parameters() if p.requires_grad}
    expected = _expected(row, model)
    assert tuned == expected
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if row == 'linear':
        assert 'decode_head.conv_seg.weight' in names
    else:
        text = model.decode_head.text_encoder
        context = _ids(text.prompt.parameters()) if text.prompt is not None else set()
        assert (len(context) > 0) == (row != 'text')
        assert not any(p.requires_grad for p in text.parameters() if id(p) not in context)
    assert any(n.startswith('backbone.') for n in names) == (row == 'vpt-coop')
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    assert {id(p) for g in optimizer.param_groups for p in g['params']} == expected

    # The text head's residual 1x1 (to_embedding) starts at zero, which stops a first
    # step's gradient before the decoder: take the weights as a few steps leave them.
    perturb_tuned(model)
    samples = []
    for _ in range(2):
        s = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                        pad_shape=(64, 64)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 8, (1, 64, 64)))
        samples.append(s)
    losses = model.loss(torch.randn(2, 3, 64, 64), samples)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    reached = {id(p) for p in model.parameters()
               if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == expected


@pytest.mark.parametrize('row', ['coop', 'vpt-coop'])
def test_coop_prompts_stay_on_the_positions_the_tiny_clip_trained(row, clip_file):
    """The context (4) + name + "." + start and end tokens end inside the first
    TRAIN_CONTEXT positions, the only ones the tiny CLIP's text tower learned."""
    model = _build(_cfg(row, clip_file))
    text = model.decode_head.text_encoder
    assert text.n_ctx == 4
    assert int(text.eot_index.max()) < TRAIN_CONTEXT
