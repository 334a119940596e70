"""MMSeg's ``VisionTransformer`` with a frozen body and visual prompts (VPT)."""
import logging
import os.path as osp
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import torch
from mmengine.logging import print_log
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..formats import frozen_weights
from ..formats.fitting import fit_state_dict
from ..formats.weights import load_vit_checkpoint, to_mmseg_state_dict
from ..tuners.prompt import VisualPrompt
from ..tuners.terms import ONE_TASK, TaskBatch
from ..tuners.tuning import freeze as freeze_module
from . import vit_ops
from .backbone import PromptedBackbone, check_freeze_options

#: What a backbone's ``signature`` buffer records, in order.
SIGNATURE_FIELDS = ('embed_dims', 'num_layers', 'num_heads', 'patch_size', 'in_channels',
                    'feedforward_channels')


def vit_signature(vit: VisionTransformer) -> torch.Tensor:
    """The architecture of an MMSeg ViT as integers (see :data:`SIGNATURE_FIELDS`)."""
    layer = vit.layers[0]
    return torch.tensor([vit.cls_token.shape[-1], len(vit.layers), layer.attn.attn.num_heads,
                         vit.patch_size, vit.patch_embed.projection.in_channels,
                         vit_ops.ffn_parts(layer.ffn).first.out_features])


def _no_attention_weights(module, args, kwargs):
    """Forward pre-hook for ``nn.MultiheadAttention``: MMCV asks for the attention
    weights it then throws away, which rules out torch's fused SDPA kernels."""
    kwargs['need_weights'] = False
    return args, kwargs


