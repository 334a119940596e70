"""``CoOpTextEncoder``: class embeddings from a frozen CLIP text tower with CoOp's learned
context, or with hand-written templates (zero-shot CLIP).

The contract is MMSeg's ``CLIPTextEncoder``: ``forward()`` takes no input and returns
``(K, E)`` = ``exp(logit_scale) * normalize(g(t_i))`` for the K classes named by
``vocabulary`` or ``dataset_name``, so a classifier's logits are
``normalize(f(x)) @ forward().T`` (``exp(logit_scale) * cos``). Unlike MMSeg's, gradients
reach the learned context (MMSeg's ``encode_text`` runs under ``no_grad`` and has no
context), and the file is read in OpenAI's key layout, as open_clip publishes CLIP (MMSeg's
encoder needs its own key names, ``tools/model_converters/clip2mmseg.py``). The tower and
tokenizer are open_clip's (``TextTransformer``, ``SimpleTokenizer``), pinned; the CoOp
logic is :mod:`vpt_seg.tuners.coop`.

Cost: the K prompts are encoded once per forward (one step), never per image; the
sequence ends after the longest prompt's end token; with nothing to differentiate
(evaluation, or no context) the features are cached until the context, the class list
or the tower's weights change.

Task files hold the context only: the tower is frozen (``requires_grad=False``) and,
like a prompted backbone's frozen weights (:class:`~vpt_seg.models.frozen.
FrozenBackboneMixin`), left out of ``state_dict()``, recorded by file and sha256, and
loaded from the CLIP file again when a task is loaded.
"""
import logging
import math
from typing import Dict, List, Optional, Sequence, Union

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import nn

from ..formats import frozen_weights
from ..formats.clip_text import read_clip_text_state_dict, text_tower_shape
from ..tuners.coop import (
    CLASS_POSITIONS,
    CoOpContext,
    check_class_names,
    class_prompt_tokens,
    clip_tokenizer,
    encode_prompts,
    normalized_features,
    template_tokens,
)
from ..tuners.tuning import freeze
from .frozen import FrozenBackboneMixin

__all__ = ['CoOpTextEncoder', 'TEXT_SIGNATURE_FIELDS']

#: What the text encoder's ``signature`` buffer records, in order.
TEXT_SIGNATURE_FIELDS = ('embed_dims', 'num_layers', 'num_heads', 'output_dims',
                         'context_length', 'total_vocab_size')


