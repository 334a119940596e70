"""A tiny, randomly initialised CLIP in open_clip's file layout, for demos and tests.

open_clip builds it (``open_clip.create_model('ViT-B-16', quick_gelu=True, ...)`` with
small overrides), so the keys are OpenAI's (``visual.*``, ``token_embedding``,
``transformer.resblocks.*``, ``ln_final``, ``text_projection``, ``logit_scale``) and the
text tower keeps the real tokenizer's vocabulary (49408) and context length (77). It is
saved as open_clip publishes CLIPs on the hub (:func:`write_open_clip_folder`). Its
weights are random: a stand-in for ``timm/vit_base_patch16_clip_224.openai`` that runs
the whole pipeline offline, not a model that knows anything.
"""
import logging
from typing import Optional

import torch

from .timm_vit import write_open_clip_folder

__all__ = ['TINY_CLIP', 'tiny_clip_model_cfg', 'build_tiny_clip', 'write_tiny_clip']

#: The demo CLIP's shape: image tower (timm: ``embed_dim``, ``depth``, ``num_heads``,
#: ``patch_size``, ``img_size``) and text tower (MMSeg's ``CLIPTextEncoder`` names).
TINY_CLIP = dict(
    embed_dim=32,            # the joint embedding (visual and text projections)
    image_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=2,
    context_length=77, vocab_size=49408, text_width=64, text_layers=2, text_heads=2)


def tiny_clip_model_cfg(**overrides) -> dict:
    """open_clip's ``model_cfg`` of the tiny CLIP (what ``open_clip_config.json``
    records), from :data:`TINY_CLIP` with ``overrides``."""
    c = dict(TINY_CLIP, **overrides)
    return dict(
        embed_dim=c['embed_dim'], quick_gelu=True,
        vision_cfg=dict(image_size=c['image_size'], layers=c['vision_layers'],
                        width=c['vision_width'], patch_size=c['patch_size'],
                        head_width=c['vision_width'] // c['vision_heads']),
        text_cfg=dict(context_length=c['context_length'], vocab_size=c['vocab_size'],
                      width=c['text_width'], heads=c['text_heads'], layers=c['text_layers']))


def build_tiny_clip(model_cfg: Optional[dict] = None, seed: int = 0) -> torch.nn.Module:
    """open_clip's ``CLIP`` of ``model_cfg`` (default :func:`tiny_clip_model_cfg`), random
    weights drawn from ``seed`` (LayerNorms perturbed too, so no weight is trivially 1 or
    0), in eval mode."""
    import open_clip
    cfg = dict(model_cfg or tiny_clip_model_cfg())
    torch.manual_seed(seed)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns that a random model is random: it is meant
    try:
        model = open_clip.create_model('ViT-B-16', pretrained=None, **cfg)
    finally:
        root.setLevel(level)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and 'ln' in name:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def write_tiny_clip(folder: str, seed: int = 0, torch_file: bool = False,
                    **overrides) -> torch.nn.Module:
    """Build the tiny CLIP and save it in ``folder`` as open_clip publishes CLIPs
    (``open_clip_model.safetensors``, ``open_clip_config.json`` with OpenAI's
    normalisation; ``open_clip_pytorch_model.bin`` with ``torch_file``). Returns the
    open_clip model (the reference its features are checked against)."""
    model_cfg = tiny_clip_model_cfg(**overrides)
    model = build_tiny_clip(model_cfg, seed)
    visual = model.visual
    preprocess = dict(mean=list(visual.image_mean), std=list(visual.image_std),
                      interpolation='bicubic', resize_mode='shortest')
    write_open_clip_folder(model.state_dict(), folder, model_cfg, preprocess, torch_file)
    return model
