"""TextSegHead in BoundedEncoderDecoder on a tiny CLIP file: the pixel path and the logits
written out over open_clip's own modules, the fixed-text baseline against open_clip's
text features, what is tuned, one text pass per step for every head, the folded (fixed)
classifier, and the refusals."""
import os.path as osp

import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT
from mmengine.config import ConfigDict
from mmengine.structures import PixelData

import vpt_seg  # noqa: F401  (before mmseg)

# isort: split
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from test_text_encoder import official

from vpt_seg.models.tiny_clip import TINY_CLIP, write_tiny_clip

NAMES = ['cat', 'traffic light', 'bed', 'fire hydrant', 'person']
E = TINY_CLIP['embed_dim']                                   # 32
WIDTH = TINY_CLIP['vision_width']                            # 64
TEXT = dict(embed_dims=TINY_CLIP['text_width'], num_layers=TINY_CLIP['text_layers'],
            num_heads=TINY_CLIP['text_heads'], output_dims=E)
SIZE = 32


@pytest.fixture(scope='module')
def clip_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp('clip')
    model = write_tiny_clip(str(folder), seed=3)
    return str(folder / 'open_clip_model.safetensors'), model


def text_encoder(path, n_ctx=4, **kw):
    return dict(type='CoOpTextEncoder', vocabulary=NAMES, checkpoint=path, n_ctx=n_ctx,
                **TEXT, **kw)


def aux_head(in_index=0):
    return dict(type='TextSegHead', in_channels=(WIDTH, E)[in_index], channels=8,
                in_index=in_index,
                text_encoder='shared', residual=False, num_convs=1,
                loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4))


def seg_cfg(path, head=None, aux=None, backbone=None, **text):
    return dict(
        type='BoundedEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', size=(SIZE, SIZE)),
        backbone=dict(type='PromptedTimmViT', model_name='vit_base_patch16_clip_quickgelu_224',
                      checkpoint=path, img_size=(SIZE, SIZE), patch_size=8, out_indices=(0, 1),
                      model_kwargs=dict(embed_dim=WIDTH, depth=2, num_heads=2, num_classes=E),
                      **(backbone or {})),
        decode_head=dict(dict(type='TextSegHead', in_channels=E, channels=8, num_convs=1,
                              norm_cfg=None, text_encoder=text_encoder(path, **text)),
                         **(head or {})),
        auxiliary_head=aux, test_cfg=dict(mode='whole'))


def build(cfg):
    model = MODELS.build(ConfigDict(cfg))  # test_cfg read as attributes, as configs give it
    model.init_weights()
    return model.eval()


def images(n=2, size=SIZE):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def samples(n=2, size=SIZE):
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(n):
        label = torch.randint(0, len(NAMES), (1, size, size), generator=g)
        label[:, :4] = 255  # ignored
        out.append(SegDataSample(gt_sem_seg=PixelData(data=label),
                                 metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                               pad_shape=(size, size))))
    return out


def clip_pixels(clip, x):
    """open_clip's image tower: every token through ln_post and the projection,
    ``(B, E, h, w)``: DenseCLIP's and MaskCLIP's per-pixel embeddings."""
    visual = clip.visual
    visual.output_tokens = True
    try:
        _, tokens = visual(x)                                           # (B, hw, W), ln_post
    finally:
        visual.output_tokens = False
    side = int(tokens.shape[1] ** 0.5)
    return (tokens @ visual.proj).transpose(1, 2).reshape(len(x), -1, side, side)


def scaled_cos(clip, pixels, text):
    """``exp(logit_scale) * cos(pixel, t_i)`` written out: ``(B, K, H, W)``."""
    return clip.logit_scale.exp() * torch.einsum(
        'behw,ke->bkhw', pixels / pixels.norm(dim=1, keepdim=True), text)


