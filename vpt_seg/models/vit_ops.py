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
* every bias is read through a :class:`Biases` lookup, so one batch may carry a bias per
  sample (serving bias-tuned tasks side by side) and an optional key mask (prompts of
  different lengths); with the default lookup the computation is MMSeg's;
* LoRA updates and adapter branches come from a
  :class:`~vpt_seg.tuners.terms.BlockTerms` (per task, or per sample when serving), added
  to the frozen layers' outputs; without them the computation is MMSeg's.

Dropout, attention dropout and drop-path are the modules' own (``proj_drop``,
``dropout_layer``, the FFN's ``nn.Dropout``), so they follow ``train()``/``eval()`` exactly as
in MMSeg's layers. ``tests/test_vit_ops.py`` pins outputs and gradients to MMSeg's layers.
"""
import contextlib
import os
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..tuners.terms import NO_TERMS, BlockTerms

__all__ = ['fast_path_default', 'Biases', 'SHARED_BIASES', 'linear', 'layer_norm', 'patch_embed', 'attention',
           'mlp', 'block', 'check_supported']


def fast_path_default() -> bool:
    """The default of every ``fast_path`` switch (backbone and heads), as timm's
    ``TIMM_FUSED_ATTN``: on, unless the environment sets ``VPT_SEG_FAST_PATH=0``, which
    puts a whole run back on MMSeg's own computation for checking."""
    return os.environ.get('VPT_SEG_FAST_PATH', '1').lower() not in ('0', 'false', 'no', 'off')


class Biases:
    """Where a layer's bias comes from.

    The default lookup returns the module's own bias. With ``task_vits`` and
    ``task_index`` it returns, per sample, the bias of the sample's task: ``(B, ...)``
    gathered from a ``(T, ...)`` bank, for batches that mix tasks which tuned biases.

    Args:
        shared: The module tree the layers belong to (names are resolved against it).
        task_vits: One module per task with the same parameter names as ``shared``;
            a task that lacks a bias (e.g. it has no final norm) uses the shared one.
        task_index: ``(B,)`` task of each sample (an index into ``task_vits``).
    """

    def __init__(self, shared: Optional[nn.Module] = None,
                 task_vits: Optional[List[nn.Module]] = None,
                 task_index: Optional[torch.Tensor] = None):
        self.per_sample = bool(task_vits) and any(getattr(v, 'tune_bias', False)
                                                  for v in task_vits)
        if self.per_sample:
            self.names = {id(m): n for n, m in shared.named_modules()}
            self.params = [{n: p for n, p in v.named_parameters() if p.requires_grad}
                           for v in task_vits]  # tuned only: the frozen ones are shared
            self.task_index = task_index

    def __call__(self, module: nn.Module, attr: str = 'bias') -> Optional[torch.Tensor]:
        shared = getattr(module, attr, None)
        if shared is None or not self.per_sample:
            return shared
        name = f'{self.names[id(module)]}.{attr}'.lstrip('.')
        bank = torch.stack([p.get(name, shared) for p in self.params])     # (T, ...)
        return bank[self.task_index]                                       # (B, ...)

    @contextlib.contextmanager
    def hooked(self, module: nn.Module):
        """For ViTs that run as modules (timm's blocks): while the context is open, every
        linear, LayerNorm and convolution under ``module`` whose bias some task tunes adds
        ``bias_t - bias_shared`` of each sample's task to its output (the same function
        as running it with the sample's own bias). A no-op for the single-model lookup.

        Raises:
            ValueError: a task tunes a bias that is not an output bias of such a layer
                (EVA's ``q_bias``/``v_bias``, applied inside the attention), which a
                hook cannot reach.
        """
        if not self.per_sample:
            yield
            return
        handles = []
        try:
            for sub in module.modules():
                prefix = self.names.get(id(sub))
                for attr, param in sub.named_parameters(recurse=False):
                    name = f'{prefix}.{attr}'.lstrip('.')
                    if prefix is None or all(name not in p for p in self.params):
                        continue  # frozen in every task: the shared tensor
                    if attr != 'bias' or not isinstance(sub, (nn.Linear, nn.LayerNorm,
                                                              nn.Conv2d)):
                        raise ValueError(
                            f'{name}: a tuned parameter inside {type(sub).__name__} cannot '
                            'be given per sample; serve such bias-tuned tasks one task per '
                            'batch')
                    handles.append(sub.register_forward_hook(self._add_delta(sub)))
            yield
        finally:
            for h in handles:
                h.remove()

    def _add_delta(self, module: nn.Module):
        delta = self(module) - module.bias                                 # (B, C)

        def hook(mod, args, out):
            if isinstance(mod, nn.Conv2d):
                return out + delta[:, :, None, None]                       # (B, C, H, W)
            return out + delta.view(delta.shape[0], *([1] * (out.dim() - 2)), -1)
        return hook


