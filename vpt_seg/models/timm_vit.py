"""Any timm ViT by name, frozen, with visual prompts (VPT) and optional bias tuning.

timm builds the architecture (``timm.create_model(model_name, pretrained=False,
num_classes=0, ...)``); the weights come only from a local file in the formats timm
publishes (``model.safetensors``, ``pytorch_model.bin``, ``.pth``, or the hub's folder
with one of them and ``config.json``) or open_clip publishes (``open_clip_model.safetensors``,
``open_clip_pytorch_model.bin``: a whole CLIP, of which the ``visual.*`` image tower is
read), read safely and converted by the family's own ``checkpoint_filter_fn``. A CLIP
image tower can keep its frozen visual projection (timm's ``head``, OpenAI's
``visual.proj``): :attr:`PromptedTimmViT.visual_projection`. The layer loop is the one
every prompted backbone runs (:func:`vpt_seg.tuners.prompt.run_prompted_layers`) over
timm's own blocks:

    x = norm_pre(pos_embed([prefix, patch_embed(image)]))   # (B, K + HW, C), K = prefix tokens
    for i, block in enumerate(blocks):
        x = prompt(x, i)                                     # (B, K + P + HW, C)
        x = block(x)                  (EVA: block(x, rope=rope), rope on the HW patches only)
        map_i = strip(x, i)[:, K:] as (B, C, H, W)           # at out_indices

Prompts sit right after all prefix tokens ([CLS] and registers), get no position
embedding and no rotary embedding (EVA's attention skips every token before the patches:
``K``, plus the ``P`` prompt slots where there are prompts).

Read top-down: the backbone's own tables, its LoRA sites, then the backbone (its layout
steps; the forward is :class:`~vpt_seg.models.backbone.PromptedBackbone`'s). The family
table and the reading of timm and open_clip files are in
:mod:`vpt_seg.formats.timm_files` (re-exported here).
"""
import re
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple, Union

import timm
import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from ..formats.timm_files import (  # noqa: F401
    FAMILIES,
    HEAD_MODULES,
    HUB_FILES,
    OPEN_CLIP_CONFIG,
    check_model_name,
    clip_projection_dims,
    families_text,
    find_weights_file,
    fit_timm_state_dict,
    is_clip_model,
    pretrained_normalization,
    read_open_clip_config,
    read_timm_state_dict,
    same_weights_arch,
    vit_classes,
    write_hub_folder,
    write_open_clip_folder,
)
from ..tuners.prompt import VisualPrompt
from ..tuners.terms import ONE_TASK, TaskBatch
from ..tuners.tuning import bias_parameters, format_count
from ..tuners.tuning import freeze as freeze_module
from .backbone import PromptedBackbone, check_freeze_options

__all__ = ['FAMILIES', 'TIMM_SIGNATURE_FIELDS', 'PromptedTimmViT', 'find_weights_file',
           'read_timm_state_dict', 'fit_timm_state_dict', 'final_norm_attr',
           'write_hub_folder', 'write_open_clip_folder', 'is_clip_model',
           'clip_projection_dims', 'pretrained_normalization', 'read_open_clip_config']


#: What the ``signature`` buffer records, in order.
TIMM_SIGNATURE_FIELDS = ('embed_dims', 'num_layers', 'num_heads', 'patch_size', 'in_channels',
                         'feedforward_channels', 'num_prefix_tokens')

#: create_model arguments the backbone sets itself.
_RESERVED = ('pretrained', 'num_classes', 'pretrained_cfg_overlay', 'checkpoint_path')


def final_norm_attr(vit: nn.Module) -> Optional[str]:
    """The module that normalizes a timm ViT's last tokens: ``'norm'``, or ``'fc_norm'``
    where ``norm`` is Identity and the last LayerNorm follows the pooling (timm's EVA02;
    timm moves the MIM-pretrained final norm there); None if the model has neither."""
    for attr in ('norm', 'fc_norm'):
        if not isinstance(getattr(vit, attr, None), (nn.Identity, type(None))):
            return attr
    return None