def test_logits_are_the_scaled_cosine_over_clips_modules(clip_file):
    """The pixel path (final norm + visual projection on the patch tokens) is open_clip's;
    the untrained head is CLIP's dense classifier; the trained one refines it with the
    decoder, written out here as the functions it computes."""
    path, clip = clip_file
    model = build(seg_cfg(path))
    head = model.decode_head
    with torch.no_grad():
        head.text_encoder.ctx.normal_(std=0.1)
        _, text, _ = official(clip, NAMES, head.text_encoder.ctx, 4, 'end', None)  # normalized
        x = images()
        pixels = clip_pixels(clip, x)                                   # (B, E, 4, 4)
        maps = model.extract_feat(x)
        assert maps[-1].shape == (2, E, 4, 4) and maps[0].shape == (2, WIDTH, 4, 4)
        torch.testing.assert_close(maps[-1], pixels, atol=1e-5, rtol=1e-5)
        up = F.interpolate(pixels, scale_factor=2, mode='bilinear', align_corners=False)
        torch.testing.assert_close(model._forward(x), scaled_cos(clip, up, text),
                                   atol=1e-4, rtol=1e-4)
        for p in head.to_embedding.parameters():  # a trained head: the decoder counts
            p.normal_(std=0.2)
        conv, proj = head.decoder[0].conv, head.to_embedding
        hidden = F.relu(F.conv2d(pixels, conv.weight, conv.bias, padding=1))
        hidden = F.interpolate(hidden, scale_factor=2, mode='bilinear', align_corners=False)
        refined = up + F.conv2d(hidden, proj.weight, proj.bias)
        ours = model._forward(x)
        torch.testing.assert_close(ours, scaled_cos(clip, refined, text), atol=1e-4, rtol=1e-4)
    assert ours.shape == (2, len(NAMES), 8, 8)
    assert head.class_names == NAMES and model.num_classes == head.num_classes == 5
    pred = model.predict(x, samples())
    assert pred[0].pred_sem_seg.data.shape == (1, SIZE, SIZE)


def test_fixed_template_head_is_open_clips_text(clip_file):
    """n_ctx=0 with templates: the fixed-text baseline, open_clip's encode_text."""
    path, clip = clip_file
    model = build(seg_cfg(path, n_ctx=0, templates='a photo of a {}.'))
    tok = open_clip.get_tokenizer('ViT-B-16')
    with torch.no_grad():
        ref = clip.logit_scale.exp() * clip.encode_text(
            tok([f'a photo of a {n}.' for n in NAMES]), normalize=True)
    torch.testing.assert_close(model.decode_head.class_embeddings(), ref, atol=1e-5, rtol=1e-5)
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    assert tuned and all(n.startswith('decode_head.') and '.text_encoder.' not in n
                         for n in tuned)


def test_gradients_reach_context_decoder_and_tuned_image_parts_only(clip_file):
    path, _ = clip_file
    model = build(seg_cfg(path, aux=[aux_head(0)],
                          backbone=dict(num_prompts=2, deep=True, tune_bias=True)))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() > 1 and not p.abs().sum():
                p.normal_(std=0.1)  # the zero-initialised 1x1: every decoder layer gets a grad
    model.train()
    losses = model.loss(images(), samples())
    assert {'decode.loss_ce', 'aux_0.loss_ce'} <= set(losses)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    grads = {n for n, p in model.named_parameters()
             if p.grad is not None and p.grad.abs().sum() > 0}
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grads == tuned
    assert 'decode_head.text_encoder.prompt.ctx' in tuned
    assert any(n.startswith('decode_head.decoder.') for n in tuned)
    assert any(n.startswith('auxiliary_head.0.decoder.') for n in tuned)
    assert any(n.startswith('backbone.prompt.') for n in tuned)
    assert any(n.startswith('backbone.vit.blocks') and n.endswith('.bias') for n in tuned)
    frozen = [n for n in tuned if '.text_encoder.text.' in n or 'logit_scale' in n
              or n.startswith('backbone.vit.head')]
    assert frozen == []
    assert not [k for k in model.state_dict() if k.startswith('auxiliary_head.0.text')]


