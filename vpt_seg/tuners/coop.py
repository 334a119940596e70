"""CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022): learned
context words around the class names of a frozen CLIP text tower (torch and open_clip).

The official code (KaiyangZhou/CoOp ``trainers/coop.py``) builds the prompt of class ``i``
as token embeddings and runs CLIP's text transformer over them::

    t_i = [SOS] [V]_1 ... [V]_M [CLASS_i] . [EOS]              class_position='end'
          [SOS] [V]_1 .. [V]_M/2 [CLASS_i] [V]_M/2+1 .. [V]_M . [EOS]   'middle'
          [SOS] [CLASS_i] [V]_1 ... [V]_M . [EOS]               'front'
    g(t_i) = ln_final(transformer(t_i + positional_embedding))[EOS] @ text_projection

(causal mask; the ``[V]`` are the learned context, one ``(M, D)`` tensor for all classes
or ``(K, M, D)`` with class-specific context). Here:

* :func:`class_prompt_tokens` tokenizes the prompts once (open_clip's ``SimpleTokenizer``,
  OpenAI's BPE), refuses what does not fit instead of truncating it, cuts the sequence
  after the longest prompt's end token (the mask is causal: the end token's feature never
  sees what follows it) and precomputes where each class's tokens go;
* :class:`CoOpContext` holds the context and assembles the prompts;
* :func:`encode_prompts` is CLIP's text forward over prompt embeddings.
"""
import functools
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['CLASS_POSITIONS', 'clip_tokenizer', 'PromptTokens', 'class_prompt_tokens',
           'template_tokens', 'check_class_names', 'PromptTooLongError', 'CoOpContext',
           'encode_prompts', 'normalized_features']

CLASS_POSITIONS = ('end', 'middle', 'front')
#: Placeholder word where the context goes (the official code's "X"); its embedding is
#: replaced by the context, so only its token count (one) matters.
_PLACEHOLDER = 'X'


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """open_clip's ``SimpleTokenizer``: OpenAI CLIP's BPE (vocabulary in open_clip's wheel,
    no download), the text lower-cased and whitespace-cleaned as OpenAI's."""
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer()


def check_class_names(names: Sequence[str], where: str = 'class names',
                      lines: bool = False) -> List[str]:
    """Class names as prompts use them: underscores -> spaces, outer spaces stripped
    (MMSeg's ADE20k names have ``'bed '``).

    Args:
        names: The class names.
        where: What they are, for the messages (an option, a file).
        lines: The names are the lines of a file: messages name 1-based line numbers
            instead of 0-based positions.

    Raises:
        ValueError: not a list of strings, an empty name, fewer than one name, or a
            name twice (after cleaning), naming them (and where they are).
    """
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f'{where}: expected a non-empty list of class names, got {names!r:.200}')
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(f'{where}: class names must be strings, got {bad[:5]!r}')
    clean = [n.replace('_', ' ').strip() for n in names]
    at = 'line(s)' if lines else 'position(s)'
    first = 1 if lines else 0
    empty = [i + first for i, n in enumerate(clean) if not n]
    if empty:
        raise ValueError(f'{where}: class name(s) at {at} {empty} are empty; every '
                         'class needs a name to put into its prompt' +
                         ('; remove the empty lines' if lines else ''))
    seen, twice = {}, {}
    for i, name in enumerate(clean):
        if name in seen:
            twice.setdefault(name, [seen[name] + first]).append(i + first)
        seen.setdefault(name, i)
    if twice:
        found = '; '.join(f'{n!r} at {at} {", ".join(map(str, i))}' for n, i in twice.items())
        raise ValueError(f'{where}: duplicate class name(s) {list(twice)} ({found}; after '
                         'underscores -> spaces); two classes with one prompt cannot be '
                         'told apart')
    return clean