def _templates(templates: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(templates, str):
        if '{}' in templates:
            return [templates]
        from mmseg.utils import get_predefined_templates
        try:
            return list(get_predefined_templates(templates))
        except Exception:  # MMSeg raises a bare exception for unknown names
            raise ValueError(f"templates={templates!r}: not a template with '{{}}' nor one of "
                             "MMSeg's sets ('vild', 'imagenet')") from None
    templates = list(templates or [])
    bad = [t for t in templates if not isinstance(t, str) or t.count('{}') != 1]
    if not templates or bad:
        raise ValueError(f"templates: each must be a string with one '{{}}' where the class "
                         f"name goes (e.g. 'a photo of a {{}}.'); got {bad or templates!r:.200}")
    return templates


def _check_tower_shape(total_vocab_size, context_length, embed_dims, num_layers, num_heads,
                       output_dims):
    """The text tower's shape arguments: integers in range (checked against the file at
    load)."""
    for key, value, low in (('total_vocab_size', total_vocab_size, 49408),
                            ('context_length', context_length, 3),
                            ('embed_dims', embed_dims, 1), ('num_layers', num_layers, 1),
                            ('num_heads', num_heads, 1), ('output_dims', output_dims, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f'{key}={value!r}: expected an integer >= {low}' + (
                ' (the CLIP tokenizer\'s vocabulary)' if key == 'total_vocab_size' else ''))
    if embed_dims % num_heads:
        raise ValueError(f'embed_dims={embed_dims} is not a multiple of num_heads={num_heads}')


def _context_options(n_ctx, ctx_init, csc, class_position, templates, context_length):
    """CoOp's options checked together; returns ``(n_ctx, ctx_init)`` (``ctx_init``'s
    token count is the context length M when it is given)."""
    if class_position not in CLASS_POSITIONS:
        raise ValueError(f'class_position={class_position!r}: expected one of '
                         f'{CLASS_POSITIONS}')
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 0:
        raise ValueError(f'n_ctx={n_ctx!r}: expected an integer >= 0 (0 with templates: '
                         'hand-written prompts, no learned context)')
    ctx_init = ctx_init.replace('_', ' ').strip() if ctx_init else None
    if ctx_init:
        if templates is not None:
            raise ValueError('ctx_init starts a learned context; templates are the '
                             'hand-written prompts of n_ctx=0: give one of them')
        count = len(clip_tokenizer().encode(ctx_init))
        if n_ctx not in (16, count):  # 16: the default, which ctx_init overrides
            print_log(f'CoOpTextEncoder: n_ctx={n_ctx} is ignored: ctx_init={ctx_init!r} '
                      f'sets the context length to its {count} tokens', logger='current',
                      level=logging.WARNING)
        n_ctx = count
    room = context_length - 4  # [SOS], ".", [EOS] and a name of one token at least
    if n_ctx > room:
        what = (f'ctx_init={ctx_init!r} tokenizes to {n_ctx} tokens (BPE), more than fit'
                if ctx_init else f'n_ctx={n_ctx} is out of range: more context than fits')
        raise ValueError(f'{what} in the context length {context_length} beside the start '
                         f'and end tokens, "." and a class name: at most {room}')
    if n_ctx == 0 and templates is None:
        raise ValueError("n_ctx=0 learns no context: give hand-written templates "
                         "(templates=['a photo of a {}.'], or MMSeg's 'vild'/'imagenet'), "
                         'or n_ctx >= 1 for CoOp')
    if n_ctx and templates is not None:
        raise ValueError(f'templates are the hand-written prompts of n_ctx=0; with '
                         f'n_ctx={n_ctx} the context is learned: set one of them')
    if csc and not n_ctx:
        raise ValueError('csc=True makes a context per class; n_ctx=0 has none')
    return n_ctx, ctx_init


@MODELS.register_module()
class CoOpTextEncoder(FrozenBackboneMixin, BaseModule):
    """A frozen CLIP text tower that embeds K class names with CoOp's learned context.

    Args:
        dataset_name: Take the class names from MMSeg's ``get_classes`` (e.g.
            ``'ade20k'``); exactly one of this and ``vocabulary``.
        vocabulary: The class names. Underscores become spaces, outer spaces go.
        templates: Only with ``n_ctx=0``: hand-written prompts with ``'{}'`` for the
            name, ensembled as CLIP does (mean of the normalised per-template features,
            normalised again): a list, one string, or MMSeg's sets ``'vild'`` /
            ``'imagenet'``.
        total_vocab_size, context_length, embed_dims, num_layers, num_heads, mlp_ratio,
            output_dims: The text tower's shape under MMSeg's names (defaults: ViT-B/16's);
            checked against the file.
        checkpoint: The CLIP file: open_clip's ``open_clip_model.safetensors`` /
            ``open_clip_pytorch_model.bin`` or a hub folder with one (OpenAI's key
            layout, both towers; only the text keys are read). Loaded by
            :meth:`init_weights`; None: random weights (tests).
        n_ctx: Context length M (CoOp's 16); 0 with ``templates``: no learned context.
            With ``ctx_init``, M is the number of its BPE tokens (as the official code
            overrides it).
        ctx_init: Words the context starts as (``'a photo of a'``): their token
            embeddings; None: N(0, 0.02).
        csc: Class-specific context, ``(K, M, D)``; it stays tied to these K classes.
            With ``ctx_init`` every class starts from the words (the official code
            ignores ``csc`` there).
        class_position: ``'end'``, ``'middle'`` or ``'front'`` (see
            :mod:`vpt_seg.tuners.coop`).
        quick_gelu: The tower's activation: QuickGELU (OpenAI's weights, and the
            ``*-quickgelu`` open_clip models) or GELU (most LAION models).
        with_cp: Recompute each text block in the backward pass (open_clip's gradient
            checkpointing): the memory of a training step no longer grows with K x layers
            of activations (CoOp issue #12: many classes), at about a third more time.
        init_cfg: MMEngine's; unused (weights come from ``checkpoint``).

    Shapes:
        ``forward() -> (K, output_dims)``; ``ctx`` ``(M, D)`` or ``(K, M, D)``,
        ``D = embed_dims``.
    """

    signature_fields = TEXT_SIGNATURE_FIELDS
    pretrained_option = 'model.head.text_encoder.checkpoint'

    def __init__(self,
                 dataset_name: Optional[str] = None,
                 vocabulary: Optional[Sequence[str]] = None,
                 templates: Union[str, Sequence[str], None] = None,
                 total_vocab_size: int = 49408,
                 context_length: int = 77,
                 embed_dims: int = 512,
                 num_layers: int = 12,
                 num_heads: int = 8,
                 mlp_ratio: float = 4.0,
                 output_dims: int = 512,
                 checkpoint: Optional[str] = None,
                 n_ctx: int = 16,
                 ctx_init: Optional[str] = None,
                 csc: bool = False,
                 class_position: str = 'end',
                 quick_gelu: bool = True,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        names = self._class_names(dataset_name, vocabulary)
        _check_tower_shape(total_vocab_size=total_vocab_size, context_length=context_length,
                           embed_dims=embed_dims, num_layers=num_layers, num_heads=num_heads,
                           output_dims=output_dims)
        n_ctx, ctx_init = _context_options(n_ctx, ctx_init, csc, class_position, templates,
                                           context_length)
        self.templates = _templates(templates) if templates is not None else None
        self.n_ctx, self.ctx_init, self.csc = n_ctx, ctx_init, bool(csc)
        self.class_position = class_position
        self.context_length = context_length
        self.checkpoint = checkpoint
        self.pretrained_file = checkpoint
        self.save_frozen = False
        self.lora = self.adapter = self.lora_cfg = self.adapter_cfg = None
        self.shape = dict(total_vocab_size=total_vocab_size, context_length=context_length,
                          embed_dims=embed_dims, num_layers=num_layers, num_heads=num_heads,
                          mlp_ratio=float(mlp_ratio), output_dims=output_dims)

        from open_clip.transformer import QuickGELU, TextTransformer
        self.text = TextTransformer(
            context_length=context_length, vocab_size=total_vocab_size, width=embed_dims,
            heads=num_heads, layers=num_layers, mlp_ratio=mlp_ratio, output_dim=output_dims,
            act_layer=QuickGELU if quick_gelu else nn.GELU)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.text.set_grad_checkpointing(bool(with_cp))
        freeze(self.text)
        self.logit_scale.requires_grad_(False)  # CoOp keeps CLIP's temperature
        self.prompt = (CoOpContext(n_ctx, embed_dims, len(names) if csc else None)
                       if n_ctx else None)
        self._set_tokens(names)
        if ctx_init and checkpoint is None:
            self._init_context()
        self.register_buffer('signature', torch.tensor(
            [embed_dims, num_layers, num_heads, output_dims, context_length, total_vocab_size]))
        self._cache = None
        self.init_frozen_hooks()

    # ------------------------------------------------------------- classes
    @staticmethod
    def _class_names(dataset_name, vocabulary) -> List[str]:
        if (dataset_name is None) == (vocabulary is None):
            raise ValueError('CoOpTextEncoder needs exactly one of vocabulary=[class names] '
                             "and dataset_name (one of MMSeg's, e.g. 'ade20k')")
        if vocabulary is not None:
            return check_class_names(vocabulary, 'vocabulary')
        from mmseg.utils import get_classes
        try:
            names = get_classes(dataset_name)
        except Exception:  # MMSeg raises a bare ValueError with its own text
            raise ValueError(f'dataset_name={dataset_name!r} is not one of MMSeg\'s datasets '
                             "(mmseg.utils.get_classes); give vocabulary=[...]") from None
        return check_class_names(names, f'dataset_name={dataset_name!r}')

    @property
    def class_names(self) -> List[str]:
        """The K class names, as they go into the prompts."""
        return list(self._names)

    @property
    def num_classes(self) -> int:
        return len(self._names)

    @property
    def output_dims(self) -> int:
        """Width E of the class embeddings (CLIP's joint space)."""
        return self.shape['output_dims']

    @property
    def ctx(self) -> Optional[nn.Parameter]:
        """The learned context ``(M, D)`` or ``(K, M, D)`` (None with templates)."""
        return None if self.prompt is None else self.prompt.ctx

    def _set_tokens(self, names: List[str]):
        if self.templates is not None:
            ids, eot = template_tokens(names, self.templates, self.context_length)
            order = None
        else:
            ids, eot, order, _ = class_prompt_tokens(names, self.n_ctx, self.context_length,
                                                     self.ctx_init, self.class_position)
        # Tokens, not embeddings, and not in the state dict: a unified context moves to
        # other class names; the embeddings are looked up in the frozen tower each time.
        self.register_buffer('token_ids', ids, persistent=False)
        self.register_buffer('eot_index', eot, persistent=False)
        self.register_buffer('token_order', order, persistent=False)
        self._names = tuple(names)
        self._cache = None

    def set_classes(self, names: Sequence[str]):
        """Embed another class list from now on (a unified context, or templates).

        Raises:
            ValueError: bad names (:func:`~vpt_seg.tuners.coop.check_class_names`), a
                prompt too long, or class-specific context (``csc=True``): its context
                is one learned tensor per trained class.
        """
        names = check_class_names(names, 'set_classes')
        if self.csc and tuple(names) != self._names:
            raise ValueError(
                f'this task has class-specific context (csc=True): one learned context per '
                f'class of the {self.num_classes} it was trained on, tied to those classes, so '
                'it cannot classify another class list. A unified context (csc=False) can.')
        device = self.token_ids.device
        self._set_tokens(names)
        self.token_ids, self.eot_index = self.token_ids.to(device), self.eot_index.to(device)
        if self.token_order is not None:
            self.token_order = self.token_order.to(device)

    # ------------------------------------------------------------- forward
    def _word_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text.token_embedding(ids)

    @torch.no_grad()
    def _init_context(self):
        """``ctx_init``: the context starts as the words' token embeddings."""
        ids = torch.tensor(clip_tokenizer().encode(self.ctx_init),
                           device=self.text.token_embedding.weight.device)
        self.prompt.init_from(self._word_embeds(ids))

    def prompt_embeddings(self) -> torch.Tensor:
        """``(K, L, D)``: the prompts ``t_i`` as token embeddings, the context in place
        (L: up to the longest prompt's end token)."""
        if self.prompt is None:
            raise ValueError('n_ctx=0: the prompts are the templates\' tokens, no context')
        return self.prompt(self._word_embeds(self.token_ids), self.token_order)

    def _features(self) -> torch.Tensor:
        """``(K, E)`` normalised class features (a graph to the context when it needs one)."""
        if self.templates is None:
            prompts = self.prompt_embeddings()
            return normalized_features(encode_prompts(self.text, prompts, self.eot_index))
        per_template = torch.stack([
            normalized_features(encode_prompts(self.text, self._word_embeds(ids), eot))
            for ids, eot in zip(self.token_ids, self.eot_index)])      # (T, K, E)
        return normalized_features(per_template.mean(0))

    def _cache_key(self):
        weights = self.text.token_embedding.weight
        ctx = self.ctx
        return (self._names, weights.data_ptr(), weights._version, self.logit_scale._version,
                None if ctx is None else (ctx.data_ptr(), ctx._version, ctx.dtype))

    def forward(self) -> torch.Tensor:
        """``(K, E)`` class embeddings ``exp(logit_scale) * normalize(g(t_i))``.

        Computed once per call for all K classes; cached while nothing needs a graph
        (``no_grad``, or nothing tuned) until the context (a training step), the class
        list or the tower's weights change.
        """
        needs_graph = torch.is_grad_enabled() and any(
            p.requires_grad for p in self.parameters())
        if needs_graph:
            return self.logit_scale.exp() * self._features()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.logit_scale.exp() * self._features())
        return self._cache[1]

    def train(self, mode: bool = True):
        """The tower stays in eval mode (frozen); the cache is dropped."""
        super().train(mode)
        self.text.train(False)
        self._cache = None
        return self

    # --------------------------------------------------------- parameters
    def parameter_parts(self) -> Dict[str, List[nn.Parameter]]:
        """Rows of :func:`vpt_seg.tuners.tuning.parameter_report`."""
        return {'context': [] if self.ctx is None else [self.ctx],
                'text tower': list(self.text.parameters()) + [self.logit_scale]}

    # ------------------------------------------------------------- weights
    def configured_pretrained(self) -> Optional[str]:
        return self.checkpoint

    def init_weights(self):
        """Load ``checkpoint``; ``ctx_init`` then starts the context from its words."""
        if self.checkpoint is not None:
            self.load_pretrained(self.checkpoint)
            if self.ctx_init:
                self._init_context()
        self._is_init = True

    def _check_file_shape(self, state: Dict[str, torch.Tensor], file: str):
        theirs = text_tower_shape(state)
        keys = dict(total_vocab_size='token_embedding.weight',
                    embed_dims='token_embedding.weight',
                    context_length='positional_embedding', output_dims='text_projection',
                    num_layers='transformer.resblocks.*',
                    mlp_ratio='transformer.resblocks.0.mlp.c_fc.weight')
        wrong = [f'{k}={self.shape[k]} here, {theirs[k]} in the file ({keys[k]})'
                 for k in keys if theirs[k] != self.shape[k]]
        proj = state['text_projection']
        if proj.dim() != 2 or proj.shape[0] != theirs['embed_dims']:
            wrong.append(f'text_projection {tuple(proj.shape)} does not map the width '
                         f'{theirs["embed_dims"]}')
        if wrong:
            raise ValueError(f'{file}: its text tower does not fit this CoOpTextEncoder: '
                             + '; '.join(wrong) + '. Set model.head.text_encoder\'s shape '
                             'arguments to the file\'s (ViT-B/16: embed_dims=512, '
                             'num_layers=12, num_heads=8, output_dims=512; ViT-L/14: 768, 12, '
                             '12, 768)')

    def load_pretrained(self, path: str) -> None:
        """Load the text tower and ``logit_scale`` of the CLIP file at ``path``.

        Raises:
            FileNotFoundError, ValueError: see
                :func:`vpt_seg.formats.clip_text.read_clip_text_state_dict`; a tower of
                another shape than the arguments (named).
        """
        state = read_clip_text_state_dict(path, self.pretrained_option)
        file = path
        self._check_file_shape(state, file)
        scale = state.pop('logit_scale')
        try:
            self.text.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f'{file}: its text tower does not fit this CoOpTextEncoder: '
                             f'{str(err).strip().splitlines()[0]}') from None
        with torch.no_grad():
            self.logit_scale.copy_(scale.reshape(()))
        self.pretrained_file = path
        self._frozen_loaded = True
        self._cache = None
        print_log(f'{type(self).__name__}: loaded the text tower of {path} '
                  f'({len(state)} tensors, logit scale {self.logit_scale.exp().item():.1f})',
                  logger='current')

    def check_checkpoint_fits(self, state_dict, prefix: str) -> None:
        """Name a class-specific context made for another class count before the
        generic shape check."""
        key = prefix + 'prompt.ctx'
        theirs = state_dict.get(key)
        if theirs is not None and self.ctx is not None and theirs.shape != self.ctx.shape:
            if theirs.dim() == 3 and self.csc:
                raise ValueError(
                    f'checkpoint has class-specific context (csc=True) for {theirs.shape[0]} '
                    f'classes, and the config names {self.num_classes}: such a context is '
                    'tied to the classes it was trained on, so the class list (vocabulary / '
                    'dataset_name) must be the trained one. Train with csc=False to classify '
                    'other class names.')
            raise ValueError(
                f'checkpoint context {prefix}prompt.ctx is {tuple(theirs.shape)}, here '
                f'{tuple(self.ctx.shape)} (n_ctx={self.n_ctx}, csc={self.csc}, '
                f'embed_dims={self.shape["embed_dims"]}): set n_ctx, ctx_init and csc as the '
                'task was trained')
        frozen_weights.check_shapes(self, state_dict, prefix)
