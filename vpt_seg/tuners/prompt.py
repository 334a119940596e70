"""Visual prompts (VPT, Jia et al., ECCV 2022), in plain torch.

A :class:`VisualPrompt` holds ``P`` learnable tokens of width ``C`` for each layer that
receives prompts. For a token sequence laid out as ``[prefix, patches]`` (the prefix is
[CLS] when there is one), it inserts the prompts after the prefix at the first prompted
layer and *replaces* them with that layer's fresh tokens at every later prompted layer:

    VPT-shallow:  [x_1, Z_1, E_1] = L_1([x_0, P, E_0]);
                  [x_i, Z_i, E_i] = L_i([x_{i-1}, Z_{i-1}, E_{i-1}])   for i > 1
    VPT-deep:     [x_i, _,   E_i] = L_i([x_{i-1}, P_{i-1}, E_{i-1}])   for every layer i

Prompts get no position embedding. :meth:`VisualPrompt.strip` removes them before the
tokens are reshaped to feature maps. The module knows nothing of MMSeg or of any ViT
implementation: it sees ``(B, N, C)`` tensors and layer indices.

:func:`run_prompted_layers` is the layer loop every prompted backbone runs, written once:
prompt insertion, the key mask for tasks whose prompts are shorter (or not yet inserted)
in a batch that mixes tasks, the final norm and prompt stripping. Training, testing and
multi-task serving call it with one group of samples or several; the blocks themselves
come from the backbone as a callable.
"""
import math
import numbers
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch
from torch import nn

__all__ = ['VisualPrompt', 'check_prompt_options', 'PromptGroup', 'run_prompted_layers',
           'insert_prompts', 'replace_prompts', 'remove_prompts', 'xavier_bound']

PROMPT_INITS = ('xavier_uniform', 'normal', 'zeros')