@MODELS.register_module()
class PromptedVisionTransformer(PromptedBackbone, VisionTransformer):
    """A frozen ViT with deep or shallow visual prompts and optional bias tuning.

    Accepts every argument of MMSeg's :class:`~mmseg.models.backbones.VisionTransformer`
    with the same meaning and parameter names (MMSeg ViT checkpoints load unchanged), and:

    Args:
        num_prompts: Prompt tokens per prompted layer; 0 = no prompts.
        deep: VPT-deep (fresh prompts at every layer) if True, VPT-shallow if False.
        prompt_layers: Indices of the layers that receive prompts (overrides ``deep``).
        prompt_dropout: Dropout on prompt tokens.
        prompt_init: ``'xavier_uniform'`` (the paper), ``'normal'`` or ``'zeros'``.
        freeze: Freeze every pretrained weight (True for all VPT rows; False = full
            fine-tuning, where the backbone is a plain ``VisionTransformer``).
        tune_bias: With ``freeze``, keep the backbone's bias terms tuned (VPT+Bias,
            or "Bias" alone with ``num_prompts=0``).
        lora: LoRA on the blocks' linear layers, ``dict(rank=8, alpha=8,
            targets=('q', 'v'), dropout=0.0)`` (:mod:`vpt_seg.tuners.lora`); None = off.
        adapter: AdaptFormer's adapter beside every MLP, ``dict(width=64, scale=0.1,
            dropout=0.0)`` (:mod:`vpt_seg.tuners.adapter`); None = off. Both combine
            with prompts and bias tuning, and run on the fast path's functional blocks.
        save_frozen: Put frozen weights into ``state_dict()`` too. Off by default: a task
            checkpoint holds only what was tuned, and the frozen weights are reloaded
            from ``init_cfg``'s pretrained file when such a checkpoint is loaded.
        fast_path: Run the patch embedding and the blocks through :mod:`.vit_ops`
            (batch-first, fused scaled-dot-product attention; the same function as MMSeg's
            layers and the same parameters). False = MMSeg's own layers, for checking;
            None (default) = on unless the environment sets ``VPT_SEG_FAST_PATH=0``.
        with_cp: MMSeg's switch, the memory switch here: recompute each block in the
            backward pass instead of keeping its activations (activation checkpointing).
            With a frozen body only the block inputs stay alive, so VPT-deep trains at
            batch 16 in a fraction of the memory, for one more forward pass.
        prefer_configured: When a task checkpoint is loaded, take its frozen weights from
            ``init_cfg``'s file only, not from the file the checkpoint records: the
            user named it (``tools/*.py`` set this when ``--cfg-options`` names
            ``model.backbone.init_cfg.checkpoint``; ``load_task_model(..., pretrained=)``
            and serving too). Its weights must still match the sha256 the checkpoint
            records. Default: the recorded file first, then ``init_cfg``'s.
        prefer_init_cfg: The earlier name of ``prefer_configured`` (configs that runs
            saved in their work dirs still carry it).

    Every ``state_dict()`` carries a small buffer ``signature`` (:func:`vit_signature`):
    a task checkpoint made for another ViT (width, depth, heads, patch size, MLP) is
    refused by name even when its tuned tensors happen to fit (shallow prompts, no
    biases). Checkpoints without it (pretrained files, MMSeg checkpoints) load as before.

    Shapes:
        ``(B, in_channels, H, W)`` in; a tuple of ``(B, C, H / p, W / p)`` maps, one per
        ``out_indices`` (with ``output_cls_token``, ``[map, (B, C)]`` pairs), exactly as
        ``VisionTransformer``; prompt tokens never reach the outputs.
    """

    signature_fields = SIGNATURE_FIELDS
    pretrained_option = 'model.backbone.init_cfg.checkpoint'
    pretrained_key = 'init_cfg.checkpoint'

    @classmethod
    def set_pretrained(cls, cfg, path: Optional[str]) -> None:
        """MMSeg's layout names its file in ``init_cfg=dict(type='Pretrained', ...)``;
        None: ``init_cfg=None``."""
        cfg['init_cfg'] = None if path is None else dict(type='Pretrained', checkpoint=path)

    def __init__(self,
                 num_prompts: int = 0,
                 deep: bool = True,
                 prompt_layers: Optional[Sequence[int]] = None,
                 prompt_dropout: float = 0.0,
                 prompt_init: str = 'xavier_uniform',
                 freeze: bool = True,
                 tune_bias: bool = False,
                 lora: Optional[dict] = None,
                 adapter: Optional[dict] = None,
                 save_frozen: bool = False,
                 fast_path: Optional[bool] = None,
                 prefer_configured: bool = False,
                 prefer_init_cfg: bool = False,
                 **kwargs):
        frozen_exclude = kwargs.get('frozen_exclude', ['all'])
        if freeze and list(frozen_exclude) != ['all']:
            raise ValueError(
                'frozen_exclude matches parameter names by substring and cannot be combined '
                'with freeze=True; use tune_bias=True to tune biases, or freeze=False to '
                f'use frozen_exclude as in VisionTransformer (got {frozen_exclude}).')
        check_freeze_options(freeze, tune_bias)
        super().__init__(**kwargs)
        if self.img_size[0] % self.patch_size or self.img_size[1] % self.patch_size:
            h, w = self.img_size
            fit = (max(self.patch_size, h // self.patch_size * self.patch_size),
                   max(self.patch_size, w // self.patch_size * self.patch_size))
            raise ValueError(
                f'img_size {h}x{w} is not a multiple of patch_size {self.patch_size}: the '
                'position embedding would be fitted to a grid the inputs never have and '
                f'resampled at every forward. Use img_size={fit} (or the next multiple up) '
                'and crop or resize the inputs to it.')
        embed_dims = self.cls_token.shape[-1]
        self.in_channels = self.patch_embed.projection.in_channels
        self.prompt = VisualPrompt(
            num_tokens=num_prompts,
            embed_dims=embed_dims,
            num_layers=len(self.layers),
            deep=deep,
            layers=prompt_layers,
            dropout=prompt_dropout,
            num_prefix=1 if self.with_cls_token else 0,
            init=prompt_init,
            patch_size=self.patch_size,
            in_channels=self.in_channels)
        self._ffn_parts = [vit_ops.ffn_parts(layer.ffn) for layer in self.layers]
        self.init_tuners(lora, adapter, len(self.layers), embed_dims)
        self.freeze = freeze
        self.tune_bias = tune_bias
        self.save_frozen = save_frozen
        self.prefer_configured = prefer_configured or prefer_init_cfg
        self.fast_path = vit_ops.fast_path_default() if fast_path is None else fast_path
        if self.fast_path:
            vit_ops.check_supported(self, type(self).__name__)
        # The pretrained file the frozen weights come from, recorded in every state dict's
        # metadata, so a task checkpoint can be loaded where init_cfg is dropped (MMSeg's
        # init_model) or unknown (a task file).
        init_cfg = kwargs.get('init_cfg')
        self.pretrained_file = init_cfg.get('checkpoint') if isinstance(init_cfg, dict) \
            and init_cfg.get('type') == 'Pretrained' else None
        if freeze:
            tuners = self.tuner_modules()
            for child in self.children():
                if all(child is not t for t in tuners):
                    freeze_module(child, tune_bias=tune_bias)
            for param in self._parameters.values():  # cls_token, pos_embed
                param.requires_grad_(False)
        self.register_buffer('signature', vit_signature(self))
        for layer in self.layers:
            layer.attn.attn.register_forward_pre_hook(_no_attention_weights, with_kwargs=True)
        self.init_frozen_hooks()

    # ------------------------------------------------------------ layout steps
    # PromptedBackbone's steps over MMSeg's modules (the forward is the base's).
    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches ([CLS] or none); prompts go right after them."""
        return 1 if self.with_cls_token else 0

    def check_input(self, inputs: torch.Tensor):
        """Raise ``ValueError`` for inputs this backbone cannot embed."""
        if inputs.dim() != 4 or inputs.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects (B, {self.in_channels}, H, W) '
                             f'images, got a tensor of shape {tuple(inputs.shape)}')
        h, w = inputs.shape[-2:]
        if self.patch_embed.adap_padding is None and (h % self.patch_size
                                                          or w % self.patch_size):
            raise ValueError(
                f'image size {h}x{w} is not a multiple of the patch size {self.patch_size} '
                "and patch_pad=None; resize or crop the input, or set patch_pad='corner' "
                'to pad it as MMSeg does.')

    def _functional(self, batch: TaskBatch) -> bool:
        """Whether to compute through :mod:`.vit_ops` (the fast path, or per-sample
        biases that MMSeg's modules cannot take)."""
        return self.fast_path or batch.per_sample

    def embed_patches(self, inputs: torch.Tensor, batch: TaskBatch = ONE_TASK):
        """``(B, 3, H, W) -> (B, HW, C)`` patch tokens and the grid ``(H / p, W / p)``."""
        if self._functional(batch):
            return vit_ops.patch_embed(self.patch_embed, inputs, batch)
        return self.patch_embed(inputs)

    def add_prefix(self, x: torch.Tensor, hw_shape) -> torch.Tensor:
        """``(B, HW, C) -> (B, K + HW, C)``: [CLS] and this backbone's position embedding
        (resampled to the grid when it differs from ``img_size``'s)."""
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self._pos_embeding(x, hw_shape, self.pos_embed)
        return x if self.with_cls_token else x[:, 1:]

    def norm_pre(self, x: torch.Tensor, batch: TaskBatch = ONE_TASK):
        """The pre-norm (CLIP-style ViTs), or ``x`` unchanged."""
        if not self.pre_norm:
            return x
        return vit_ops.layer_norm(x, self.pre_ln, batch) if self._functional(batch) \
            else self.pre_ln(x)

    def norm_out(self, x: torch.Tensor, batch: TaskBatch = ONE_TASK):
        """The final norm (``final_norm=True``)."""
        return vit_ops.layer_norm(x, self.norm1, batch) if self._functional(batch) \
            else self.norm1(x)

    def run_block(self, i: int, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                  batch: TaskBatch = ONE_TASK) -> torch.Tensor:
        """Transformer block ``i``, ``(B, N, C) -> (B, N, C)``; ``mask``: a boolean
        ``(B, 1, 1, N)`` key mask, ``batch``: biases (per sample when serving), LoRA
        updates and adapter branches."""
        layer = self.layers[i]
        if not (self._functional(batch) or batch.active) and mask is None:
            return layer(x)  # MMSeg's layer (it honours with_cp itself)
        parts = self._ffn_parts[i]
        if layer.with_cp and torch.is_grad_enabled() and (x.requires_grad or batch.active):
            return checkpoint(vit_ops.block, layer, x, mask, batch, i, parts,
                              use_reentrant=False)
        return vit_ops.block(layer, x, mask, batch, i, parts)

    def lora_weight(self, layer: int, site: str):
        """``q``/``k``/``v``: rows of ``in_proj_weight``; ``proj``, ``fc1``, ``fc2``: whole."""
        block = self.layers[layer]
        if site in ('q', 'k', 'v'):
            return block.attn.attn.in_proj_weight, dict(
                vit_ops.qkv_sites(self.cls_token.shape[-1]))[site]
        parts = self._ffn_parts[layer]
        return {'proj': block.attn.attn.out_proj, 'fc1': parts.first,
                'fc2': parts.last}[site].weight, None

    def lora_sites(self, target: str):
        """``q``/``k``/``v``: slices of the packed ``in_proj``, ``proj``: ``out_proj``,
        ``fc1``/``fc2``: the FFN's first and last linear; ``{site: (in, out)}``."""
        C = self.cls_token.shape[-1]
        hidden = self._ffn_parts[0].first.out_features
        return {'fc1': {'fc1': (C, hidden)}, 'fc2': {'fc2': (hidden, C)}}.get(
            target, {target: (C, C)} if target in ('q', 'k', 'v', 'proj') else {})

    def shared_structure(self) -> Dict[str, object]:
        """What the shared pass relies on, beyond parameter shapes."""
        layer = self.layers[0]
        pad = self.patch_embed.adap_padding
        return OrderedDict(
            with_cls_token=self.with_cls_token,
            pre_norm=self.pre_norm,
            patch_size=self.patch_size,
            patch_pad=None if pad is None else (pad.padding, pad.kernel_size, pad.stride,
                                                pad.dilation),
            num_layers=len(self.layers),
            num_heads=layer.attn.attn.num_heads,
            norm_eps=sorted({m.eps for m in self.modules() if isinstance(m, nn.LayerNorm)}),
            activation=repr(self._ffn_parts[0].activation),
            num_fcs=layer.ffn.num_fcs, backbone=type(self).__name__)

    def check_shareable(self, what: str) -> None:
        """The functional pass must compute it (:func:`vit_ops.check_supported`)."""
        vit_ops.check_supported(self, what, 'such a ViT cannot be served on a shared backbone')

    # ------------------------------------------------------- weights and saving
    def init_weights(self):
        """Load ``init_cfg``'s pretrained ViT (timm, JAX ``.npz`` or MMSeg format).

        The file is converted to MMSeg names (:mod:`vpt_seg.formats.weights`), its position
        embedding resampled once to this backbone's ``img_size`` grid, and loaded
        strictly: another patch size, width or depth, unknown keys or missing backbone
        weights raise. Only the classifier head (and a final norm when
        ``final_norm=False``) is dropped, only prompts may be absent; one log line says
        what was loaded, resampled, ignored and left at its initial value.
        """
        cfg = self.init_cfg if isinstance(self.init_cfg, dict) else {}
        ckpt = cfg.get('checkpoint')
        if ckpt is not None and '://' not in ckpt and not osp.isfile(ckpt):
            raise FileNotFoundError(
                f'pretrained backbone weights not found: {ckpt!r} (from the backbone\'s '
                'init_cfg). Put the file there, or point init_cfg.checkpoint at it, e.g. '
                "--cfg-options model.backbone.init_cfg.checkpoint=/path/to/vit.pth")
        if cfg.get('type') != 'Pretrained' or ckpt is None:
            super().init_weights()  # random init, or MMSeg's Pretrained_Part
            for tuner in (self.lora, self.adapter):  # MMSeg's init re-draws every Linear
                if tuner is not None:
                    tuner.reset_parameters()
            self._frozen_loaded = True
            return
        if '://' in ckpt:  # URLs and MMEngine schemes (open-mmlab://, ...)
            from mmengine.runner.checkpoint import CheckpointLoader
            source = to_mmseg_state_dict(
                CheckpointLoader.load_checkpoint(ckpt, map_location='cpu', logger=None),
                prefix=cfg.get('prefix'))
        else:
            source = load_vit_checkpoint(ckpt, prefix=cfg.get('prefix'))
        frozen_weights.check_signature(self, source.state_dict.pop('signature', None), f'{ckpt}: ')
        target = {k: t.shape for k, t in self.named_parameters()}
        target.update({k: t.shape for k, t in self.named_buffers() if k != 'signature'})
        prompts = {k for k, _ in self.named_parameters()  # the method's, not in the file
                   if k.split('.')[0] in ('prompt', 'lora', 'adapter')}
        try:
            state, report = fit_state_dict(
                source.state_dict, target,
                (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size),
                optional=prompts, interpolation=self.interpolate_mode,
                antialias=source.format != 'mmseg')  # as timm's loader; as MMSeg's did
        except ValueError as err:
            raise ValueError(f'{ckpt} ({source.format} format): {err}') from None
        heads = self.layers[0].attn.attn.num_heads
        if source.num_heads is not None and source.num_heads != heads:
            raise ValueError(f'{ckpt}: the file has {source.num_heads} attention heads, '
                             f'the backbone {heads} (num_heads)')
        report.source = f'{ckpt} ({source.format}' + (
            f", under {source.prefix!r}, {source.num_outside} other keys ignored)"
            if source.prefix else ')')
        eps = sorted({m.eps for m in self.modules() if isinstance(m, nn.LayerNorm)})
        eps_off = source.format != 'mmseg' and eps != [1e-6]
        if eps_off:
            report.notes.append(
                f'WARNING: LayerNorm eps={eps} here, timm/JAX ViTs use 1e-6: set '
                "norm_cfg=dict(type='LN', eps=1e-6)")
        result = self.load_state_dict(state, strict=False)  # every frozen key is there
        left = set(result.missing_keys) - prompts - {'signature'}
        if left or result.unexpected_keys:  # fit_state_dict and the module disagree
            raise RuntimeError(f'loading {ckpt} left {sorted(left)} missing and '
                               f'{result.unexpected_keys} unexpected')
        self._frozen_loaded = True
        self.pretrained_file = ckpt
        print_log(report.summary(), logger='current',
                  level=logging.WARNING if eps_off else logging.INFO)

    # ------------------------------------------ what the loading rules ask for
    def configured_pretrained(self) -> Optional[str]:
        """``init_cfg``'s pretrained file (None: no ``type='Pretrained'`` init_cfg)."""
        cfg = self.init_cfg
        return cfg.get('checkpoint') if isinstance(cfg, dict) and \
            cfg.get('type') == 'Pretrained' else None

    def load_pretrained(self, path: str) -> None:
        """Load the frozen weights from ``path`` (:meth:`init_weights` with ``init_cfg``
        pointed at it)."""
        self.init_cfg = dict(self.init_cfg or {}, type='Pretrained', checkpoint=path)
        self.init_weights()

    def check_checkpoint_fits(self, state_dict, prefix: str) -> None:
        """Shapes as every backbone's, except ``pos_embed`` (resampled to another
        ``img_size`` by MMSeg's own loading), and a patch-embedding bias this backbone
        would drop silently is refused."""
        frozen_weights.check_shapes(self, state_dict, prefix, exempt=('pos_embed',))
        bias_key = prefix + 'patch_embed.projection.bias'
        if bias_key in state_dict and self.patch_embed.projection.bias is None:
            raise ValueError(
                f'checkpoint has a patch-embedding bias ({bias_key}) but this backbone was '
                'built with patch_bias=False, so it would be dropped silently; set '
                'patch_bias=True (timm and JAX ViTs have this bias).')
