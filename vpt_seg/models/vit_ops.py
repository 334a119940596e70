"""The ViT forward, written once: functional over MMSeg's ``VisionTransformer`` modules.

Training (:class:`~vpt_seg.models.PromptedVisionTransformer`), testing and multi-task
serving (:class:`~vpt_seg.serving.multitask.MultiTaskViT`) all run their transformer blocks
through :func:`block` and their patch embedding through :func:`patch_embed`. Both read
MMSeg's parameters where MMSeg keeps them (``layers.i.attn.attn.in_proj_weight``, ...),
so every MMSeg, timm or JAX checkpoint loads as before; they only compute differently:

* batch-first throughout: MMCV's ``MultiheadAttention`` transposes ``(B, N, C)`` to
  ``(N, B, C)`` and back around ``nn.MultiheadAttention`` and asks it for the attention
  weights, which rules out torch's fused kernels. :func:`attention` calls
  :func:`torch.nn.functional.scaled_dot_product_attention` on ``(B, h, N, d)`` views of
  one packed q/k/v projection (flash / memory-efficient attention on a GPU);
* what the tasks add comes from a :class:`~vpt_seg.tuners.terms.TaskBatch` (one task,
  or one per group of samples when serving): every bias is read through it, so one batch
  may carry a bias per sample (bias-tuned tasks side by side), and LoRA updates and
  adapter branches are added to the frozen layers' outputs; an optional key mask hides
  prompt slots (prompts of different lengths). With the default (:data:`ONE_TASK`) the
  computation is MMSeg's.

Dropout, attention dropout and drop-path are the modules' own (``proj_drop``,
``dropout_layer``, the FFN's ``nn.Dropout``), so they follow ``train()``/``eval()`` exactly as
in MMSeg's layers. ``tests/test_vit_ops.py`` pins outputs and gradients to MMSeg's layers.
"""
import os
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..tuners.terms import ONE_TASK, TaskBatch

__all__ = ['fast_path_default', 'TaskBatch', 'ONE_TASK', 'FFNParts', 'ffn_parts',
           'linear', 'layer_norm', 'patch_embed', 'attention',
           'mlp', 'block', 'check_supported']


def fast_path_default() -> bool:
    """The default of every ``fast_path`` switch (backbone and heads), as timm's
    ``TIMM_FUSED_ATTN``: on, unless the environment sets ``VPT_SEG_FAST_PATH=0``, which
    puts a whole run back on MMSeg's own computation for checking."""
    return os.environ.get('VPT_SEG_FAST_PATH', '1').lower() not in ('0', 'false', 'no', 'off')


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """``x @ W^T + b``; ``b`` is ``(out,)`` (shared) or ``(B, out)`` (per sample)."""
    if bias is None or bias.dim() == 1:
        return F.linear(x, weight, bias)
    return F.linear(x, weight) + bias.unsqueeze(1)


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm, batch: TaskBatch = ONE_TASK):
    """``norm(x)`` with the bias from ``batch``."""
    b = batch(norm)
    if b is None or b.dim() == 1:
        return F.layer_norm(x, norm.normalized_shape, norm.weight, b, norm.eps)
    return F.layer_norm(x, norm.normalized_shape, norm.weight, None, norm.eps) + b.unsqueeze(1)


def patch_embed(pe: nn.Module, images: torch.Tensor, batch: TaskBatch = ONE_TASK
                ) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """MMCV's ``PatchEmbed``: ``(B, C_in, H, W) -> (B, HW, C)`` and the grid ``(H/p, W/p)``."""
    x = pe.adap_padding(images) if pe.adap_padding is not None else images
    conv = pe.projection
    b = batch(conv)
    if b is None or b.dim() == 1:
        x = F.conv2d(x, conv.weight, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    else:
        x = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation,
                     conv.groups) + b[:, :, None, None]
    hw_shape = (x.shape[2], x.shape[3])
    x = x.flatten(2).transpose(1, 2)                                       # (B, HW, C)
    if pe.norm is not None:
        x = layer_norm(x, pe.norm, batch)
    return x, hw_shape


def qkv_sites(embed_dims: int):
    """LoRA sites of the packed q/k/v projection: ``(site, output slice)``."""
    C = embed_dims
    return (('q', slice(0, C)), ('k', slice(C, 2 * C)), ('v', slice(2 * C, 3 * C)))


