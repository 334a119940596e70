"""What ``tools/demo.py`` writes besides the data: a stand-in for a config's pretrained
backbone file (no weights can be downloaded in the demo; ``tools/study.py`` pretrains one)."""
import os

import torch
from mmseg.registry import MODELS

from ..formats.pretrained_key import pretrained_in, set_pretrained
from ..models.timm_vit import is_clip_model
from ..models.tiny_clip import write_tiny_clip

__all__ = ['write_backbone']


def write_backbone(cfg) -> str:
    """A randomly initialised stand-in for the config's pretrained backbone file.

    An MMSeg-layout ViT goes to ``pretrain/tiny_vit.pth`` (in the current folder); a
    ``PromptedTimmViT`` is timm's own model saved as the hub does, in the folder its
    ``checkpoint`` names. Returns the path written.
    """
    backbone = cfg.model.backbone
    torch.manual_seed(0)
    if backbone.type == 'PromptedTimmViT' and is_clip_model(backbone.model_name):
        # both towers in one file, as open_clip publishes CLIPs (the config's shapes are
        # the tiny CLIP's)
        folder = os.path.dirname(pretrained_in(backbone))
        write_tiny_clip(folder)
        return folder
    if backbone.type == 'PromptedTimmViT':  # timm's own model, saved as the hub does
        import timm

        from ..models.timm_vit import write_hub_folder
        vit = timm.create_model(backbone.model_name, pretrained=False, num_classes=0,
                                **backbone.model_kwargs)
        return write_hub_folder(vit, pretrained_in(backbone), backbone.model_name)
    stand_in = dict(backbone, num_prompts=0, save_frozen=True)
    set_pretrained(stand_in, None)
    vit = MODELS.build(stand_in)
    vit.init_weights()
    os.makedirs('pretrain', exist_ok=True)
    torch.save(vit.state_dict(), 'pretrain/tiny_vit.pth')
    return 'pretrain/tiny_vit.pth'