def test_one_text_pass_per_step_for_every_head(clip_file, monkeypatch):
    """The auxiliary heads take the decode head's class embeddings: one text-encoder call
    per training step (with a graph to the context) and per prediction."""
    path, _ = clip_file
    model = build(seg_cfg(path, aux=[aux_head(0), aux_head(1)]))
    encoder = model.decode_head.text_encoder
    calls = []
    forward = encoder.forward
    monkeypatch.setattr(encoder, 'forward', lambda: calls.append(1) or forward())
    model.train()
    losses = model.loss(images(), samples())
    assert len(calls) == 1
    assert {'decode.loss_ce', 'aux_0.loss_ce', 'aux_1.loss_ce'} <= set(losses)
    losses['aux_1.loss_ce'].backward()  # the auxiliary head's loss reaches the context
    assert encoder.ctx.grad is not None and encoder.ctx.grad.abs().sum() > 0
    model.loss(images(), samples())
    assert len(calls) == 2  # a step computes them afresh (the context has moved)
    model.eval()
    model.predict(images(), samples())
    assert len(calls) == 3
    aux = model.auxiliary_head[1]
    assert aux.text_owner() is model.decode_head and aux.embed_dims == E
    model.decode_head.set_classes(['dog', 'tree'])  # the auxiliary heads follow
    assert aux.num_classes == model.num_classes == model.out_channels == 2
    assert model._forward(images()).shape[1] == 2


def test_fixed_class_embeddings_are_the_text_heads_classifier(clip_file):
    """text_encoder=None: the class embeddings in conv_seg (a bias-free 1x1 convolution):
    with the text head's embeddings and decoder, the same logits without a text tower."""
    path, _ = clip_file
    model = build(seg_cfg(path))
    head = model.decode_head
    with torch.no_grad():
        for p in head.to_embedding.parameters():
            p.normal_(std=0.2)
    fixed = MODELS.build(dict(type='TextSegHead', in_channels=E, channels=8, num_convs=1,
                              norm_cfg=None, num_classes=5, embed_dims=E, class_names=NAMES))
    state = {k: v for k, v in head.state_dict().items() if not k.startswith('text_encoder.')}
    state['conv_seg.weight'] = head.class_embeddings().detach()[:, :, None, None]
    fixed.load_state_dict(state, strict=True)
    fixed.eval()
    maps = model.extract_feat(images())
    with torch.no_grad():
        torch.testing.assert_close(fixed(maps), head(maps))
    assert fixed.num_classes == 5 and fixed.class_names == NAMES
    assert not any(p.requires_grad for p in fixed.conv_seg.parameters())
    with pytest.raises(ValueError, match='fixed class embeddings .*cannot change'):
        fixed.set_classes(['dog'])


@pytest.mark.parametrize('backbone,match', [
    (dict(model_name='vit_base_patch16_224'),
     r"'vit_base_patch16_224' is not a CLIP image tower: it has no visual projection"),
    (dict(keep_projection=False, model_kwargs=dict(embed_dim=WIDTH, depth=2, num_heads=2)),
     r"project_out=True maps the last layer's tokens into CLIP's joint space; it needs "
     r'keep_projection=True'),
    (dict(final_norm=False, out_indices=(0, )),
     r'it needs final_norm=True \(CLIP projects the final-normed tokens\), the last layer '
     r'\(1\) in out_indices'),
    (dict(project_out=False), r'the backbone does not output them: leave the backbone'),
])
def test_backbone_without_projection_refused(clip_file, backbone, match):
    path, _ = clip_file
    cfg = seg_cfg(path)
    cfg['backbone'].update(backbone)
    with pytest.raises(ValueError, match=match):
        MODELS.build(cfg)


def test_mmseg_layout_backbone_refused(clip_file):
    path, _ = clip_file
    cfg = seg_cfg(path)
    cfg['backbone'] = dict(type='PromptedVisionTransformer', img_size=(SIZE, SIZE), patch_size=8,
                           embed_dims=WIDTH, num_layers=2, num_heads=2)
    with pytest.raises(ValueError, match=r'TextSegHead compares CLIP image embeddings with text '
                                         r'embeddings.*backbone PromptedVisionTransformer has '
                                         r"none.*type='PromptedTimmViT'"):
        MODELS.build(cfg)