# ---------------------------------------------------------------- backbone
def _lora_linears(block: nn.Module) -> Dict[nn.Linear, Tuple[Tuple[str, Optional[slice]], ...]]:
    """The LoRA sites of a timm block: each linear layer and ``(site, output slice)``
    (q/k/v as slices of a packed ``attn.qkv``)."""
    attn, mlp = block.attn, block.mlp
    out = {}
    qkv = getattr(attn, 'qkv', None)
    if isinstance(qkv, nn.Linear):
        d = qkv.out_features // 3
        out[qkv] = tuple((t, slice(j * d, (j + 1) * d)) for j, t in enumerate('qkv'))
    for owner, names in ((attn, ('q_proj', 'k_proj', 'v_proj', 'proj')),
                         (mlp, ('fc1', 'fc1_g', 'fc1_x', 'fc2'))):
        for name in names:
            linear = getattr(owner, name, None)
            if isinstance(linear, nn.Linear):
                out[linear] = ((name[0] if name.endswith('_proj') else name, None),)
    return out


@MODELS.register_module()
class PromptedTimmViT(PromptedBackbone, BaseModule):
    """A frozen timm ViT (any supported family) with visual prompts and bias tuning.

    Args:
        model_name: timm model name, with or without a pretrained tag
            (``'vit_large_patch14_reg4_dinov2.lvd142m'``); see :data:`FAMILIES`.
        checkpoint: Local weights: a ``.safetensors``/``.bin``/``.pth`` file or a hub
            folder (``model.safetensors`` or ``pytorch_model.bin``, ``config.json``), or
            a CLIP file as open_clip publishes it (``open_clip_model.safetensors``,
            ``open_clip_pytorch_model.bin``, or the folder with ``open_clip_config.json``:
            the ``visual.*`` tower is read; OpenAI's CLIPs need ``*_clip_quickgelu_*``
            names). Loaded by :meth:`init_weights`; None = timm's random init.
        model_kwargs: More arguments of ``timm.create_model`` (tests build tiny models of a
            family with ``embed_dim``/``depth``/``num_heads``).
        img_size: Training crop size: the position embedding is resampled to its grid
            once, at load. None = the model's own.
        patch_size: Build the model with another patch size; the file's patch embedding
            is resampled to it at load (timm's ``resample_patch_embed``, FlexiViT's
            pseudo-inverse resize). ``patch_size=16`` runs a patch-14 model (DINOv2,
            EVA02) on 512 crops (a 32 x 32 grid). None = the model's own.
        dynamic_img_size: timm's switch: inputs of another size than ``img_size`` (a
            multiple of the patch) get the position grid resampled on the fly.
        out_indices: Layers whose outputs become ``(B, C, H/p, W/p)`` maps.
        final_norm: Normalize the last layer's output with the model's last LayerNorm:
            ``norm``, or ``fc_norm`` token-wise where ``norm`` is Identity (EVA02). Where
            the model has neither, ``True`` raises. Earlier layers are never normalized.
        num_prompts, deep, prompt_layers, prompt_dropout, prompt_init: The prompts
            (:class:`~vpt_seg.tuners.prompt.VisualPrompt`).
        freeze: Freeze every pretrained weight; False = full fine-tuning.
        tune_bias: With ``freeze``, tune every bias of the model (one log line names
            the layers without a bias, e.g. EVA's key projection).
        lora: LoRA on the blocks' linear layers, ``dict(rank=8, alpha=8,
            targets=('q', 'v'), dropout=0.0)``: ``q``/``k``/``v`` are slices of timm's
            packed ``attn.qkv`` or EVA's ``q_proj``/``k_proj``/``v_proj``, ``proj`` the
            attention output, ``fc1`` the MLP's input projection(s) (both of SwiGLU's),
            ``fc2`` its output. None = off.
        adapter: AdaptFormer's adapter beside every MLP, ``dict(width=64, scale=0.1,
            dropout=0.0)``, added after LayerScale and drop-path. None = off.
        save_frozen: Put the frozen weights into ``state_dict()`` too.
        with_cp: Recompute each block in the backward pass (activation checkpointing).
        output_cls_token: Each output is ``[map, cls]``, the layer's ``(B, C)`` [CLS]
            token beside its map (normed with the map where ``final_norm``), as MMSeg's
            ViT gives it: what :class:`~vpt_seg.models.VPTClassifier` reads. Families
            without a [CLS] token (SigLIP) raise.
        keep_projection: Keep a CLIP image tower's projection (timm's ``head``, from
            ``visual.proj`` of an open_clip/OpenAI file; always frozen, its zero bias
            too) as :attr:`visual_projection`, the map from the normed [CLS] to CLIP's
            joint embedding. Its width is ``model_kwargs['num_classes']`` (tiny models)
            or timm's pretrained_cfg for the name (:func:`clip_projection_dims`: 512 for
            ``vit_base_patch16_clip_quickgelu_224``, 768 for ViT-L/14).
            :class:`~vpt_seg.models.VPTClassifier` sets it for a text head. A model that
            is not a CLIP image tower, or a tag fine-tuned into a classifier, is refused.
        project_out: The last layer's map goes out in CLIP's joint space: its tokens
            through the final norm and :attr:`visual_projection`, ``(B, E, H/p, W/p)``
            (the per-pixel embeddings DenseCLIP and MaskCLIP take; with
            ``output_cls_token`` its [CLS] is ``f(x)``). Needs ``keep_projection``,
            ``final_norm`` and the last layer in ``out_indices``;
            :class:`~vpt_seg.models.BoundedEncoderDecoder` sets all three for a text
            decode head (:class:`~vpt_seg.models.TextSegHead`).
        prefer_configured: When a task checkpoint is loaded, take its frozen weights from
            ``checkpoint`` only, not from the file the checkpoint records: the user named
            it (the tools set this when ``--cfg-options`` names
            ``model.backbone.checkpoint``). Its weights must still match the sha256 the
            checkpoint records.
        init_cfg: MMEngine's; unused (weights come from ``checkpoint``).

    Shapes:
        ``(B, 3, H, W)`` in (``H``, ``W`` multiples of the patch size); a tuple of
        ``(B, C, H / p, W / p)`` maps out, one per ``out_indices`` (with
        ``output_cls_token``, ``[map, (B, C)]`` pairs).
    """

    signature_fields = TIMM_SIGNATURE_FIELDS
    pretrained_option = 'model.backbone.checkpoint'

    def __init__(self,
                 model_name: str,
                 checkpoint: Optional[str] = None,
                 model_kwargs: Optional[dict] = None,
                 img_size: Union[int, Sequence[int], None] = None,
                 patch_size: Optional[int] = None,
                 dynamic_img_size: bool = True,
                 out_indices: Union[int, Sequence[int]] = -1,
                 final_norm: bool = False,
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
                 with_cp: bool = False,
                 output_cls_token: bool = False,
                 keep_projection: bool = False,
                 project_out: bool = False,
                 prefer_configured: bool = False,
                 init_cfg: Optional[dict] = None):
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            raise ValueError('PromptedTimmViT reads its weights from checkpoint=, not from '
                             f"init_cfg (got init_cfg={init_cfg}); set checkpoint='"
                             f"{init_cfg.get('checkpoint')}' (and _delete_=True when the "
                             'config inherits an MMSeg ViT backbone)')
        super().__init__(init_cfg=init_cfg)
        check_freeze_options(freeze, tune_bias)
        check_model_name(model_name)
        vit, projection_dims = self._build_vit(model_name, model_kwargs, img_size, patch_size,
                                               dynamic_img_size, keep_projection)
        self.keep_projection = keep_projection
        self.projection_dims = projection_dims
        self.model_name = model_name
        self.checkpoint = checkpoint
        self.pretrained_file = checkpoint
        self.prefer_configured = prefer_configured
        self.freeze = freeze
        self.tune_bias = tune_bias
        self.save_frozen = save_frozen
        self.with_cp = with_cp
        self.final_norm = final_norm
        if output_cls_token and getattr(vit, 'cls_token', None) is None:
            raise ValueError(f'output_cls_token=True, but {model_name} has no [CLS] token '
                             '(class_token=False, e.g. SigLIP); set output_cls_token=False')
        self.output_cls_token = output_cls_token
        self.num_prefix = vit.num_prefix_tokens
        self.patch_size = vit.patch_embed.patch_size[0]
        self.img_size = tuple(vit.patch_embed.img_size)
        self.in_channels = vit.patch_embed.proj.in_channels
        depth = len(vit.blocks)
        self.out_indices = self._out_indices(out_indices, depth)

        self.project_out = self._project_out(project_out, keep_projection, final_norm, depth)
        self._norm_attr = final_norm_attr(vit)
        self._ignored = self._drop_unused(vit, model_name, final_norm, keep_projection)
        self.vit = vit

        self.prompt = VisualPrompt(
            num_tokens=num_prompts, embed_dims=vit.embed_dim, num_layers=depth, deep=deep,
            layers=prompt_layers, dropout=prompt_dropout, num_prefix=self.num_prefix,
            init=prompt_init, patch_size=self.patch_size, in_channels=self.in_channels)
        self._eva = isinstance(vit, vit_classes()[1])
        self._linears = [_lora_linears(block) for block in vit.blocks]
        self.init_tuners(lora, adapter, depth, vit.embed_dim)
        if self.adapter is not None and not hasattr(vit.blocks[0], 'drop_path2'):
            raise ValueError(f'model.backbone.adapter: {type(vit.blocks[0]).__name__} has no '
                             'drop_path2 to add the adapter branch after')
        if freeze:
            freeze_module(vit, tune_bias=tune_bias)
        if self.visual_projection is not None:  # CLIP's joint space: never tuned (its
            freeze_module(self.visual_projection)  # zero bias neither, even with tune_bias)
        if freeze and tune_bias:
            self._report_biases()
        self.register_buffer('signature', self._signature())
        self.init_frozen_hooks()

    @classmethod
    def _build_vit(cls, model_name: str, model_kwargs: Optional[dict], img_size, patch_size,
                   dynamic_img_size: bool, keep_projection: bool) -> Tuple[nn.Module, int]:
        """timm's model for the name and arguments (checked), and the width of the CLIP
        projection it keeps (0: none)."""
        kwargs = dict(model_kwargs or {})
        if keep_projection and not is_clip_model(model_name):
            raise ValueError(f'keep_projection=True (a text head needs CLIP image embeddings), '
                             f'but {model_name!r} is not a CLIP image tower: it has no visual '
                             'projection to CLIP\'s joint space. Use a CLIP model, e.g. '
                             "model_name='vit_base_patch16_clip_quickgelu_224' with the "
                             'open_clip file of OpenAI\'s weights')
        # A CLIP projection's width: the caller's (tiny models), or timm's for the name.
        projection_dims = cls._projection_dims(
            model_name, kwargs.pop('num_classes', None)) if keep_projection else 0
        clash = [k for k in _RESERVED + ('img_size', 'patch_size', 'dynamic_img_size')
                 if k in kwargs]
        if clash:
            raise ValueError(f'model_kwargs {clash}: set by the backbone itself (weights come '
                             'from checkpoint=, img_size/patch_size/dynamic_img_size are '
                             "the backbone's own arguments)")
        for key, value in (('img_size', img_size), ('patch_size', patch_size)):
            if value is not None:
                kwargs[key] = tuple(value) if isinstance(value, (list, tuple)) else value
        try:
            vit = timm.create_model(model_name, pretrained=False, num_classes=projection_dims,
                                    dynamic_img_size=dynamic_img_size, **kwargs)
        except TypeError as err:  # an argument the family's class does not take
            raise ValueError(f'timm cannot build {model_name!r} with {kwargs}: {err}') from None
        cls._check_family(model_name, vit)
        if projection_dims and not isinstance(getattr(vit, 'head', None), nn.Linear):
            raise ValueError(f'keep_projection=True: {model_name} builds no linear head to '
                             'hold the visual projection')
        return vit, projection_dims

    @staticmethod
    def _drop_unused(vit: nn.Module, model_name: str, final_norm: bool,
                     keep_projection: bool) -> Tuple[str, ...]:
        """Remove what segmentation never uses from ``vit``; returns the top-level names
        whose keys a file may hold and the load ignores."""
        # What segmentation never uses goes: pooling/classifier heads and, unless
        # final_norm, the last norm. Their keys in a file are ignored at load.
        norm_attr = final_norm_attr(vit)
        if final_norm and norm_attr is None:
            raise ValueError(f'final_norm=True, but {model_name} has no last LayerNorm '
                             '(norm and fc_norm are both Identity); set final_norm=False')
        unused_norms = tuple(a for a in ('norm', 'fc_norm')
                             if not (final_norm and a == norm_attr))
        ignored = tuple(h for h in HEAD_MODULES if not (keep_projection and h == 'head')) \
            + unused_norms
        for attr in unused_norms:
            if hasattr(vit, attr):
                setattr(vit, attr, nn.Identity())
        if getattr(vit, 'attn_pool', None) is not None:
            vit.attn_pool = None
        return ignored

    @property
    def visual_projection(self) -> Optional[nn.Module]:
        """CLIP's visual projection (``keep_projection``): a frozen ``nn.Linear``, ``(B, C)
        -> (B, E)``, applied to the final [CLS] through the final norm (``final_norm``,
        what :class:`~vpt_seg.models.VPTClassifier` reads) it gives OpenAI's
        ``ln_post(x[:, 0]) @ proj``, open_clip's ``encode_image``; None without one."""
        return self.vit.head if self.keep_projection else None

    # ---------------------------------------------------------- validation
    @staticmethod
    def _check_family(model_name: str, vit: nn.Module):
        from timm.layers import PatchEmbed
        if not isinstance(vit, vit_classes()) or type(vit.patch_embed) is not PatchEmbed:
            raise ValueError(f'model_name={model_name!r} builds a {type(vit).__name__} (patch '
                             f'embedding {type(vit.patch_embed).__name__}), not a plain ViT; '
                             f'supported families: {families_text()}')
        drop = getattr(vit, 'patch_drop', None)
        if drop is not None and not isinstance(drop, nn.Identity):
            raise ValueError('patch dropout (patch_drop_rate > 0) drops patch tokens, so '
                             'they no longer form a map; PromptedTimmViT cannot honour it')
        if getattr(vit, 'rope_mixed', False):
            raise ValueError(f'{model_name}: mixed (per-layer learned) RoPE is not supported')
        h, w = vit.patch_embed.img_size
        p = vit.patch_embed.patch_size[0]
        if h % p or w % p:
            raise ValueError(
                f'img_size {h}x{w} is not a multiple of the patch size {p}. Set '
                f'patch_size to a divisor (patch_size=16 for 512 crops: the patch embedding '
                'and position grid are resampled once at load) or img_size to a multiple '
                f'of {p}.')

    def _project_out(self, project_out: bool, keep_projection: bool, final_norm: bool,
                     depth: int) -> bool:
        """``project_out``, its requirements, each refused naming the option to set."""
        if not project_out:
            return False
        missing = [what for what, ok in (
            ('keep_projection=True (the visual projection to map with)', keep_projection),
            ('final_norm=True (CLIP projects the final-normed tokens)', final_norm),
            (f'the last layer ({depth - 1}) in out_indices', depth - 1 in self.out_indices))
            if not ok]
        if missing:
            raise ValueError('project_out=True maps the last layer\'s tokens into CLIP\'s joint '
                             'space; it needs ' + ', '.join(missing))
        return True

    @staticmethod
    def _projection_dims(model_name: str, width: Optional[int]) -> int:
        """The kept projection's width: ``width`` (``model_kwargs['num_classes']``) or
        timm's pretrained_cfg for the name."""
        if width is None:
            width = clip_projection_dims(model_name)
            if not width:
                raise ValueError(
                    f'keep_projection=True, but {model_name!r} names a CLIP fine-tuned into '
                    'a classifier (its head classifies, it is no projection); name the CLIP '
                    'itself, e.g. vit_base_patch16_clip_quickgelu_224.openai')
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ValueError(f"model_kwargs['num_classes']={width!r}: with keep_projection it "
                             "is the width of CLIP's visual projection, a positive int")
        return width

    @staticmethod
    def _out_indices(out_indices, depth: int) -> Tuple[int, ...]:
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        bad = [i for i in indices if not -depth <= i < depth]
        if bad:
            raise ValueError(f'out_indices {bad} are outside the {depth} layers of the ViT')
        return tuple(i % depth for i in indices)

    def _signature(self) -> torch.Tensor:
        block = self.vit.blocks[0]
        mlp = next(m for m in block.mlp.modules() if isinstance(m, nn.Linear))
        return torch.tensor([self.vit.embed_dim, len(self.vit.blocks), block.attn.num_heads,
                             self.patch_size, self.in_channels, mlp.out_features,
                             self.num_prefix])

    def _report_biases(self):
        """One log line: which biases ``tune_bias`` tunes, and which layers have none."""
        tuned = [(n, p) for n, p in bias_parameters(self.vit) if p.requires_grad]
        if not tuned:
            raise ValueError(f'tune_bias=True, but {self.model_name} has no bias terms')

        def generic(name):
            return re.sub(r'^blocks\.\d+\.', 'blocks.*.', name)
        names = list(dict.fromkeys(generic(n) for n, _ in tuned))
        none = list(dict.fromkeys(
            generic(n) for n, m in self.vit.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)) and m.weight is not None
            and getattr(m, 'bias', None) is None))
        print_log(f'{type(self).__name__} tune_bias: {len(tuned)} bias tensors tuned '
                  f'({format_count(sum(p.numel() for _, p in tuned))} parameters): '
                  f'{", ".join(names)}' + (f'; layers without a bias (nothing to tune): '
                                           f'{", ".join(none)}' if none else ''),
                  logger='current')

    def project_tokens(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """With ``project_out``, the last layer's (final-normed) tokens through CLIP's
        visual projection: ``(B, K + HW, C) -> (B, K + HW, E)``, OpenAI's ``ln_post(x) @
        proj`` on every token; other layers unchanged."""
        if self.project_out and layer == len(self.vit.blocks) - 1:
            return self.visual_projection(x)
        return x

    # ------------------------------------------------------------ layout steps
    # PromptedBackbone's steps over timm's modules (the forward is the base's). timm's
    # blocks run as modules, so what the tasks add (per-sample biases, LoRA, adapters)
    # comes through TaskBatch.hooked.
    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches ([CLS] and registers); prompts go right after them."""
        return self.num_prefix

    def check_input(self, inputs: torch.Tensor):
        """Raise ``ValueError`` for inputs this backbone cannot embed."""
        if inputs.dim() != 4 or inputs.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects (B, {self.in_channels}, H, W) '
                             f'images, got a tensor of shape {tuple(inputs.shape)}')
        h, w = inputs.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f'image size {h}x{w} is not a multiple of the patch size {self.patch_size}: '
                f'crop or resize the input, or build the backbone with a patch size that '
                f'divides it (patch_size=16 for 512 crops; the patch embedding is resampled '
                'once at load)')
        if not self.vit.dynamic_img_size and (h, w) != self.img_size:
            raise ValueError(f'image size {h}x{w} differs from img_size {self.img_size} and '
                             'dynamic_img_size=False; set dynamic_img_size=True')

    def embed_patches(self, inputs: torch.Tensor, batch: TaskBatch = ONE_TASK):
        """timm's patch embedding: ``(B, 3, H, W) -> (B, H/p, W/p, C)`` tokens
        (``(B, HW, C)`` without ``dynamic_img_size``) and the grid ``(H/p, W/p)``."""
        grid = self.vit.patch_embed.dynamic_feat_size(tuple(inputs.shape[-2:]))
        with batch.hooked(self.vit.patch_embed):
            return self.vit.patch_embed(inputs), grid

    def add_prefix(self, x: torch.Tensor, hw_shape) -> torch.Tensor:
        """timm's ``_pos_embed``: ``-> (B, K + HW, C)``, [CLS] and registers before the
        patches, the position embedding (resampled to the grid when it differs)."""
        x = self.vit._pos_embed(x)
        return x[0] if self._eva else x  # Eva also returns its rotary table

    def rotary_embedding(self, hw_shape) -> Optional[torch.Tensor]:
        """EVA's RoPE table for the patches of this grid, ``(HW, 2 * head_dim)``, exactly
        as timm's ``Eva._pos_embed`` makes it; None for families without RoPE."""
        rope = getattr(self.vit, 'rope', None)
        if rope is None:
            return None
        if self.vit.dynamic_img_size or not hasattr(rope, 'feat_shape'):
            return rope.get_embed(shape=tuple(hw_shape))
        return rope.get_embed()

    def block_kwargs(self, hw_shape) -> dict:
        """What :meth:`run_block` takes for inputs of this grid besides the tokens:
        EVA's ``rope`` table (None for families without RoPE)."""
        return dict(rope=self.rotary_embedding(hw_shape))

    def norm_pre(self, x: torch.Tensor, batch: TaskBatch = ONE_TASK):
        """The pre-norm (CLIP), or ``x`` unchanged (Identity)."""
        with batch.hooked(self.vit.norm_pre):
            return self.vit.norm_pre(x)

    def norm_out(self, x: torch.Tensor, batch: TaskBatch = ONE_TASK):
        """The final norm (``final_norm=True``): ``norm``, or EVA02's ``fc_norm``."""
        norm = getattr(self.vit, self._norm_attr)
        with batch.hooked(norm):
            return norm(x)

    def _call_block(self, i: int, x: torch.Tensor, kwargs: dict,
                    batch: TaskBatch) -> torch.Tensor:
        block = self.vit.blocks[i]
        rope = kwargs.get('rope')
        if rope is not None:
            # RoPE rotates the last HW tokens only: [CLS], registers and the prompt slots
            # before them count as prefix (timm's EvaAttention skips num_prefix_tokens).
            block.attn.num_prefix_tokens = x.shape[1] - rope.shape[-2]
        if not (batch.active or batch.per_sample):
            return block(x, **kwargs)
        # Inside the (checkpointed) call, so a recomputation adds the same terms.
        with batch.hooked(block, i, self._linears[i], block.mlp,
                          getattr(block, 'drop_path2', None)):
            return block(x, **kwargs)

    def run_block(self, i: int, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                  batch: TaskBatch = ONE_TASK,
                  rope: Optional[torch.Tensor] = None) -> torch.Tensor:
        """timm's block ``i``, ``(B, N, C) -> (B, N, C)``; ``mask``: a boolean
        ``(B, 1, 1, N)`` key mask (timm's ``attn_mask``); ``rope``: EVA's table from
        :meth:`rotary_embedding`; ``batch``: per-sample biases, LoRA updates and adapter
        branches, added by forward hooks (:meth:`TaskBatch.hooked`)."""
        block = self.vit.blocks[i]
        kwargs = {} if mask is None else dict(attn_mask=mask)
        if self._eva:
            kwargs['rope'] = rope
        if not batch.per_sample and self.with_cp and torch.is_grad_enabled() and (
                x.requires_grad or batch.active or
                any(p.requires_grad for p in block.parameters())):
            return activation_checkpoint(self._call_block, i, x, kwargs, batch,
                                         use_reentrant=False)
        return self._call_block(i, x, kwargs, batch)

    def lora_weight(self, layer: int, site: str):
        """The linear of ``site`` in block ``layer`` and its output rows (packed qkv)."""
        for linear, sites in self._linears[layer].items():
            for name, part in sites:
                if name == site:
                    return linear.weight, part
        raise KeyError(f'block {layer} has no LoRA site {site!r}')

    def lora_sites(self, target: str):
        """What a LoRA target names in timm's blocks (see ``lora`` above).

        Raises:
            ValueError: q/k/v of an EVA attention that packs them with separate biases
                (computed with ``F.linear`` inside the attention, out of a hook's reach).
        """
        attn = self.vit.blocks[0].attn
        if target in ('q', 'k', 'v') and getattr(attn, 'q_bias', None) is not None and \
                getattr(attn, 'qkv', None) is not None and \
                not getattr(attn, 'qkv_bias_separate', False):
            raise ValueError(f'model.backbone.lora.targets: {self.model_name} packs q/k/v '
                             'with separate q/v biases inside its attention (F.linear), '
                             'which LoRA cannot reach; target proj/fc1/fc2, or build the '
                             'model with qkv_fused=False')
        names = ('fc1', 'fc1_g', 'fc1_x') if target == 'fc1' else (target,)
        found = {}
        for linear, sites in self._linears[0].items():
            for site, part in sites:
                if site in names:
                    found[site] = (linear.in_features, linear.out_features if part is None
                                   else part.stop - part.start)
        return found

    def shared_structure(self) -> Dict[str, object]:
        """What the shared pass relies on beyond parameter shapes (timm builds the rest
        from the name)."""
        return OrderedDict(
            backbone=type(self).__name__, model=self.model_name.split('.')[0],
            signature=self.signature.tolist(), num_prefix_tokens=self.num_prefix_tokens,
            dynamic_img_size=self.vit.dynamic_img_size,
            norm_eps=sorted({m.eps for m in self.modules() if isinstance(m, nn.LayerNorm)}))

    def check_shareable(self, what: str) -> None:
        """Per-sample biases come through hooks; EVA's q/v biases, applied inside its
        attention, cannot."""
        if self.tune_bias and any(n.endswith(('q_bias', 'v_bias'))
                                  for n, p in self.named_parameters() if p.requires_grad):
            raise ValueError(f'{what} tunes the q/v biases inside EVA\'s attention, '
                             'which cannot be given per sample in a shared batch; serve it '
                             'on its own')

    # ------------------------------------------------------------- weights
    def configured_pretrained(self) -> Optional[str]:
        return self.checkpoint

    def init_weights(self):
        """Load ``checkpoint`` (timm's random init stays when there is none)."""
        if self.checkpoint is not None:
            self.load_pretrained(self.checkpoint)
        self._is_init = True

    def _check_activation(self, file: str) -> None:
        """Refuse a CLIP whose ``open_clip_config.json`` says it was trained with another
        activation than the model builds: QuickGELU CLIPs (``quick_gelu: true``, OpenAI's)
        need timm's ``*_clip_quickgelu_*`` names (the weights load into both, the
        features differ). A config without the key says nothing (open_clip keeps it in
        its own registry; the hub's OpenAI folders do not record it)."""
        config = read_open_clip_config(file)
        model_cfg = (config or {}).get('model_cfg')
        if not isinstance(model_cfg, dict) or 'quick_gelu' not in model_cfg:
            return
        theirs = bool(model_cfg.get('quick_gelu', False))
        ours = type(getattr(self.vit.blocks[0].mlp, 'act', None)).__name__ == 'QuickGELU'
        if theirs != ours:
            want = ('a *_clip_quickgelu_* name (e.g. vit_base_patch16_clip_quickgelu_224)'
                    if theirs else 'a name without _quickgelu')
            raise ValueError(
                f'{file}: its {OPEN_CLIP_CONFIG} says quick_gelu={theirs} (OpenAI\'s CLIPs '
                f'use QuickGELU), but {self.model_name} uses '
                f'{"QuickGELU" if ours else "GELU"}; use {want}')

    def load_pretrained(self, path: str) -> None:
        """Load the timm weights at ``path`` (file or hub folder) into the model strictly.

        Raises:
            FileNotFoundError: Nothing at ``path`` (named, with the config key).
            ValueError: The file is unreadable, or holds another model (another name
                in its ``config.json``, or keys and shapes that differ: named).
        """
        file, config = find_weights_file(path, self.pretrained_option)
        arch = self.model_name.split('.')[0]
        theirs = (config or {}).get('architecture')
        if theirs and not same_weights_arch(theirs, arch):
            raise ValueError(f'{path}: its config.json says architecture {theirs!r}, the '
                             f'backbone builds {arch!r} (model_name={self.model_name!r})')
        self._check_activation(file)
        try:
            state, summary = fit_timm_state_dict(read_timm_state_dict(file), self.vit,
                                                 ignored=self._ignored, where=file)
        except ValueError as err:
            if self.keep_projection and 'missing from the file: head.' in str(err):
                raise ValueError(
                    f'{err}. The backbone keeps CLIP\'s visual projection (head, '
                    f'{self.projection_dims} wide; keep_projection=True, set for text heads) '
                    'and this file has none: name the CLIP file (open_clip_model.safetensors '
                    'holds visual.proj)') from None
            raise
        self.vit.load_state_dict(state, strict=True)
        self.pretrained_file = path
        self._frozen_loaded = True
        print_log(f'{type(self).__name__} ({self.model_name}): loaded {file}: {summary}',
                  logger='current')