def insert_prompts(x: torch.Tensor, prompts: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """``(B, K + N, C), (B, P, C) -> (B, K + P + N, C)``: prompts go right after the prefix."""
    return torch.cat((x[:, :num_prefix], prompts, x[:, num_prefix:]), dim=1)


def replace_prompts(x: torch.Tensor, prompts: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """``(B, K + P + N, C), (B, P, C) -> (B, K + P + N, C)``: fresh prompts in place of old."""
    return torch.cat((x[:, :num_prefix], prompts, x[:, num_prefix + prompts.shape[1]:]), dim=1)


def remove_prompts(x: torch.Tensor, num_prompts: int, num_prefix: int) -> torch.Tensor:
    """``(B, K + P + N, C) -> (B, K + N, C)``."""
    if num_prompts == 0:
        return x
    return torch.cat((x[:, :num_prefix], x[:, num_prefix + num_prompts:]), dim=1)


def xavier_bound(patch_size: int, in_channels: int, embed_dims: int) -> float:
    """The paper's prompt init bound: Xavier-uniform with fan-in of one flattened patch."""
    return math.sqrt(6.0 / (in_channels * patch_size * patch_size + embed_dims))


def _integer(value) -> bool:
    """An int (numpy's too), not a bool and not a float that happens to be whole."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_prompt_options(num_tokens, deep, layers, dropout, init: str, num_layers: int):
    """Validate the prompt options in one place; each error names the option as the
    backbone's config spells it (``model.backbone.num_prompts``, ...) and what it accepts.

    Returns:
        ``(num_tokens, deep, layers, dropout)`` as ``int, bool, list of int or None, float``.

    Raises:
        ValueError: an option of the wrong type or out of range.
    """
    def refuse(option, accepts, value):
        return ValueError(f'{option} must be {accepts}, got {value!r} '
                          f'({type(value).__name__})')

    if not _integer(num_tokens) or num_tokens < 0:
        raise refuse('num_prompts (num_tokens)', 'an integer >= 0 (prompt tokens per '
                     'prompted layer; 0 = no prompts)', num_tokens)
    if not (isinstance(deep, numbers.Integral) and deep in (0, 1)):
        raise refuse('deep', 'True (VPT-deep) or False (VPT-shallow)', deep)
    if layers is not None:
        accepts = (f'None or a list of layer indices in 0..{num_layers - 1}, e.g. [0, 1, 2] '
                   '(overrides deep)')
        if (isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence)
                or not all(_integer(i) for i in layers)):
            raise refuse('prompt_layers', accepts, layers)
        bad = [int(i) for i in layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f'prompt layers {bad} are outside the {num_layers} layers of '
                             f'the ViT: prompt_layers must be {accepts}')
        layers = [int(i) for i in layers]
    if (not isinstance(dropout, numbers.Real) or isinstance(dropout, bool)
            or not 0.0 <= dropout < 1.0):
        raise refuse('prompt_dropout (dropout)', 'a probability in [0, 1)', dropout)
    if init not in PROMPT_INITS:
        raise ValueError(f'prompt init (prompt_init) must be one of {PROMPT_INITS}, '
                         f'got {init!r}')
    return int(num_tokens), bool(deep), layers, float(dropout)


class VisualPrompt(nn.Module):
    """Learnable prompt tokens for the layers of a ViT.

    Args:
        num_tokens: Prompt length ``P`` per prompted layer. 0 disables prompting: the
            module then holds no parameters and every call returns its input.
        embed_dims: Token width ``C``.
        num_layers: Depth of the ViT being prompted.
        deep: True for VPT-deep (fresh prompts at every layer's input), False for
            VPT-shallow (prompts inserted once, before the first layer).
        layers: Explicit indices of the layers that receive fresh prompts; overrides
            ``deep`` (the paper's prompt-depth ablation, e.g. ``range(6)``).
        dropout: Dropout probability on the prompt tokens, applied wherever they are
            inserted.
        num_prefix: Tokens before the patches (1 for [CLS], 0 without it).
        init: ``'xavier_uniform'`` (the paper: uniform with bound
            ``sqrt(6 / (in_channels * patch_size**2 + C))``), ``'normal'`` (std 0.02) or
            ``'zeros'``.
        patch_size: Patch size, for the Xavier bound.
        in_channels: Image channels, for the Xavier bound.

    Shapes:
        ``forward(x, layer)``: ``(B, K + N, C)`` or ``(B, K + P + N, C)`` in,
        ``(B, K + P + N, C)`` out at prompted layers; unchanged elsewhere.
    """

    def __init__(self,
                 num_tokens: int,
                 embed_dims: int,
                 num_layers: int,
                 deep: bool = True,
                 layers: Optional[Sequence[int]] = None,
                 dropout: float = 0.0,
                 num_prefix: int = 1,
                 init: str = 'xavier_uniform',
                 patch_size: int = 16,
                 in_channels: int = 3):
        super().__init__()
        num_tokens, deep, layers, dropout = check_prompt_options(
            num_tokens, deep, layers, dropout, init, num_layers)
        if layers is None:
            layers = range(num_layers) if deep else [0]
        layers = sorted(set(layers)) if num_tokens else []

        self.num_tokens = num_tokens
        self.embed_dims = embed_dims
        self.num_layers = num_layers
        self.num_prefix = num_prefix
        self.layers = tuple(layers)
        self._slot = {layer: slot for slot, layer in enumerate(self.layers)}
        self.init = init
        self.init_bound = xavier_bound(patch_size, in_channels, embed_dims)
        if self.layers:
            self.embeddings = nn.Parameter(torch.empty(len(self.layers), num_tokens, embed_dims))
        else:  # disabled: no parameter, so state dicts match the un-prompted ViT's
            self.register_parameter('embeddings', None)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    @property
    def deep(self) -> bool:
        return len(self.layers) > 1

    def reset_parameters(self):
        if self.embeddings is None:
            return
        if self.init == 'xavier_uniform':
            nn.init.uniform_(self.embeddings, -self.init_bound, self.init_bound)
        elif self.init == 'normal':
            nn.init.normal_(self.embeddings, std=0.02)
        else:
            nn.init.zeros_(self.embeddings)

    def carries_prompts(self, layer: int) -> bool:
        """Whether the output of ``layer`` holds prompt tokens."""
        return bool(self.layers) and layer >= self.layers[0]

    def tokens(self, layer: int, batch_size: int) -> torch.Tensor:
        """The prompts for ``layer``, after dropout: ``(B, P, C)``."""
        prompts = self.embeddings[self._slot[layer]]                       # (P, C)
        if not torch.is_grad_enabled():
            # A view of a parameter made under no_grad still says requires_grad=True
            # (with no grad_fn), which trips autograd hooks (e.g. torch's FLOP counter).
            prompts = prompts.detach()
        return self.dropout(prompts.expand(batch_size, -1, -1))

    def forward(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Insert or replace the prompts at the input of ``layer``."""
        if layer not in self._slot:
            return x
        prompts = self.tokens(layer, x.shape[0]).to(x.dtype)
        if layer == self.layers[0]:
            return insert_prompts(x, prompts, self.num_prefix)
        return replace_prompts(x, prompts, self.num_prefix)

    def strip(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Drop the prompt tokens from the output of ``layer``:
        ``(B, K + P + N, C) -> (B, K + N, C)``."""
        if not self.carries_prompts(layer):
            return x
        return remove_prompts(x, self.num_tokens, self.num_prefix)

    def extra_repr(self) -> str:
        return (f'num_tokens={self.num_tokens}, embed_dims={self.embed_dims}, '
                f'layers={list(self.layers)}, init={self.init}')


class PromptGroup(NamedTuple):
    """Samples of a batch that share one task's prompts and outputs.

    Attributes:
        prompt: The task's :class:`VisualPrompt`.
        index: ``(B_t,)`` indices of its samples in the batch; None: the whole batch.
        out_indices: Layers whose outputs the task reads.
        final_norm: Whether the task reads the last layer's output through the final norm.
    """
    prompt: VisualPrompt
    index: Optional[torch.Tensor] = None
    out_indices: Sequence[int] = ()
    final_norm: bool = False


def run_prompted_layers(x: torch.Tensor,
                        groups: Sequence[PromptGroup],
                        block: Callable[[int, torch.Tensor, Optional[torch.Tensor]], torch.Tensor],
                        num_layers: int,
                        num_prefix: int,
                        norm: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
                        ) -> List[Dict[int, torch.Tensor]]:
    """Run ``num_layers`` blocks over prompted tokens: the one prompted layer loop.

    Every sample gets ``P = max P_t`` prompt slots right after the ``num_prefix`` prefix
    tokens ([CLS], registers), inserted at the first layer where any group gets prompts
    and refilled at each layer with fresh prompts of the groups prompted there. A sample
    whose task has fewer prompts (or none yet: VPT-shallow carries its prompts on, a
    ``prompt_layers`` list may start later) has its unused slots masked out as attention
    *keys*, so no real token sees them. With one group (a single model) no slot is ever
    masked and the loop computes exactly VPT's recurrences.

    Args:
        x: ``(B, K + N, C)`` tokens entering the first block (prefix first).
        groups: One :class:`PromptGroup` per task in the batch.
        block: ``block(i, x, mask)`` runs layer ``i`` on ``(B, K + P + N, C)``;
            ``mask`` is a boolean ``(B, 1, 1, K + P + N)`` key mask (True: attend) or None.
        num_layers: Blocks to run.
        num_prefix: ``K``.
        norm: The final norm, for groups with ``final_norm``.

    Returns:
        Per group, ``{layer: (B_t, K + N, C)}`` for its ``out_indices``, prompts removed.
    """
    B, _, C = x.shape
    K = num_prefix
    single = len(groups) == 1 and groups[0].index is None
    lengths = [g.prompt.num_tokens if g.prompt.layers else 0 for g in groups]
    P = max(lengths, default=0)
    inserted = False
    outs: List[Dict[int, torch.Tensor]] = [{} for _ in groups]
    last = num_layers - 1
    for i in range(num_layers):
        fresh = [g for g in groups if i in g.prompt.layers]
        if fresh:
            if single:  # one task: its own prompts are the slots
                slots = groups[0].prompt.tokens(i, B).to(x.dtype)             # (B, P, C)
            else:
                slots = x[:, K:K + P].clone() if inserted else x.new_zeros(B, P, C)
                for g in fresh:
                    slots[g.index, :g.prompt.num_tokens] = g.prompt.tokens(
                        i, len(g.index)).to(x.dtype)
            x = replace_prompts(x, slots, K) if inserted else insert_prompts(x, slots, K)
            inserted = True                                             # (B, K + P + N, C)
        mask = None
        if inserted and not single:
            active = x.new_zeros(B, dtype=torch.long)
            for g, n in zip(groups, lengths):
                active[g.index] = n if g.prompt.carries_prompts(i) else 0
            if bool((active < P).any()):
                keep = torch.ones(B, x.shape[1], dtype=torch.bool, device=x.device)
                keep[:, K:K + P] = torch.arange(P, device=x.device)[None] < active[:, None]
                mask = keep[:, None, None, :]                           # (B, 1, 1, N) keys
        x = block(i, x, mask)
        normed = norm(x) if i == last and norm is not None and any(
            g.final_norm for g in groups) else None
        for g, out in zip(groups, outs):
            if i in g.out_indices:
                src = normed if (normed is not None and g.final_norm) else x
                src = src if g.index is None else src[g.index]
                out[i] = remove_prompts(src, P if inserted else 0, K)   # (B_t, K + N, C)
    return outs
