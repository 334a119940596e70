"""What many test modules share: the repository root, a tiny MMSeg-layout ViT, tiny
pretrained files (a ViT's, a CLIP's), trained-like tasks (built, initialised, then moved
as training would move them, without training) and tools run as commands without the
start-up cost (:func:`run_tool`)."""
import os.path as osp

import torch
from mmseg.registry import MODELS

from vpt_seg.engine.forked import ForkedPopen

#: The repository root (configs/, tools/, docs/).
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: A tiny MMSeg ``VisionTransformer`` / ``PromptedVisionTransformer``: 32x32 images,
#: 4x4 patches of width 32, 4 layers, LayerNorm eps as timm's ViTs.
ARCH = dict(img_size=(32, 32), patch_size=8, embed_dims=32, num_layers=4, num_heads=4,
            patch_bias=True, norm_cfg=dict(type='LN', eps=1e-6))


def tiny_pretrained(path: str, arch: dict = ARCH, seed: int = 0, **kwargs) -> str:
    """A random MMSeg ViT of ``arch`` saved as a pretrained file at ``path``; returns it."""
    from mmseg.models.backbones import VisionTransformer
    torch.manual_seed(seed)
    vit = VisionTransformer(**arch, **kwargs)
    vit.init_weights()
    torch.save(vit.state_dict(), path)
    return path


def perturb_tuned(model: torch.nn.Module, scale: float = 0.1, batchnorm: bool = False):
    """Move every tuned weight by ``scale * randn`` (and with ``batchnorm`` every BN
    layer's running statistics), in module order: a task as training leaves it."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))
        if batchnorm:
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.running_mean.normal_()
                    m.running_var.uniform_(0.5, 2)


def trained_like(model_cfg, seed=None, scale: float = 0.1, batchnorm: bool = False):
    """Build ``model_cfg`` (after ``torch.manual_seed(seed)`` unless None), initialise it
    (its pretrained file included) and :func:`perturb_tuned` it."""
    if seed is not None:
        torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    model.init_weights()
    perturb_tuned(model, scale, batchnorm)
    return model


def tiny_clip():
    """A tiny CLIP as open_clip builds it (real tokenizer vocabulary, OpenAI's keys)."""
    import open_clip
    torch.manual_seed(7)
    model = open_clip.create_model(
        'ViT-B-16', pretrained=None, quick_gelu=True, embed_dim=32,
        vision_cfg=dict(image_size=32, layers=1, width=64, patch_size=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1))
    with torch.no_grad():  # non-trivial norms, biases and temperature
        for name, p in model.named_parameters():
            if name.endswith('bias') or 'ln' in name:
                p.add_(0.1 * torch.randn_like(p))
        model.logit_scale.fill_(2.5)
    return model.eval()


def tiny_clip_file(folder: str):
    """:func:`tiny_clip` saved as ``folder/open_clip_model.safetensors`` (open_clip's
    keys, as a published CLIP file); returns ``(path, model)``."""
    from safetensors.torch import save_file
    model = tiny_clip()
    path = osp.join(str(folder), 'open_clip_model.safetensors')
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path, model


def tool(name: str):
    """``tools/NAME.py`` as a module, to call its ``main()`` in this process."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(tool: str, *args, cwd: str = ROOT, timeout: float = 900):
    """``python tools/TOOL ARGS`` (run from ``cwd``) in a forked child of this process
    (:class:`vpt_seg.engine.forked.ForkedPopen`): the same exit code, stdout and stderr as
    that command, without paying the interpreter's and the libraries' start-up again
    (seconds a call on 2 cores).

    Returns:
        subprocess.CompletedProcess: ``returncode`` (negative: the signal that ended it),
        ``stdout`` and ``stderr`` as text.
    """
    import subprocess
    import sys
    import tempfile
    cmd = [sys.executable, osp.join(ROOT, 'tools', tool), *map(str, args)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = ForkedPopen(cmd, stdout=out, stderr=err, cwd=cwd)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode('utf-8', errors='replace'))
    return subprocess.CompletedProcess(cmd, proc.returncode, *texts)