def attention(attn: nn.Module, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
              batch: TaskBatch = ONE_TASK, index: int = 0) -> torch.Tensor:
    """Self-attention of MMCV's ``MultiheadAttention`` (without its residual).

    Args:
        attn: MMCV ``MultiheadAttention`` (wrapping ``nn.MultiheadAttention``).
        x: ``(B, N, C)`` normed tokens.
        mask: Boolean ``(B, 1, 1, N)`` key mask (True = attend) or None.
        batch: The biases and the LoRA updates (sites ``q``, ``k``, ``v``, ``proj``) of
            block ``index``.
    """
    mha = attn.attn
    B, N, C = x.shape
    heads = mha.num_heads
    qkv = linear(x, mha.in_proj_weight, batch(mha, 'in_proj_bias'))      # (B, N, 3C)
    qkv = batch.linear(index, qkv_sites(C), x, qkv)
    q, k, v = qkv.view(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(                                 # (B, h, N, d)
        q, k, v, attn_mask=mask, dropout_p=mha.dropout if mha.training else 0.0)
    out = out.transpose(1, 2).reshape(B, N, C)                             # (B, N, C)
    out = batch.linear(index, (('proj', None),), out,
                       linear(out, mha.out_proj.weight, batch(mha.out_proj)))
    return attn.dropout_layer(attn.proj_drop(out))


class FFNParts(NamedTuple):
    """The parts of MMCV's ``FFN`` that LoRA, the signature and serving name."""
    first: nn.Linear
    activation: nn.Module
    last: nn.Linear

    @property
    def sites(self):
        """``{id(linear): LoRA site}`` of the first (``fc1``) and last (``fc2``) linear."""
        return {id(self.first): 'fc1', id(self.last): 'fc2'}


def ffn_parts(ffn: nn.Module) -> FFNParts:
    """The first and last linear and the activation of MMCV's ``FFN`` (``layers`` is
    ``[Sequential(Linear, act, Dropout), ..., Linear, Dropout]``); the backbone works
    them out once, at build, not per call."""
    linears = [m for m in ffn.layers.modules() if isinstance(m, nn.Linear)]
    return FFNParts(linears[0], ffn.layers[0][1], linears[-1])


def mlp(ffn: nn.Module, x: torch.Tensor, batch: TaskBatch = ONE_TASK, index: int = 0,
        parts: Optional[FFNParts] = None) -> torch.Tensor:
    """MMCV's ``FFN`` (without its residual): linear, activation, dropout, ..., linear;
    ``batch``: the biases, and the LoRA updates of block ``index``'s first (``fc1``) and
    last (``fc2``) linear, found in ``parts`` (:func:`ffn_parts`; worked out here when
    not given and the batch has LoRA)."""
    site = {}
    if batch.has_lora:
        site = (parts or ffn_parts(ffn)).sites

    def run(module, x):
        for child in module.children():
            if isinstance(child, nn.Sequential):
                x = run(child, x)
            elif isinstance(child, nn.Linear):
                out = linear(x, child.weight, batch(child))
                x = batch.linear(index, ((site[id(child)], None),), x, out) \
                    if id(child) in site else out
            else:  # activation, dropout
                x = child(x)
        return x
    return ffn.dropout_layer(ffn.gamma2(run(ffn.layers, x)))


def block(layer: nn.Module, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
          batch: TaskBatch = ONE_TASK, index: int = 0,
          parts: Optional[FFNParts] = None) -> torch.Tensor:
    """MMSeg's ``TransformerEncoderLayer``: ``(B, N, C) -> (B, N, C)``, pre-norm residual
    attention then MLP; ``batch``: the biases, block ``index``'s LoRA updates and the
    adapter branch beside the MLP (AdaptFormer: ``x + MLP(LN(x)) + s * adapter(LN(x))``);
    ``parts``: the FFN's (:func:`ffn_parts`)."""
    x = x + attention(layer.attn, layer_norm(x, layer.norm1, batch), mask, batch, index)
    h = layer_norm(x, layer.norm2, batch)
    x = x + mlp(layer.ffn, h, batch, index, parts)
    branch = batch.adapter(index, h)
    return x if branch is None else x + branch


def check_supported(vit: nn.Module, what: str = 'backbone',
                    remedy: str = 'set fast_path=False'):
    """Raise ``ValueError`` if ``vit`` has a part the functional pass does not compute
    (non-LayerNorm norms, separate q/k/v projections, ``bias_k``, ``add_zero_attn``);
    the message ends with ``remedy``."""
    norms = [m for m in vit.modules()
             if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm))]
    if norms:
        raise ValueError(f'{what}: only LayerNorm ViTs run on the fast path (found '
                         f'{norms[0]}); {remedy}')
    attn = vit.layers[0].attn.attn
    if attn.bias_k is not None or attn.add_zero_attn or not attn._qkv_same_embed_dim:
        raise ValueError(f'{what}: attention with bias_k/add_zero_attn or separate q/k/v '
                         f'projections is not supported by the fast path; {remedy}')