def test_shared_and_option_errors(clip_file):
    path, _ = clip_file
    cfg = seg_cfg(path, aux=[aux_head()])
    cfg['decode_head'] = dict(type='LeanSETRUPHead', in_channels=E, channels=8, num_classes=5,
                              num_convs=1, up_scale=2, norm_cfg=None)
    with pytest.raises(ValueError, match=r"text_encoder='shared'\) uses the decode head's text "
                                         r'encoder, and the decode head \(LeanSETRUPHead\) '
                                         r'has none'):
        MODELS.build(cfg)
    with pytest.raises(ValueError, match=r'build it as an auxiliary head of '
                                         r'BoundedEncoderDecoder'):
        MODELS.build(aux_head())
    with pytest.raises(ValueError, match=r'in_channels \(64\) must be the joint space'):
        MODELS.build(seg_cfg(path, head=dict(in_channels=WIDTH)))
    with pytest.raises(ValueError, match=r'num_classes=7, but the text encoder gives 5'):
        MODELS.build(seg_cfg(path, head=dict(num_classes=7)))
    with pytest.raises(ValueError, match=r'without one, num_classes and embed_dims'):
        MODELS.build(dict(type='TextSegHead', in_channels=E, channels=8))
    model = build(seg_cfg(path))
    with pytest.raises(AttributeError, match=r'set_classes'):
        model.decode_head.num_classes = 3
    with pytest.raises(ValueError, match=r'reads a map of 32 channels and got \(2, 64, 4, 4\)'):
        model.decode_head([torch.zeros(2, WIDTH, 4, 4)])


def test_demo_config_takes_a_training_step_on_the_tiny_clip(tmp_path, monkeypatch):
    """configs/demo/coop_seg_tiny_ade20k.py (tools/demo.py --backbone clip) on the tiny
    CLIP tools/demo.py writes: 150 ADE20k class names, one optimizer step."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    from vpt_seg.experiments.demo import write_backbone
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'demo', 'coop_seg_tiny_ade20k.py'))
    assert write_backbone(cfg) == 'pretrain/tiny_clip'
    model = build(cfg.model).train()
    assert model.num_classes == 150 and model.decode_head.class_names[7] == 'bed'
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    ctx = model.decode_head.text_encoder.ctx.detach().clone()
    data = dict(inputs=[torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8)
                        for _ in range(2)], data_samples=samples())
    losses = model.train_step(data, optim)
    assert torch.isfinite(losses['loss'])
    assert not torch.equal(model.decode_head.text_encoder.ctx, ctx)


def test_task_checkpoint_and_task_file_round_trip(clip_file, tmp_path):
    """A CoOp segmentation task saves the context and the heads (the auxiliary head holds
    no text tower); its checkpoint and its portable task file load to the same logits,
    the frozen towers read again from the CLIP file."""
    import shutil

    from helpers import perturb_tuned
    from mmengine.config import Config

    from vpt_seg.formats.export import export_task
    from vpt_seg.formats.loading import load_task_model
    path, _ = clip_file
    local = str(tmp_path / 'open_clip_model.safetensors')
    shutil.copy(path, local)
    cfg = seg_cfg(local, aux=[aux_head(0)], backbone=dict(num_prompts=2))
    model = build(cfg)
    perturb_tuned(model)
    state = model.state_dict()
    assert not [k for k in state if '.text.' in k or k.startswith('auxiliary_head.0.text')]
    assert 'decode_head.text_encoder.prompt.ctx' in state
    ckpt = str(tmp_path / 'task.pth')
    torch.save(dict(state_dict=state, meta={}), ckpt)
    x = images()
    with torch.no_grad():
        expected = model._forward(x)
    config = Config(dict(model=cfg))
    for source, conf in ((ckpt, config), (str(tmp_path / 'task.safetensors'), None)):
        if conf is None:
            export_task(config, ckpt, source)
        loaded = load_task_model(conf, source).eval()
        assert loaded.auxiliary_head[0].text_owner() is loaded.decode_head
        with torch.no_grad():
            torch.testing.assert_close(loaded._forward(x), expected)

    # Other text-tower weights in the file: refused by sha256, naming the key a
    # segmentation config sets (not the classification head's).
    from safetensors.torch import load_file, save_file
    weights = load_file(local)
    weights['token_embedding.weight'] = weights['token_embedding.weight'] + 0.01
    save_file(weights, local)
    with pytest.raises(ValueError, match=r'none of the candidates holds the frozen weights.*'
                                         r'model\.decode_head\.text_encoder\.checkpoint'):
        load_task_model(config, ckpt)
