"""PromptedTimmViT on CLIP files as open_clip publishes them: the image tower and its
visual projection against open_clip's own ``encode_image``; the refusals.

The CLIP is tiny and random (open_clip builds it, :mod:`vpt_seg.models.tiny_clip`), saved
in each published layout: ``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``
and the hub folder with ``open_clip_config.json``."""
import json
import os.path as osp
import shutil

import pytest
import torch
from mmseg.registry import MODELS

import vpt_seg  # noqa: F401  (registers the modules)

# isort: split
from vpt_seg.formats.weights import UnreadableCheckpointError
from vpt_seg.models.classifier import default_data_preprocessor
from vpt_seg.models.tiny_clip import write_tiny_clip

CLIP_NAME = 'vit_base_patch16_clip_quickgelu_224'
#: The brief's tiny CLIP: image 32 px, patch 16, width 64, one layer and head; joint 32.
SHAPE = dict(embed_dim=32, image_size=32, patch_size=16, vision_width=64, vision_layers=1,
             vision_heads=1, text_width=64, text_heads=1, text_layers=1)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    """(folder, open_clip model): the tiny CLIP in open_clip's hub layout, .bin included."""
    folder = str(tmp_path_factory.mktemp('tiny_clip'))
    model = write_tiny_clip(folder, seed=0, torch_file=True, **SHAPE)
    return folder, model


def backbone(checkpoint, name=CLIP_NAME, **kwargs):
    cfg = dict(type='PromptedTimmViT', model_name=name, checkpoint=checkpoint,
               model_kwargs=dict(embed_dim=64, depth=1, num_heads=1, num_classes=32),
               img_size=32, keep_projection=True, final_norm=True, output_cls_token=True)
    cfg.update(kwargs)
    model = MODELS.build(cfg)
    model.init_weights()
    return model.eval()


@pytest.mark.parametrize('layout', ['open_clip_model.safetensors',
                                    'open_clip_pytorch_model.bin', 'folder'])
def test_image_embedding_equals_open_clip_encode_image(clip, layout):
    folder, ref = clip
    model = backbone(folder if layout == 'folder' else osp.join(folder, layout))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled = model(x)[-1][1]                                       # (B, 64)
        ours = model.visual_projection(pooled)                          # (B, 32)
        theirs = ref.encode_image(x)
    assert ours.shape == (3, 32)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    # the projection is OpenAI's visual.proj, transposed, frozen
    torch.testing.assert_close(model.visual_projection.weight, ref.visual.proj.detach().T)
    assert not any(p.requires_grad for p in model.visual_projection.parameters())


def test_projection_is_never_tuned_and_prompts_reach_it(clip):
    """With bias tuning, every bias is tuned but the projection's; gradients of the
    projected embedding reach the prompts."""
    folder, _ = clip
    model = backbone(folder, tune_bias=True, num_prompts=2).train()
    tuned = [n for n, p in model.named_parameters() if p.requires_grad]
    assert 'vit.head.bias' not in tuned and 'vit.head.weight' not in tuned
    assert 'vit.blocks.0.attn.qkv.bias' in tuned and 'prompt.embeddings' in tuned
    out = model.visual_projection(model(torch.randn(2, 3, 32, 32))[-1][1])
    out.square().sum().backward()
    assert model.prompt.embeddings.grad.abs().sum() > 0
    assert model.visual_projection.weight.grad is None


def test_torchscript_archive_is_refused_unread(tmp_path, monkeypatch):
    """OpenAI's CLIP .pt files are TorchScript: refused before torch (or TorchScript)
    reads them, with the way to the open_clip file."""
    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.proj(x)
    path = str(tmp_path / 'ViT-B-16.pt')
    torch.jit.trace(Tower(), torch.randn(1, 2)).save(path)

    def never(*args, **kwargs):
        raise AssertionError('the archive was read')
    monkeypatch.setattr(torch.jit, 'load', never)
    monkeypatch.setattr(torch, 'load', never)
    model = MODELS.build(dict(type='PromptedTimmViT', model_name=CLIP_NAME, checkpoint=path,
                              model_kwargs=dict(embed_dim=64, depth=1, num_heads=1),
                              img_size=32))
    with pytest.raises(UnreadableCheckpointError,
                       match=r"ViT-B-16\.pt' is a TorchScript archive.*refused unread.*"
                             r'open_clip_model\.safetensors'):
        model.init_weights()


def test_openai_weights_with_a_gelu_name_are_refused(clip):
    folder, _ = clip  # its open_clip_config.json says quick_gelu: true
    with pytest.raises(ValueError, match=r'quick_gelu=True.*vit_base_patch16_clip_224 uses '
                                         r'GELU.*_clip_quickgelu_'):
        backbone(folder, name='vit_base_patch16_clip_224')