class PromptTooLongError(ValueError):
    """A class's prompt does not fit the text tower's context (``name``: the class)."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


class PromptTokens(NamedTuple):
    """The tokenized prompts of K classes.

    Attributes:
        ids: ``(K, L)`` token ids, ``[SOS] ctx name . [EOS] 0...``, L = the longest
            prompt (up to and with its end token).
        eot: ``(K,)`` position of each prompt's end token.
        order: ``(K, L)`` where each position of the assembled prompt takes its token
            from ``[SOS] ctx name . [EOS]`` (the 'end' order): identity for 'end'.
        name_lens: Token count of each class name.
    """
    ids: torch.Tensor
    eot: torch.Tensor
    order: torch.Tensor
    name_lens: Tuple[int, ...]


def _too_long(name: str, count: int, name_count: int, n_ctx: int, context_length: int) -> str:
    return (f'class {name!r}: its prompt is {count} tokens ({name_count} for the name, '
            f'{n_ctx} context, start, "." and end), more than the text tower\'s context '
            f'length {context_length} (the tokenizer would silently cut it); shorten the '
            'name' + (' or use a shorter context (n_ctx / ctx_init)' if n_ctx else ''))


def class_prompt_tokens(names: Sequence[str], n_ctx: int, context_length: int,
                        ctx_words: Optional[str] = None, position: str = 'end'
                        ) -> PromptTokens:
    """Tokenize ``[SOS] ctx name . [EOS]`` for every class (the official prompts).

    Args:
        names: K cleaned class names (:func:`check_class_names`).
        n_ctx: Context length M (0: ``[SOS] name . [EOS]``).
        context_length: The text tower's positions (77 for CLIP).
        ctx_words: The words the context starts as (their BPE tokens fill the M
            slots); None: placeholders.
        position: Where the class name goes: ``'end'``, ``'middle'``, ``'front'``.

    Raises:
        PromptTooLongError: a prompt longer than ``context_length``, naming the class and
            its token count.
    """
    tok = clip_tokenizer()
    ctx_ids = tok.encode(ctx_words) if ctx_words else tok.encode(_PLACEHOLDER) * n_ctx
    if len(ctx_ids) != n_ctx:
        raise ValueError(f'ctx_init {ctx_words!r} is {len(ctx_ids)} tokens, not n_ctx={n_ctx}')
    dot = tok.encode('.')
    rows, name_lens = [], []
    for name in names:
        name_ids = tok.encode(name)
        row = [tok.sot_token_id] + ctx_ids + name_ids + dot + [tok.eot_token_id]
        if len(row) > context_length:
            raise PromptTooLongError(
                _too_long(name, len(row), len(name_ids), n_ctx, context_length), name)
        rows.append(row)
        name_lens.append(len(name_ids))
    length = max(len(r) for r in rows)  # causal mask: nothing after an end token matters
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    order = torch.arange(length).repeat(len(rows), 1)
    half = n_ctx // 2
    for i, (row, n) in enumerate(zip(rows, name_lens)):
        ids[i, :len(row)] = torch.tensor(row)
        ctx = list(range(1, 1 + n_ctx))
        name = list(range(1 + n_ctx, 1 + n_ctx + n))
        head = ([0] + ctx + name if position == 'end' else
                [0] + ctx[:half] + name + ctx[half:] if position == 'middle' else
                [0] + name + ctx)
        order[i, :len(head)] = torch.tensor(head)
    return PromptTokens(ids, ids.argmax(-1), order, tuple(name_lens))


def template_tokens(names: Sequence[str], templates: Sequence[str], context_length: int
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token ids of every ``template.format(name)``, as open_clip tokenizes them:
    ``(T, K, L)`` ids and ``(T, K)`` end positions, L the longest prompt.

    Raises:
        PromptTooLongError: a prompt longer than ``context_length`` (naming class and
            template).
    """
    tok = clip_tokenizer()
    rows = []
    for template in templates:
        for name in names:
            row = [tok.sot_token_id] + tok.encode(template.format(name)) + [tok.eot_token_id]
            if len(row) > context_length:
                raise PromptTooLongError(
                    f'class {name!r}: its prompt {template.format(name)!r} is {len(row)} '
                    f'tokens, more than the text tower\'s context length {context_length} '
                    '(the tokenizer would silently cut it); shorten the name or the '
                    'template', name)
            rows.append(row)
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    ids = ids.reshape(len(templates), len(names), length)
    return ids, ids.argmax(-1)


class CoOpContext(nn.Module):
    """The learned context ``ctx`` and the prompts it makes (the official PromptLearner's
    learned part; the frozen token embeddings stay in the text tower).

    Args:
        n_ctx: Context length M (>= 1).
        embed_dims: Token width D of the text tower.
        num_classes: With class-specific context (CSC), K: ``ctx`` is ``(K, M, D)``;
            None: unified, ``(M, D)``.
        std: Random initialisation N(0, std) (the paper's 0.02).

    Shapes:
        ``forward(embeds (K, L, D), tokens.order (K, L)) -> (K, L, D)`` prompts.
    """

    def __init__(self, n_ctx: int, embed_dims: int, num_classes: Optional[int] = None,
                 std: float = 0.02):
        super().__init__()
        shape = (n_ctx, embed_dims) if num_classes is None else (num_classes, n_ctx, embed_dims)
        self.ctx = nn.Parameter(torch.empty(shape))
        nn.init.normal_(self.ctx, std=std)

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[-2]

    @property
    def csc(self) -> bool:
        return self.ctx.dim() == 3

    @torch.no_grad()
    def init_from(self, word_embeds: torch.Tensor):
        """Start the context as the token embeddings ``(M, D)`` of the ``ctx_init`` words
        (every class's, with CSC)."""
        self.ctx.copy_(word_embeds.expand_as(self.ctx))

    def forward(self, embeds: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        K = embeds.shape[0]
        ctx = self.ctx.to(embeds.dtype)
        ctx = ctx.expand(K, -1, -1) if ctx.dim() == 2 else ctx            # (K, M, D)
        # [SOS] ctx name . [EOS] ... in the 'end' order, then each class's own order.
        prompts = torch.cat([embeds[:, :1], ctx, embeds[:, 1 + self.n_ctx:]], dim=1)
        return prompts.gather(1, order[..., None].expand_as(prompts))    # (K, L, D)


def encode_prompts(text: nn.Module, prompts: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """CLIP's text forward over prompt embeddings: ``(K, L, D)`` -> ``(K, E)`` features at
    the end tokens ``eot`` ``(K,)``, before normalisation.

    ``text`` is open_clip's ``TextTransformer`` (``positional_embedding``, its causal
    ``transformer``, ``ln_final``, ``text_projection``); ``L`` may be shorter than its
    context length (the mask is causal, so the end token's feature is unchanged).
    """
    L = prompts.shape[1]
    x = prompts + text.positional_embedding[:L].to(prompts.dtype)
    mask = torch.full((L, L), float('-inf'), device=x.device, dtype=x.dtype).triu_(1)
    x = text.ln_final(text.transformer(x, attn_mask=mask))             # (K, L, D)
    x = x[torch.arange(x.shape[0], device=x.device), eot]              # (K, D)
    proj = text.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj         # (K, E)


def normalized_features(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise over the last dimension (CLIP's cosine similarity)."""
    return F.normalize(features, dim=-1)