#: The lookup of a single model: every module's own bias.
SHARED_BIASES = Biases()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """``x @ W^T + b``; ``b`` is ``(out,)`` (shared) or ``(B, out)`` (per sample)."""
    if bias is None or bias.dim() == 1:
        return F.linear(x, weight, bias)
    return F.linear(x, weight) + bias.unsqueeze(1)


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm, biases: Biases = SHARED_BIASES):
    """``norm(x)`` with the bias from ``biases``."""
    b = biases(norm)
    if b is None or b.dim() == 1:
        return F.layer_norm(x, norm.normalized_shape, norm.weight, b, norm.eps)
    return F.layer_norm(x, norm.normalized_shape, norm.weight, None, norm.eps) + b.unsqueeze(1)


def patch_embed(pe: nn.Module, images: torch.Tensor, biases: Biases = SHARED_BIASES
                ) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """MMCV's ``PatchEmbed``: ``(B, C_in, H, W) -> (B, HW, C)`` and the grid ``(H/p, W/p)``."""
    x = pe.adap_padding(images) if pe.adap_padding is not None else images
    conv = pe.projection
    b = biases(conv)
    if b is None or b.dim() == 1:
        x = F.conv2d(x, conv.weight, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    else:
        x = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation,
                     conv.groups) + b[:, :, None, None]
    hw_shape = (x.shape[2], x.shape[3])
    x = x.flatten(2).transpose(1, 2)                                       # (B, HW, C)
    if pe.norm is not None:
        x = layer_norm(x, pe.norm, biases)
    return x, hw_shape


def qkv_sites(embed_dims: int):
    """LoRA sites of the packed q/k/v projection: ``(site, output slice)``."""
    C = embed_dims
    return (('q', slice(0, C)), ('k', slice(C, 2 * C)), ('v', slice(2 * C, 3 * C)))


def attention(attn: nn.Module, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
              biases: Biases = SHARED_BIASES, terms: BlockTerms = NO_TERMS,
              index: int = 0) -> torch.Tensor:
    """Self-attention of MMCV's ``MultiheadAttention`` (without its residual).

    Args:
        attn: MMCV ``MultiheadAttention`` (wrapping ``nn.MultiheadAttention``).
        x: ``(B, N, C)`` normed tokens.
        mask: Boolean ``(B, 1, 1, N)`` key mask (True = attend) or None.
        terms: LoRA updates (sites ``q``, ``k``, ``v``, ``proj``) of block ``index``.
    """
    mha = attn.attn
    B, N, C = x.shape
    heads = mha.num_heads
    qkv = linear(x, mha.in_proj_weight, biases(mha, 'in_proj_bias'))      # (B, N, 3C)
    qkv = terms.linear(index, qkv_sites(C), x, qkv)
    q, k, v = qkv.view(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(                                 # (B, h, N, d)
        q, k, v, attn_mask=mask, dropout_p=mha.dropout if mha.training else 0.0)
    out = out.transpose(1, 2).reshape(B, N, C)                             # (B, N, C)
    out = terms.linear(index, (('proj', None),), out,
                       linear(out, mha.out_proj.weight, biases(mha.out_proj)))
    return attn.dropout_layer(attn.proj_drop(out))


def mlp(ffn: nn.Module, x: torch.Tensor, biases: Biases = SHARED_BIASES,
        terms: BlockTerms = NO_TERMS, index: int = 0) -> torch.Tensor:
    """MMCV's ``FFN`` (without its residual): linear, activation, dropout, ..., linear;
    ``terms``: LoRA updates of block ``index``'s first (``fc1``) and last (``fc2``) linear."""
    linears = [m for m in ffn.layers.modules() if isinstance(m, nn.Linear)]
    site = {id(linears[0]): 'fc1', id(linears[-1]): 'fc2'} if terms.has_lora else {}

    def run(module, x):
        for child in module.children():
            if isinstance(child, nn.Sequential):
                x = run(child, x)
            elif isinstance(child, nn.Linear):
                out = linear(x, child.weight, biases(child))
                x = terms.linear(index, ((site[id(child)], None),), x, out) \
                    if id(child) in site else out
            else:  # activation, dropout
                x = child(x)
        return x
    return ffn.dropout_layer(ffn.gamma2(run(ffn.layers, x)))


def block(layer: nn.Module, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
          biases: Biases = SHARED_BIASES, terms: BlockTerms = NO_TERMS,
          index: int = 0) -> torch.Tensor:
    """MMSeg's ``TransformerEncoderLayer``: ``(B, N, C) -> (B, N, C)``, pre-norm residual
    attention then MLP; ``terms``: block ``index``'s LoRA updates and the adapter branch
    beside the MLP (AdaptFormer: ``x + MLP(LN(x)) + s * adapter(LN(x))``)."""
    x = x + attention(layer.attn, layer_norm(x, layer.norm1, biases), mask, biases,
                      terms, index)
    h = layer_norm(x, layer.norm2, biases)
    x = x + mlp(layer.ffn, h, biases, terms, index)
    branch = terms.adapter(index, h)
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