def test_gelu_clip_with_a_quickgelu_name_is_refused(clip, tmp_path):
    folder, _ = clip
    other = tmp_path / 'laion'
    shutil.copytree(folder, other)
    config = json.loads((other / 'open_clip_config.json').read_text())
    config['model_cfg']['quick_gelu'] = False
    (other / 'open_clip_config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r'quick_gelu=False.*uses QuickGELU.*without _quickgelu'):
        backbone(str(other))


def test_an_open_clip_config_without_quick_gelu_says_nothing(clip, tmp_path):
    """open_clip keeps quick_gelu of OpenAI's weights in its registry, not in the hub's
    open_clip_config.json (model_cfg of 'ViT-B-16'): such a folder loads with either name."""
    folder, ref = clip
    other = tmp_path / 'openai'
    shutil.copytree(folder, other)
    config = json.loads((other / 'open_clip_config.json').read_text())
    del config['model_cfg']['quick_gelu']
    (other / 'open_clip_config.json').write_text(json.dumps(config))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model = backbone(str(other))
        torch.testing.assert_close(model.visual_projection(model(x)[-1][1]),
                                   ref.encode_image(x), rtol=0, atol=1e-5)
        assert backbone(str(other), name='vit_base_patch16_clip_224') is not None


def test_timm_hub_config_of_the_plain_name_serves_the_quickgelu_name(clip, tmp_path):
    """timm publishes OpenAI's weights under vit_base_patch16_clip_224.openai (its
    config.json names that architecture); the QuickGELU name loads them."""
    folder, ref = clip
    hub = tmp_path / 'vit_base_patch16_clip_224.openai'
    hub.mkdir()
    shutil.copy(osp.join(folder, 'open_clip_model.safetensors'), hub)
    (hub / 'config.json').write_text(json.dumps(dict(architecture='vit_base_patch16_clip_224')))
    model = backbone(str(hub))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.visual_projection(model(x)[-1][1]),
                                   ref.encode_image(x), rtol=0, atol=1e-5)
    (hub / 'config.json').write_text(json.dumps(dict(architecture='vit_base_patch16_224')))
    with pytest.raises(ValueError, match="config.json says architecture 'vit_base_patch16_224'"):
        backbone(str(hub))


def test_a_file_without_the_projection_says_what_to_do(tmp_path):
    import timm
    from safetensors.torch import save_file
    vit = timm.create_model(CLIP_NAME, num_classes=0, embed_dim=64, depth=1, num_heads=1,
                            img_size=32)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()},
              str(tmp_path / 'model.safetensors'))
    with pytest.raises(ValueError, match=r'missing from the file: head\.weight.*'
                                         r'visual projection \(head, 32 wide.*'
                                         r'open_clip_model\.safetensors'):
        backbone(str(tmp_path / 'model.safetensors'))
    assert backbone(str(tmp_path / 'model.safetensors'), keep_projection=False,
                    model_kwargs=dict(embed_dim=64, depth=1, num_heads=1)
                    ).visual_projection is None


def test_projection_width_from_timm_and_refusals():
    """The width of a kept projection comes from timm's pretrained_cfg of a CLIP tag
    (untagged names: the first CLIP tag, timm's default tag may be fine-tuned)."""
    from vpt_seg.models.timm_vit import clip_projection_dims
    assert clip_projection_dims('vit_base_patch16_clip_quickgelu_224') == 512
    assert clip_projection_dims('vit_base_patch16_clip_224') == 512      # default tag is ft
    assert clip_projection_dims('vit_large_patch14_clip_224.openai') == 768
    assert clip_projection_dims('vit_base_patch16_clip_224.laion2b_ft_in1k') == 0
    assert clip_projection_dims('vit_base_patch16_224.augreg_in21k') == 0
    tiny = dict(embed_dim=32, depth=1, num_heads=2)
    kept = MODELS.build(dict(type='PromptedTimmViT', model_name='vit_base_patch16_clip_224',
                             model_kwargs=tiny, img_size=32, keep_projection=True))
    assert kept.visual_projection.out_features == 512
    plain = MODELS.build(dict(type='PromptedTimmViT', model_name=CLIP_NAME,
                              model_kwargs=tiny, img_size=32))
    assert plain.visual_projection is None
    with pytest.raises(ValueError, match=r'laion2b_ft_in1k.*fine-tuned into a classifier'):
        MODELS.build(dict(type='PromptedTimmViT', keep_projection=True, model_kwargs=tiny,
                          model_name='vit_base_patch16_clip_224.laion2b_ft_in1k', img_size=32))
    with pytest.raises(ValueError, match=r"num_classes'\]=-1: with keep_projection"):
        MODELS.build(dict(type='PromptedTimmViT', model_name=CLIP_NAME, img_size=32,
                          model_kwargs=dict(tiny, num_classes=-1), keep_projection=True))


def test_clip_classifier_normalises_as_clip_by_default():
    """timm's pretrained_cfg, in MMSeg's 0-255 convention; other backbones keep ImageNet's."""
    pre = default_data_preprocessor(dict(type='PromptedTimmViT', model_name=CLIP_NAME))
    assert pre['mean'] == pytest.approx([m * 255 for m in OPENAI_MEAN])
    assert pre['std'] == pytest.approx([s * 255 for s in OPENAI_STD])
    assert pre['bgr_to_rgb'] is True
    for other in (dict(type='PromptedTimmViT', model_name='vit_base_patch14_dinov2'),
                  dict(type='PromptedVisionTransformer')):
        assert default_data_preprocessor(other)['mean'] == [123.675, 116.28, 103.53]
    model = MODELS.build(dict(
        type='VPTClassifier',
        backbone=dict(type='PromptedTimmViT', model_name=CLIP_NAME, img_size=32,
                      model_kwargs=dict(embed_dim=32, depth=1, num_heads=2)),
        head=dict(type='LinearClsHead', in_channels=32, num_classes=3)))
    img = torch.full((1, 3, 32, 32), 255.)
    out = model.data_preprocessor(dict(inputs=[img[0]]), False)['inputs']
    expected = [(1 - m) / s for m, s in zip(OPENAI_MEAN, OPENAI_STD)]
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor(expected))
